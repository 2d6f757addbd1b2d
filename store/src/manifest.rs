//! A manifest: one VMI's boot image as stored, i.e. its block ids in
//! first-access order and the chunks its block stream was cut into. The
//! binary layout is specified in docs/design.md.

use std::ops::Range;

use crate::format::{block_count, block_len, validate_block_size, FileHeader};
use crate::id::{ChunkId, FileIdentity, ManifestHash};
use crate::{Error, Result};

const VERSION: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub len: u32,
}

/// A manifest from outside names a chunk longer than the store's
/// chunking ever cuts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("chunk {id} is {len} bytes, more than the {max} this store's chunking allows")]
pub struct ChunkTooLong {
    pub id: ChunkId,
    pub len: u32,
    pub max: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub block_size: u32,
    pub file_size: u64,
    pub identity: FileIdentity,
    /// Block ids in first-access order.
    pub blocks: Vec<u64>,
    /// Chunks of the block stream (block data in `blocks` order).
    pub chunks: Vec<ChunkRef>,
}

impl Manifest {
    pub fn file_header(&self, name: &str) -> FileHeader {
        FileHeader {
            name: name.to_string(),
            file_size: self.file_size,
            identity: self.identity,
            blocks: self.blocks.clone(),
        }
    }

    /// Bytes of block data (the boot image's logical size for this VMI).
    pub fn stream_len(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.len)).sum()
    }

    pub fn block_len(&self, id: u64) -> usize {
        block_len(self.file_size, self.block_size, id)
    }

    /// The chunks this manifest references, each once, in first-use order:
    /// what a refcount counts, and the order a boot image loads in.
    pub fn distinct_chunks(&self) -> Vec<ChunkRef> {
        // foldhash: chunk ids are hashes already, SipHash was most of the
        // cost of `ls` over a thousand manifests.
        let mut seen = std::collections::HashSet::with_capacity_and_hasher(
            self.chunks.len(),
            foldhash::fast::RandomState::default(),
        );
        self.chunks
            .iter()
            .filter(|c| seen.insert(c.id))
            .copied()
            .collect()
    }

    /// Refuses a chunk longer than `max`, the store's chunking maximum:
    /// every length a manifest from outside gives is bounded before it
    /// sizes a buffer.
    pub fn check_chunk_lens(&self, max: u32) -> std::result::Result<(), ChunkTooLong> {
        match self.chunks.iter().find(|c| c.len > max) {
            Some(c) => Err(ChunkTooLong {
                id: c.id,
                len: c.len,
                max,
            }),
            None => Ok(()),
        }
    }

    /// What names this version of the boot image.
    pub fn hash(&self) -> ManifestHash {
        ManifestHash(*blake3::hash(&self.encode()).as_bytes())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.blocks.len() * 8 + self.chunks.len() * 36);
        out.push(VERSION);
        out.extend_from_slice(&self.block_size.to_le_bytes());
        out.extend_from_slice(&self.file_size.to_le_bytes());
        out.extend_from_slice(&self.identity.0);
        out.extend_from_slice(&(self.blocks.len() as u64).to_le_bytes());
        for id in &self.blocks {
            out.extend_from_slice(&id.to_le_bytes());
        }
        out.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        for chunk in &self.chunks {
            out.extend_from_slice(chunk.id.as_bytes());
            out.extend_from_slice(&chunk.len.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Cursor { bytes, at: 0 };
        let version = r.take::<1>()?[0];
        if version != VERSION {
            return Err(Error::CorruptStore(format!("manifest version {version}")));
        }
        let block_size = u32::from_le_bytes(r.take()?);
        validate_block_size(block_size).map_err(|e| Error::CorruptStore(e.to_string()))?;
        let file_size = u64::from_le_bytes(r.take()?);
        let identity = FileIdentity(r.take()?);
        let block_total = r.count(8)?;
        let mut blocks = Vec::with_capacity(block_total);
        for _ in 0..block_total {
            blocks.push(u64::from_le_bytes(r.take()?));
        }
        let chunk_total = r.count(36)?;
        let mut chunks = Vec::with_capacity(chunk_total);
        for _ in 0..chunk_total {
            let id = ChunkId(r.take()?);
            let len = u32::from_le_bytes(r.take()?);
            chunks.push(ChunkRef { id, len });
        }
        if r.at != bytes.len() {
            return Err(Error::CorruptStore("trailing bytes in manifest".into()));
        }
        let manifest = Manifest {
            block_size,
            file_size,
            identity,
            blocks,
            chunks,
        };
        manifest.check()?;
        Ok(manifest)
    }

    /// Every block inside the file, and the block data as long as the
    /// chunks.
    fn check(&self) -> Result<()> {
        let n = block_count(self.file_size, self.block_size);
        let data: u64 = self.blocks.iter().map(|&b| self.block_len(b) as u64).sum();
        if self.blocks.iter().any(|&b| b >= n) || data != self.stream_len() {
            return Err(Error::CorruptStore(
                "manifest blocks and chunks disagree".into(),
            ));
        }
        Ok(())
    }
}

/// The manifest as the store keeps it (the `manifests` column family):
/// chunks named by their store-local number (`docs/design.md`, *RocksDB
/// layout*), block ids and numbers as runs. It is what [`Manifest`] is,
/// less the chunk ids and lengths, which [`StoredManifest::resolve`] takes
/// from the store's `numbers` records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoredManifest {
    pub block_size: u32,
    pub file_size: u64,
    pub identity: FileIdentity,
    pub blocks: Vec<u64>,
    pub numbers: Vec<u32>,
}

const STORED_VERSION: u8 = 2;
/// No manifest holds more items than this (2^28 blocks of 4 KiB is a
/// 1 TiB boot image): a damaged count or run cannot size a huge buffer.
const MAX_ITEMS: u64 = 1 << 28;

impl StoredManifest {
    /// `manifest` with each chunk named by `number_of`; `Err` names a chunk
    /// that has no number.
    pub fn of(
        manifest: &Manifest,
        number_of: impl Fn(&ChunkId) -> Option<u32>,
    ) -> std::result::Result<Self, ChunkId> {
        let numbers = manifest
            .chunks
            .iter()
            .map(|c| number_of(&c.id).ok_or(c.id))
            .collect::<std::result::Result<_, _>>()?;
        Ok(StoredManifest {
            block_size: manifest.block_size,
            file_size: manifest.file_size,
            identity: manifest.identity,
            blocks: manifest.blocks.clone(),
            numbers,
        })
    }

    /// Version 2: version u8 · block size varint · file size varint ·
    /// identity (32) · the block ids as runs · the chunk numbers as runs.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.blocks.len() / 2 + self.numbers.len() / 2);
        out.push(STORED_VERSION);
        varint(&mut out, self.block_size.into());
        varint(&mut out, self.file_size);
        out.extend_from_slice(&self.identity.0);
        encode_runs(&mut out, self.blocks.iter().copied());
        encode_runs(&mut out, self.numbers.iter().map(|&n| u64::from(n)));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Cursor { bytes, at: 0 };
        let version = r.take::<1>()?[0];
        if version != STORED_VERSION {
            return Err(Error::CorruptStore(format!(
                "stored manifest version {version}"
            )));
        }
        let block_size = u32::try_from(r.varint()?)
            .map_err(|_| Error::CorruptStore("manifest block size".into()))?;
        validate_block_size(block_size).map_err(|e| Error::CorruptStore(e.to_string()))?;
        let file_size = r.varint()?;
        let identity = FileIdentity(r.take()?);
        let blocks = r.runs()?;
        let numbers = r
            .runs()?
            .into_iter()
            .map(u32::try_from)
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::CorruptStore("a chunk number above 2^32".into()))?;
        if r.at != bytes.len() {
            return Err(Error::CorruptStore("trailing bytes in manifest".into()));
        }
        Ok(StoredManifest {
            block_size,
            file_size,
            identity,
            blocks,
            numbers,
        })
    }

    /// The manifest, each number replaced by its chunk (`chunk_of`), and
    /// checked like a decoded one: blocks inside the file, block data as
    /// long as the chunks.
    pub fn resolve(self, chunk_of: impl Fn(u32) -> Option<ChunkRef>) -> Result<Manifest> {
        let chunks = self
            .numbers
            .iter()
            .map(|&n| {
                chunk_of(n).ok_or_else(|| {
                    Error::CorruptStore(format!(
                        "manifest names chunk number {n}, which is unknown"
                    ))
                })
            })
            .collect::<Result<_>>()?;
        let manifest = Manifest {
            block_size: self.block_size,
            file_size: self.file_size,
            identity: self.identity,
            blocks: self.blocks,
            chunks,
        };
        manifest.check()?;
        Ok(manifest)
    }
}

/// Appends `n` as a LEB128 varint.
pub(crate) fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A sequence as runs of consecutive values: count varint, run count
/// varint, then per run the zigzag distance from the end of the previous
/// run (0 at first) to its start, shifted left by one with the low bit set
/// if the run is longer than one value, as a varint; then, if so, its
/// length less two. A boot reads blocks in requests of several, and an
/// import numbers a boot image's new chunks in stream order, so most runs
/// are long; a lone value costs only its distance.
fn encode_runs(out: &mut Vec<u8>, values: impl Iterator<Item = u64>) {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut count = 0u64;
    for v in values {
        count += 1;
        match runs.last_mut() {
            Some((start, len)) if start.wrapping_add(*len) == v => *len += 1,
            _ => runs.push((v, 1)),
        }
    }
    varint(out, count);
    varint(out, runs.len() as u64);
    let mut end = 0u64;
    for (start, len) in runs {
        let delta = start.wrapping_sub(end) as i64;
        let zigzag = ((delta << 1) ^ (delta >> 63)) as u64;
        // The flag takes the zigzag distance's top bit: distances of 2^62
        // and more do not arise (block ids are below 2^55, 2^64 bytes in
        // the smallest blocks; numbers below 2^32).
        varint(out, (zigzag << 1) | u64::from(len > 1));
        if len > 1 {
            varint(out, len - 2);
        }
        end = start.wrapping_add(len);
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        let end = self.at + N;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or_else(|| Error::CorruptStore("truncated manifest".into()))?;
        self.at = end;
        Ok(slice.try_into().unwrap_or([0; N]))
    }

    fn varint(&mut self) -> Result<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take::<1>()?[0];
            n |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(Error::CorruptStore("a varint longer than 64 bits".into()))
    }

    /// A sequence written by [`encode_runs`].
    fn runs(&mut self) -> Result<Vec<u64>> {
        let count = self.varint()?;
        let runs = self.varint()?;
        // A run takes at least a byte; a count above what runs can hold or
        // above any boot image is damage.
        if count > MAX_ITEMS || runs > count || runs > (self.bytes.len() - self.at) as u64 {
            return Err(Error::CorruptStore("manifest counts out of bounds".into()));
        }
        let mut out = Vec::with_capacity(count as usize);
        let mut end = 0u64;
        for _ in 0..runs {
            let head = self.varint()?;
            let z = head >> 1;
            let delta = ((z >> 1) as i64) ^ -((z & 1) as i64);
            let len = match head & 1 {
                1 => self.varint()?.saturating_add(2),
                _ => 1,
            };
            if len > count - out.len() as u64 {
                return Err(Error::CorruptStore(
                    "manifest runs exceed their count".into(),
                ));
            }
            let start = end.wrapping_add(delta as u64);
            out.extend((0..len).map(|i| start.wrapping_add(i)));
            end = start.wrapping_add(len);
        }
        if out.len() as u64 != count {
            return Err(Error::CorruptStore(
                "manifest runs fall short of their count".into(),
            ));
        }
        Ok(out)
    }

    /// A count of `item_len`-byte items, checked against the bytes left.
    fn count(&mut self, item_len: usize) -> Result<usize> {
        let n = u64::from_le_bytes(self.take()?);
        let left = (self.bytes.len() - self.at) as u64;
        if n.saturating_mul(item_len as u64) > left {
            return Err(Error::CorruptStore("truncated manifest".into()));
        }
        Ok(n as usize)
    }
}

/// Offset lookups over a manifest: which part of the block stream holds a
/// block, and which chunks hold a part of the stream. Both are binary
/// searches over sorted tables built once per manifest.
#[derive(Debug)]
pub struct ManifestIndex {
    /// (block id, offset of its data in the stream), sorted by block id.
    blocks: Vec<(u64, u64)>,
    /// Stream offset where each chunk starts, plus the stream length last.
    chunk_starts: Vec<u64>,
    manifest: Manifest,
}

impl ManifestIndex {
    pub fn new(manifest: Manifest) -> Self {
        let mut at = 0u64;
        let mut blocks: Vec<(u64, u64)> = manifest
            .blocks
            .iter()
            .map(|&id| {
                let start = at;
                at += manifest.block_len(id) as u64;
                (id, start)
            })
            .collect();
        blocks.sort_unstable();
        let mut chunk_starts = Vec::with_capacity(manifest.chunks.len() + 1);
        let mut at = 0u64;
        for chunk in &manifest.chunks {
            chunk_starts.push(at);
            at += u64::from(chunk.len);
        }
        chunk_starts.push(at);
        ManifestIndex {
            blocks,
            chunk_starts,
            manifest,
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Where block `id`'s data sits in the stream, if the boot image has it.
    pub fn block(&self, id: u64) -> Option<Range<u64>> {
        let i = self.blocks.binary_search_by_key(&id, |&(b, _)| b).ok()?;
        let start = self.blocks[i].1;
        Some(start..start + self.manifest.block_len(id) as u64)
    }

    /// Algorithm 1 for a read of `range` of the file, as a plan: the range
    /// cut at block boundaries, each piece with the part of the block stream
    /// that holds it, or `None` where the boot image lacks the block (the
    /// file serves it).
    pub fn plan(
        &self,
        range: Range<u64>,
    ) -> impl Iterator<Item = (Range<u64>, Option<Range<u64>>)> + '_ {
        let bs = u64::from(self.manifest.block_size).max(1);
        let mut at = range.start;
        std::iter::from_fn(move || {
            if at >= range.end {
                return None;
            }
            let id = at / bs;
            let piece = at..((id + 1) * bs).min(range.end);
            let stream = self.block(id).map(|stream| {
                let within = (piece.start - id * bs)..(piece.end - id * bs);
                (stream.start + within.start)..(stream.start + within.end)
            });
            at = piece.end;
            Some((piece, stream))
        })
    }

    /// The chunks that hold `range` of the stream: (chunk index, the part of
    /// the stream that chunk covers).
    pub fn chunks_for(&self, range: Range<u64>) -> impl Iterator<Item = (usize, Range<u64>)> + '_ {
        let first = self
            .chunk_starts
            .partition_point(|&s| s <= range.start)
            .saturating_sub(1);
        (first..self.manifest.chunks.len())
            .take_while(move |&i| self.chunk_starts[i] < range.end)
            .map(|i| (i, self.chunk_starts[i]..self.chunk_starts[i + 1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn manifest(blocks: Vec<u64>, chunk_lens: &[u32], file_size: u64) -> Manifest {
        Manifest {
            block_size: 4096,
            file_size,
            identity: FileIdentity([1; 32]),
            blocks,
            chunks: chunk_lens
                .iter()
                .enumerate()
                .map(|(i, &len)| ChunkRef {
                    id: ChunkId::of(&i.to_le_bytes()),
                    len,
                })
                .collect(),
        }
    }

    #[test]
    fn encode_decode_round_trip_and_truncation() {
        let m = manifest(vec![5, 1, 2], &[8192, 4096], 1 << 20);
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        for len in 0..bytes.len() {
            assert!(Manifest::decode(&bytes[..len]).is_err());
        }
    }

    #[test]
    fn lookup_finds_blocks_in_time_order_stream() {
        // Blocks 9, 2, 4 in time order; the file's last block (4) is short.
        let m = manifest(vec![9, 2, 4], &[5000, 3292], 4 * 4096 + 100);
        let m = Manifest {
            blocks: vec![3, 2, 4],
            ..m
        };
        let index = ManifestIndex::new(m);
        assert_eq!(index.block(3), Some(0..4096));
        assert_eq!(index.block(2), Some(4096..8192));
        assert_eq!(index.block(4), Some(8192..8292));
        assert_eq!(index.block(0), None);
        let chunks: Vec<_> = index.chunks_for(4096..8192).collect();
        assert_eq!(chunks, vec![(0, 0..5000), (1, 5000..8292)]);
        let chunks: Vec<_> = index.chunks_for(8192..8292).collect();
        assert_eq!(chunks, vec![(1, 5000..8292)]);
    }

    #[test]
    fn a_read_is_planned_block_by_block_from_the_stream_or_the_file() {
        // Blocks 3, 2, 4 recorded in that order; the file's last block (4)
        // is 100 bytes long.
        let m = manifest(vec![3, 2, 4], &[5000, 3292], 4 * 4096 + 100);
        let index = ManifestIndex::new(m);
        // From inside block 0 to inside block 3: blocks 0 and 1 (not
        // recorded) from the file, block 2 whole from its place in the
        // stream (second), the start of block 3 from the stream's start.
        let plan: Vec<_> = index.plan(4000..3 * 4096 + 10).collect();
        assert_eq!(
            plan,
            vec![
                (4000..4096, None),
                (4096..8192, None),
                (8192..12288, Some(4096..8192)),
                (12288..12298, Some(0..10)),
            ]
        );
        // Within one block, and the short last block to the file's end.
        let plan: Vec<_> = index.plan(8200..8300).collect();
        assert_eq!(plan, vec![(8200..8300, Some(4104..4204))]);
        let plan: Vec<_> = index.plan(4 * 4096..4 * 4096 + 100).collect();
        assert_eq!(plan, vec![(16384..16484, Some(8192..8292))]);
        assert_eq!(index.plan(7..7).count(), 0);
    }

    /// The manifest of `manifest(..)` through the store's encoding, with
    /// chunk `i` numbered `numbers[i]`.
    fn stored_round_trip(m: &Manifest, numbers: &[u32]) -> (Vec<u8>, Manifest) {
        let of = |id: &ChunkId| {
            m.chunks
                .iter()
                .position(|c| c.id == *id)
                .map(|i| numbers[i])
        };
        let bytes = StoredManifest::of(m, of).unwrap().encode();
        let back = StoredManifest::decode(&bytes)
            .unwrap()
            .resolve(|n| numbers.iter().position(|&x| x == n).map(|i| m.chunks[i]))
            .unwrap();
        (bytes, back)
    }

    #[test]
    fn stored_form_round_trips_and_refuses_truncation() {
        let m = manifest(
            vec![5, 6, 7, 1, 2, 9],
            &[8192, 4096, 4096, 4096, 4096],
            1 << 20,
        );
        let (bytes, back) = stored_round_trip(&m, &[7, 8, 9, 3, 70_000]);
        assert_eq!(back, m);
        for len in 0..bytes.len() {
            assert!(StoredManifest::decode(&bytes[..len]).is_err(), "{len}");
        }
        // An unknown number is an error, not a chunk.
        let stored = StoredManifest::decode(&bytes).unwrap();
        assert!(stored.resolve(|_| None).is_err());
    }

    #[test]
    fn runs_make_a_sequential_boot_image_small() {
        // 10 000 blocks read in requests of 8, chunks numbered in stream
        // order: a few bytes per request, against 44 per block in v1.
        let blocks: Vec<u64> = (0..1250u64).rev().flat_map(|r| r * 8..r * 8 + 8).collect();
        let m = manifest(blocks, &vec![4096; 10_000], 1 << 30);
        let numbers: Vec<u32> = (100..10_100).collect();
        let (bytes, back) = stored_round_trip(&m, &numbers);
        assert_eq!(back, m);
        assert!(bytes.len() < 1250 * 4, "{} bytes", bytes.len());
        assert!(m.encode().len() > 10_000 * 44);
    }

    #[test]
    fn damaged_counts_are_refused_before_they_allocate() {
        let m = manifest(vec![1, 2], &[8192], 1 << 20);
        let (mut bytes, _) = stored_round_trip(&m, &[4]);
        // The block count: after version, block size (2-byte varint), file
        // size (3-byte varint) and identity.
        let at = 1 + 2 + 3 + 32;
        assert_eq!(bytes[at], 2);
        bytes.splice(at..at + 1, [0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(StoredManifest::decode(&bytes).is_err());
    }

    proptest! {
        #[test]
        fn stored_form_round_trips(
            blocks in proptest::collection::vec(0u64..5000, 0..200),
            numbers in proptest::collection::vec(any::<u32>(), 1..50),
        ) {
            let mut blocks = blocks;
            blocks.sort_unstable();
            blocks.dedup();
            let total = blocks.len() as u64 * 4096;
            // Chunks of 4096 each, as many as the blocks; numbers repeat.
            let n = blocks.len();
            let lens = vec![4096u32; n];
            let mut m = manifest(blocks, &lens, 5000 * 4096);
            prop_assert_eq!(m.stream_len(), total);
            let numbers: Vec<u32> = (0..n).map(|i| numbers[i % numbers.len()]).collect();
            // Equal numbers must name equal chunks.
            for i in 0..n {
                let first = numbers.iter().position(|&x| x == numbers[i]).unwrap();
                m.chunks[i] = m.chunks[first];
            }
            let (_, back) = stored_round_trip(&m, &numbers);
            prop_assert_eq!(back, m);
        }

        #[test]
        fn chunks_for_covers_exactly(lens in proptest::collection::vec(1u32..5000, 1..30), a in any::<u64>(), b in any::<u64>()) {
            let total: u64 = lens.iter().map(|&l| u64::from(l)).sum();
            let (mut s, mut e) = (a % total, b % total + 1);
            if s >= e { std::mem::swap(&mut s, &mut e); }
            if s == e { return Ok(()); }
            let index = ManifestIndex::new(manifest(vec![], &lens, 0));
            let got: Vec<_> = index.chunks_for(s..e).collect();
            prop_assert!(got.first().unwrap().1.start <= s);
            prop_assert!(got.last().unwrap().1.end >= e);
            for pair in got.windows(2) {
                prop_assert_eq!(pair[0].1.end, pair[1].1.start);
            }
        }
    }
}
