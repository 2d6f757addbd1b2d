//! A pack: how chunks are stored. Chunks stay the unit of deduplication
//! (4 KiB blocks by default); a pack groups up to [`PACK_BYTES`] of them,
//! in the order an import first met them, and compresses them as one zstd
//! frame. Why: zstd over single 4 KiB chunks has no history to match
//! against and rebuilds its entropy tables per chunk, so packs store less
//! (`docs/chunking.md`) and compress faster; and a boot image's chunks lie
//! together, in first-access order, so loading it reads few large values.
//!
//! Value: `[codec u8][count u32][raw_len u32]`, then `count` chunk lengths
//! (u32) in data order, then the payload: the chunks' raw bytes
//! concatenated (codec 0) or one zstd frame of them (codec 1). All integers
//! little-endian. A pack does not repeat its chunks' ids (32 bytes each, 3%
//! of a pack of 4 KiB chunks): a chunk's id is the BLAKE3 of its bytes, so
//! the pack's contents name themselves, and the `refs` record of a chunk
//! says where it is.

use crate::codec::{compress, decompress};
use crate::id::ChunkId;
use crate::{ChunkFault, FormatError, PackFault, Result};

/// Raw bytes a pack is filled to (the last chunk may take it past).
pub const PACK_BYTES: usize = 256 << 10;

const RAW: u8 = 0;
const ZSTD: u8 = 1;
const HEADER: usize = 9;
const ENTRY: usize = 4;

/// A decoded pack: its chunks' raw bytes.
#[derive(Debug)]
pub struct Pack {
    /// Start of each chunk in `data`, plus the end.
    bounds: Vec<usize>,
    data: Vec<u8>,
}

impl Pack {
    /// The bytes of chunk `id`, which its refs record places at raw
    /// `offset`, checked against the id: corrupt data is an error, never
    /// data.
    pub fn checked(&self, id: &ChunkId, offset: u32) -> Result<&[u8]> {
        let corrupt = |why| FormatError::CorruptChunk { id: *id, why };
        let mut here = self.starting_at(offset).peekable();
        if here.peek().is_none() {
            return Err(corrupt(ChunkFault::NotInPack(offset)));
        }
        // Empty chunks share their offset with the next one: the chunk is
        // whichever of them has the id.
        here.find(|raw| ChunkId::of(raw) == *id)
            .ok_or_else(|| corrupt(ChunkFault::NotItsId))
    }

    /// The chunks that start at raw `offset` (more than one if all but the
    /// last are empty), unchecked.
    fn starting_at(&self, offset: u32) -> impl Iterator<Item = &[u8]> {
        let offset = offset as usize;
        let first = self.bounds.partition_point(|&b| b < offset);
        self.bounds[first..]
            .windows(2)
            .take_while(move |w| w[0] == offset)
            .map(|w| &self.data[w[0]..w[1]])
    }

    /// Every chunk with its id (the BLAKE3 of its bytes) and raw offset. A
    /// chunk whose bytes were damaged shows up under an id nothing
    /// references. Hashed on the calling thread: a pack is about 100 µs of
    /// hashing, less than waking rayon's workers costs, and callers that
    /// read many packs decode them in parallel already.
    pub fn identified(&self) -> Vec<(ChunkId, u32, &[u8])> {
        self.bounds
            .windows(2)
            .map(|w| {
                let raw = &self.data[w[0]..w[1]];
                (ChunkId::of(raw), w[0] as u32, raw)
            })
            .collect()
    }

    /// The chunks in data order, unchecked.
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        self.bounds.windows(2).map(|w| &self.data[w[0]..w[1]])
    }
}

/// Encodes `chunks` as one pack. Returns the value and each chunk's raw
/// offset in it.
pub fn encode_pack(chunks: &[&[u8]], zstd_level: i32) -> (Vec<u8>, Vec<u32>) {
    let raw_len: usize = chunks.iter().map(|raw| raw.len()).sum();
    let mut data = Vec::with_capacity(raw_len);
    let mut offsets = Vec::with_capacity(chunks.len());
    for raw in chunks {
        offsets.push(data.len() as u32);
        data.extend_from_slice(raw);
    }
    let compressed = compress(&data, zstd_level).filter(|c| c.len() < data.len());
    let payload_len = compressed.as_ref().map_or(data.len(), Vec::len);
    let mut out = Vec::with_capacity(HEADER + ENTRY * chunks.len() + payload_len);
    out.push(if compressed.is_some() { ZSTD } else { RAW });
    out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    out.extend_from_slice(&(raw_len as u32).to_le_bytes());
    for raw in chunks {
        out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(compressed.as_deref().unwrap_or(&data));
    (out, offsets)
}

/// Decodes a stored pack. Every count and length is checked against the
/// bytes present before it is used; chunk contents are checked by the
/// caller against the ids it expects ([`Pack::checked`]).
pub fn decode_pack(stored: &[u8], max_chunk: u32) -> Result<Pack> {
    if stored.len() < HEADER {
        return Err(PackFault::TooShort(stored.len()).into());
    }
    let u32_at = |at: usize| {
        u32::from_le_bytes([stored[at], stored[at + 1], stored[at + 2], stored[at + 3]])
    };
    let (codec, count, raw_len) = (stored[0], u32_at(1) as usize, u32_at(5) as usize);
    // `runs` closes a pack at the first chunk that reaches PACK_BYTES.
    let max_raw = PACK_BYTES + max_chunk as usize;
    if raw_len > max_raw {
        return Err(PackFault::TooLarge {
            raw_len,
            max: max_raw,
        }
        .into());
    }
    if count > (stored.len() - HEADER) / ENTRY {
        return Err(PackFault::TooManyChunks {
            count,
            len: stored.len(),
        }
        .into());
    }
    let mut bounds = Vec::with_capacity(count + 1);
    let mut at = 0usize;
    bounds.push(0);
    for i in 0..count {
        let len = u32_at(HEADER + i * ENTRY);
        if len > max_chunk {
            return Err(PackFault::ChunkTooLong {
                len,
                max: max_chunk,
            }
            .into());
        }
        at = at
            .checked_add(len as usize)
            .filter(|&end| end <= raw_len)
            .ok_or(PackFault::LengthsOverflow)?;
        bounds.push(at);
    }
    if at != raw_len {
        return Err(PackFault::LengthsDisagree {
            sum: at,
            header: raw_len,
        }
        .into());
    }
    let payload = &stored[HEADER + count * ENTRY..];
    let data = match codec {
        RAW => payload.to_vec(),
        ZSTD => decompress(payload, raw_len).map_err(PackFault::Zstd)?,
        other => return Err(PackFault::UnknownCodec(other).into()),
    };
    if data.len() != raw_len {
        return Err(PackFault::Holds {
            got: data.len(),
            header: raw_len,
        }
        .into());
    }
    Ok(Pack { bounds, data })
}

/// Splits `chunks` (in the order given) into runs of about `target` bytes:
/// each run ends at the chunk that reaches it.
pub fn runs<T>(
    chunks: &[T],
    target: usize,
    len: impl Fn(&T) -> usize,
) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, chunk) in chunks.iter().enumerate() {
        bytes += len(chunk);
        if bytes >= target {
            runs.push(start..i + 1);
            (start, bytes) = (i + 1, 0);
        }
    }
    if start < chunks.len() {
        runs.push(start..chunks.len());
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks() -> Vec<Vec<u8>> {
        let text = b"boot boot boot boot boot boot boot".repeat(120);
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        vec![text, noise, Vec::new(), b"kernel".to_vec()]
    }

    #[test]
    fn round_trip_and_lookup_by_offset() {
        let raws = chunks();
        let input: Vec<&[u8]> = raws.iter().map(|r| &r[..]).collect();
        let (stored, offsets) = encode_pack(&input, 3);
        let pack = decode_pack(&stored, 1 << 20).unwrap();
        assert_eq!(pack.chunks().collect::<Vec<_>>(), input);
        let found = pack.identified();
        for (i, raw) in input.iter().enumerate() {
            assert_eq!((found[i].0, found[i].1), (ChunkId::of(raw), offsets[i]));
            // The empty chunk shares its offset with the next one; each is
            // found under its own id.
            assert_eq!(pack.checked(&ChunkId::of(raw), offsets[i]).unwrap(), *raw);
        }
        assert!(pack
            .checked(&ChunkId::of(raws[0].as_slice()), offsets[1])
            .is_err());
        assert!(pack.checked(&ChunkId::of(raws[0].as_slice()), 7).is_err());
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let raws = chunks();
        let input: Vec<&[u8]> = raws.iter().map(|r| &r[..]).collect();
        let (stored, offsets) = encode_pack(&input, 3);
        for i in 0..stored.len() {
            let mut bad = stored.clone();
            bad[i] ^= 1;
            let caught = match decode_pack(&bad, 1 << 20) {
                Err(_) => true,
                Ok(pack) => input
                    .iter()
                    .zip(&offsets)
                    .any(|(raw, off)| pack.checked(&ChunkId::of(raw), *off).is_err()),
            };
            assert!(caught, "flip at {i} accepted");
        }
    }

    #[test]
    fn hostile_headers_are_refused_without_allocating() {
        let mut huge = vec![1u8];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_pack(&huge, 1 << 20).is_err());
        assert!(decode_pack(&[1, 0], 1 << 20).is_err());
        // A length within u32 but past the store's chunking maximum.
        let (big, _) = encode_pack(&[&[7u8; 8192][..]], 3);
        assert!(decode_pack(&big, 8192).is_ok());
        assert!(decode_pack(&big, 4096).is_err());
    }

    #[test]
    fn runs_fill_packs_in_order() {
        let lens = vec![4096usize; 150];
        let got = runs(&lens, PACK_BYTES, |l| *l);
        assert_eq!(got, vec![0..64, 64..128, 128..150]);
        assert!(runs(&[] as &[usize], PACK_BYTES, |l| *l).is_empty());
    }
}
