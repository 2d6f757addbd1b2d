//! The `.yolo` boot-image format, version 1: the one place that reads and
//! writes it. `docs/format.md` is its byte-by-byte specification.
//!
//! Every length and count read from a file is checked against the bytes that
//! are actually left before anything is allocated, so a hostile header cannot
//! make us allocate more than the file's own size.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use crate::id::FileIdentity;
use crate::name::{validate_name, MAX_NAME_LEN};
use crate::{BootImageFault as Fault, FormatError, Result, WriterMisuse};

pub const MAGIC: &[u8; 8] = b"YOLOBOOT";
pub const END_MAGIC: &[u8; 8] = b"YOLOEND\0";
pub const VERSION: u16 = 1;
pub const MIN_BLOCK_SIZE: u32 = 512;
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;
pub const MAX_FILES: u32 = 4096;
/// Identity kind 1: BLAKE3 of the file's whole content.
const IDENTITY_BLAKE3_FULL: u8 = 1;
const HEADER_LEN: u64 = 24;
const TRAILER_LEN: u64 = 40;

/// What a boot image says about one file, without the block data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileHeader {
    /// Relative path of the file inside the images directory.
    pub name: String,
    pub file_size: u64,
    pub identity: FileIdentity,
    /// Block ids in first-access order; distinct, each inside the file.
    pub blocks: Vec<u64>,
}

impl FileHeader {
    pub fn block_count_of_file(&self, block_size: u32) -> u64 {
        block_count(self.file_size, block_size)
    }

    /// Bytes of block `id`: `block_size`, except a short last block.
    pub fn block_len(&self, block_size: u32, id: u64) -> usize {
        block_len(self.file_size, block_size, id)
    }

    /// Total bytes of block data this file contributes.
    pub fn data_len(&self, block_size: u32) -> u64 {
        self.blocks
            .iter()
            .map(|&id| self.block_len(block_size, id) as u64)
            .sum()
    }

    /// Checks the invariants the reader enforces, for headers built in memory.
    pub fn validate(&self, block_size: u32) -> Result<()> {
        validate_name(&self.name)?;
        let n = self.block_count_of_file(block_size);
        let mut seen = HashSet::with_capacity(self.blocks.len());
        for &id in &self.blocks {
            if id >= n {
                return Err(Fault::BlockPastEnd {
                    name: self.name.clone(),
                    id,
                    file_size: self.file_size,
                }
                .into());
            }
            if !seen.insert(id) {
                return Err(Fault::BlockTwice {
                    name: self.name.clone(),
                    id,
                }
                .into());
            }
        }
        Ok(())
    }
}

pub fn block_count(file_size: u64, block_size: u32) -> u64 {
    file_size.div_ceil(u64::from(block_size))
}

pub fn block_len(file_size: u64, block_size: u32, id: u64) -> usize {
    let start = id.saturating_mul(u64::from(block_size));
    file_size.saturating_sub(start).min(u64::from(block_size)) as usize
}

pub fn validate_block_size(block_size: u32) -> Result<()> {
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(Fault::BlockSize(block_size).into());
    }
    Ok(())
}

/// One file of a boot image with its block data, concatenated in the same
/// (first-access) order as `header.blocks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileImage {
    pub header: FileHeader,
    pub data: Vec<u8>,
}

/// A whole boot image in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootImage {
    pub block_size: u32,
    pub files: Vec<FileImage>,
}

impl BootImage {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
        let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
        Self::read(BufReader::with_capacity(1 << 20, file), len).map_err(|e| match e {
            FormatError::Io { source, .. } => FormatError::io(path, source),
            FormatError::BootImage(fault) => FormatError::BootImageFile {
                path: path.to_path_buf(),
                fault,
            },
            other => other,
        })
    }

    /// Reads a boot image of exactly `len` bytes and checks its checksum.
    pub fn read(reader: impl Read, len: u64) -> Result<Self> {
        let mut r = CheckedReader {
            inner: reader,
            hasher: blake3::Hasher::new(),
            remaining: len,
        };
        if len < HEADER_LEN + TRAILER_LEN {
            return Err(Fault::TooShort(len).into());
        }
        let magic: [u8; 8] = r.array()?;
        if &magic != MAGIC {
            return Err(Fault::BadMagic.into());
        }
        let version = r.u16()?;
        if version != VERSION {
            return Err(Fault::Version(version).into());
        }
        if r.u16()? != 0 {
            return Err(Fault::Flags.into());
        }
        let block_size = r.u32()?;
        validate_block_size(block_size)?;
        let file_count = r.u32()?;
        if file_count == 0 || file_count > MAX_FILES {
            return Err(Fault::FileCount(file_count).into());
        }
        if r.u32()? != 0 {
            return Err(Fault::Reserved.into());
        }
        let mut files = Vec::new();
        let mut names = HashSet::new();
        for _ in 0..file_count {
            let header = read_file_header(&mut r, block_size)?;
            if !names.insert(header.name.clone()) {
                return Err(Fault::FileTwice(header.name).into());
            }
            let data_len = header.data_len(block_size);
            let data = r.bytes(data_len, "block data")?;
            files.push(FileImage { header, data });
        }
        let expected = *r.hasher.finalize().as_bytes();
        let end: [u8; 8] = r.array()?;
        if &end != END_MAGIC {
            return Err(Fault::BadTrailer.into());
        }
        let mut checksum = [0u8; 32];
        r.read_exact(&mut checksum, "checksum")?;
        if checksum != expected {
            return Err(Fault::Checksum.into());
        }
        if r.remaining != 0 {
            return Err(Fault::TrailingBytes(r.remaining).into());
        }
        Ok(BootImage { block_size, files })
    }

    pub fn write_to(&self, w: impl Write) -> Result<()> {
        let mut writer = BootImageWriter::new(w, self.block_size, self.files.len() as u32)?;
        for file in &self.files {
            writer.begin_file(&file.header)?;
            writer.write_data(&file.data)?;
        }
        writer.finish()?;
        Ok(())
    }

    pub fn logical_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.data.len() as u64).sum()
    }
}

fn read_file_header<R: Read>(r: &mut CheckedReader<R>, block_size: u32) -> Result<FileHeader> {
    let name_len = usize::from(r.u16()?);
    if name_len == 0 || name_len > MAX_NAME_LEN {
        return Err(Fault::NameLength(name_len).into());
    }
    let raw = r.bytes(name_len as u64, "file name")?;
    let name = String::from_utf8(raw).map_err(|_| Fault::NameNotUtf8)?;
    validate_name(&name).map_err(|e| match e {
        FormatError::Name { name, why } => FormatError::BootImage(Fault::Name { name, why }),
        other => other,
    })?;
    let file_size = r.u64()?;
    let kind = r.u8()?;
    if kind != IDENTITY_BLAKE3_FULL {
        return Err(Fault::IdentityKind { name, kind }.into());
    }
    let identity = FileIdentity(r.array()?);
    let count = r.u64()?;
    let max = block_count(file_size, block_size);
    if count > max {
        return Err(Fault::TooManyBlocks {
            name,
            count,
            file_size,
            max,
        }
        .into());
    }
    if count.saturating_mul(8) > r.remaining {
        return Err(Fault::BlockIdsTruncated { name, count }.into());
    }
    let mut blocks = Vec::with_capacity(count as usize);
    for _ in 0..count {
        blocks.push(r.u64()?);
    }
    let header = FileHeader {
        name,
        file_size,
        identity,
        blocks,
    };
    header.validate(block_size)?;
    Ok(header)
}

/// Asks for transparent huge pages under `buf`'s pages: filling
/// hundreds of MiB then takes one page fault per 2 MiB instead of per 4 KiB
/// (on kernels in THP `madvise` mode, Debian's default). Only advice: if
/// the kernel declines, nothing changes.
fn advise_huge_pages(buf: &mut Vec<u8>) {
    const HUGE: usize = 2 << 20;
    let start = buf.as_mut_ptr() as usize;
    let (from, to) = (
        start.next_multiple_of(HUGE),
        (start + buf.capacity()) / HUGE * HUGE,
    );
    if from < to {
        // SAFETY: the range lies inside `buf`'s allocation, and
        // MADV_HUGEPAGE changes how it is backed, never its contents.
        unsafe {
            libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE);
        }
    }
}

/// A short read is the input's fault (truncated); any other is I/O's.
fn read_error(e: io::Error, what: &'static str) -> FormatError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Fault::Truncated(what).into()
    } else {
        FormatError::io("<boot image>", e)
    }
}

/// Reads while hashing and counting down the bytes that are left, so every
/// declared length can be checked before it is allocated.
struct CheckedReader<R> {
    inner: R,
    hasher: blake3::Hasher,
    remaining: u64,
}

impl<R: Read> CheckedReader<R> {
    fn read_exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<()> {
        if buf.len() as u64 > self.remaining {
            return Err(Fault::Truncated(what).into());
        }
        self.inner
            .read_exact(buf)
            .map_err(|e| read_error(e, what))?;
        self.remaining -= buf.len() as u64;
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut buf = [0u8; N];
        self.read_exact(&mut buf, "header")?;
        self.hasher.update(&buf);
        Ok(buf)
    }

    fn bytes(&mut self, len: u64, what: &'static str) -> Result<Vec<u8>> {
        if len > self.remaining {
            return Err(Fault::Truncated(what).into());
        }
        // `vec!` of zeroes gets fresh pages from the kernel, already zero:
        // no pass over hundreds of MiB before they are read into.
        let mut buf = vec![0u8; len as usize];
        advise_huge_pages(&mut buf);
        // Block data is most of a boot image. Each piece is hashed (on
        // every core) while the next one is read.
        const PIECE: usize = 8 << 20;
        let (inner, hasher) = (&mut self.inner, &mut self.hasher);
        std::thread::scope(|scope| {
            let (to_hasher, pieces) = std::sync::mpsc::sync_channel::<&[u8]>(2);
            let hashing = scope.spawn(move || {
                for piece in pieces {
                    hasher.update_rayon(piece);
                }
            });
            let mut read = Ok(());
            for piece in buf.chunks_mut(PIECE) {
                read = inner.read_exact(piece);
                if read.is_err() || to_hasher.send(piece).is_err() {
                    break;
                }
            }
            drop(to_hasher);
            match hashing.join() {
                Ok(()) => read,
                Err(_) => Err(io::Error::other("the checksum thread panicked")),
            }
        })
        .map_err(|e| read_error(e, what))?;
        self.remaining -= len;
        Ok(buf)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

/// Streams a boot image out: headers first, then each file's block data,
/// then the checksum. Checks that exactly the declared data is written.
pub struct BootImageWriter<W: Write> {
    out: HashingWriter<W>,
    block_size: u32,
    files_left: u32,
    data_left: u64,
}

impl<W: Write> BootImageWriter<W> {
    pub fn new(w: W, block_size: u32, file_count: u32) -> Result<Self> {
        validate_block_size(block_size)?;
        if file_count == 0 || file_count > MAX_FILES {
            return Err(FormatError::Writer(WriterMisuse::FileCount(file_count)));
        }
        let mut out = HashingWriter {
            inner: w,
            hasher: blake3::Hasher::new(),
        };
        out.put(MAGIC)?;
        out.put(&VERSION.to_le_bytes())?;
        out.put(&0u16.to_le_bytes())?;
        out.put(&block_size.to_le_bytes())?;
        out.put(&file_count.to_le_bytes())?;
        out.put(&0u32.to_le_bytes())?;
        Ok(BootImageWriter {
            out,
            block_size,
            files_left: file_count,
            data_left: 0,
        })
    }

    pub fn begin_file(&mut self, header: &FileHeader) -> Result<()> {
        if self.data_left != 0 || self.files_left == 0 {
            return Err(FormatError::Writer(WriterMisuse::FileOrder));
        }
        header.validate(self.block_size)?;
        self.files_left -= 1;
        let o = &mut self.out;
        o.put(&(header.name.len() as u16).to_le_bytes())?;
        o.put(header.name.as_bytes())?;
        o.put(&header.file_size.to_le_bytes())?;
        o.put(&[IDENTITY_BLAKE3_FULL])?;
        o.put(&header.identity.0)?;
        o.put(&(header.blocks.len() as u64).to_le_bytes())?;
        for id in &header.blocks {
            o.put(&id.to_le_bytes())?;
        }
        self.data_left = header.data_len(self.block_size);
        Ok(())
    }

    /// Appends block data of the current file (any split of it).
    pub fn write_data(&mut self, data: &[u8]) -> Result<()> {
        if data.len() as u64 > self.data_left {
            return Err(FormatError::Writer(WriterMisuse::TooMuchData));
        }
        self.data_left -= data.len() as u64;
        self.out.put(data)
    }

    pub fn finish(mut self) -> Result<W> {
        if self.data_left != 0 || self.files_left != 0 {
            return Err(FormatError::Writer(WriterMisuse::Unfinished));
        }
        let checksum = *self.out.hasher.finalize().as_bytes();
        self.out.put(END_MAGIC)?;
        self.out.put(&checksum)?;
        self.out
            .inner
            .flush()
            .map_err(|e| FormatError::io("<output>", e))?;
        Ok(self.out.inner)
    }
}

struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> HashingWriter<W> {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.inner
            .write_all(bytes)
            .map_err(|e| FormatError::io("<output>", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample(block_size: u32, file_size: u64, blocks: Vec<u64>) -> BootImage {
        let header = FileHeader {
            name: "base.qcow2".into(),
            file_size,
            identity: FileIdentity([7; 32]),
            blocks,
        };
        let data = (0..header.data_len(block_size))
            .map(|i| (i % 251) as u8)
            .collect();
        BootImage {
            block_size,
            files: vec![FileImage { header, data }],
        }
    }

    fn encode(image: &BootImage) -> Vec<u8> {
        let mut out = Vec::new();
        image.write_to(&mut out).unwrap();
        out
    }

    fn decode(bytes: &[u8]) -> Result<BootImage> {
        BootImage::read(bytes, bytes.len() as u64)
    }

    #[test]
    fn short_last_block_is_stored_short() {
        let image = sample(4096, 10_000, vec![2, 0]);
        assert_eq!(image.files[0].data.len(), 10_000 - 8192 + 4096);
        assert_eq!(decode(&encode(&image)).unwrap(), image);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode(&sample(512, 4000, vec![3, 1, 7]));
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len]).is_err(),
                "truncated at {len} accepted"
            );
        }
    }

    #[test]
    fn any_flipped_byte_is_an_error() {
        let bytes = encode(&sample(512, 4000, vec![3, 1, 7]));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn huge_counts_do_not_allocate() {
        let mut bytes = encode(&sample(512, u64::MAX / 2, vec![0]));
        // Block count field sits after header(24)+name len(2)+name(10)+size(8)+kind(1)+identity(32).
        let at = 24 + 2 + 10 + 8 + 1 + 32;
        bytes[at..at + 8].copy_from_slice(&(u64::MAX / 1024).to_le_bytes());
        let err = decode(&bytes).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    /// Recomputes the trailer checksum, so a hand-made defect is caught by
    /// the check meant for it, not by the checksum.
    fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
        let body = bytes.len() - TRAILER_LEN as usize;
        let sum = *blake3::hash(&bytes[..body]).as_bytes();
        let end = bytes.len();
        bytes[end - 32..].copy_from_slice(&sum);
        bytes
    }

    #[test]
    fn hostile_fields_with_a_valid_checksum_are_refused_by_name() {
        // 4000-byte file of 512-byte blocks; blocks 3, 1, 7 (7 is short).
        let good = encode(&sample(512, 4000, vec![3, 1, 7]));
        let name_at = 24 + 2;
        let ids_at = name_at + 10 + 8 + 1 + 32 + 8;
        let patch = |at: usize, with: &[u8]| {
            let mut b = good.clone();
            b[at..at + with.len()].copy_from_slice(with);
            reseal(b)
        };
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "dot-dot name",
                patch(name_at, b"../x.qcow2"),
                "invalid name",
            ),
            (
                "absolute name",
                patch(name_at, b"/ase.qcow2"),
                "invalid name",
            ),
            (
                "NUL in name",
                patch(name_at, b"base\0qcow2"),
                "invalid name",
            ),
            (
                "invalid UTF-8",
                patch(name_at, &[0xff, 0xfe, b'a']),
                "not UTF-8",
            ),
            (
                "duplicate block",
                patch(ids_at + 8, &3u64.to_le_bytes()),
                "appears twice",
            ),
            (
                "block past the end",
                patch(ids_at, &100u64.to_le_bytes()),
                "past the end",
            ),
            ("future version", patch(8, &2u16.to_le_bytes()), "version 2"),
            ("zero files", patch(16, &0u32.to_le_bytes()), "file count"),
            (
                "odd block size",
                patch(12, &1000u32.to_le_bytes()),
                "block size",
            ),
            (
                "unknown identity kind",
                patch(name_at + 10 + 8, &[9]),
                "identity kind",
            ),
        ];
        for (what, bytes, expected) in cases {
            let err = decode(&bytes).unwrap_err().to_string();
            assert!(err.contains(expected), "{what}: {err}");
        }
    }

    proptest! {
        #[test]
        fn round_trip(
            shift in 9u32..14,
            file_size in 1u64..200_000,
            picks in proptest::collection::vec(any::<u64>(), 0..40),
        ) {
            let bs = 1u32 << shift;
            let n = block_count(file_size, bs);
            let mut seen = HashSet::new();
            let blocks: Vec<u64> = picks.into_iter().map(|p| p % n).filter(|b| seen.insert(*b)).collect();
            let image = sample(bs, file_size, blocks);
            prop_assert_eq!(decode(&encode(&image)).unwrap(), image);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }
    }
}
