//! zstd with reused contexts, and how one chunk travels alone (a remote's
//! chunk object): `[codec u8][raw_len u32 LE][payload]`. Codec 0 is raw
//! (used when zstd does not shrink the chunk), codec 1 is one zstd frame.
//! In the local store chunks live in packs (`pack.rs`).

use std::cell::RefCell;

use crate::id::ChunkId;
use crate::{ChunkFault, FormatError, Result};

thread_local! {
    // A zstd context per thread, reused: making one per 4 KiB chunk costs
    // more than compressing the chunk. Keyed by level, which is fixed per
    // store.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

pub(crate) fn compress(raw: &[u8], level: i32) -> Option<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().map(|(l, _)| *l) != Some(level) {
            *cell = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, compressor) = cell.as_mut()?;
        compressor.compress(raw).ok()
    })
}

pub(crate) fn decompress(payload: &[u8], raw_len: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(zstd::bulk::Decompressor::new()?);
        }
        match cell.as_mut() {
            Some(d) => d.decompress(payload, raw_len),
            None => Err(std::io::Error::other("no zstd context")),
        }
    })
}

const RAW: u8 = 0;
const ZSTD: u8 = 1;
const HEADER: usize = 5;

pub fn encode_chunk(raw: &[u8], zstd_level: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + raw.len() / 2);
    out.push(ZSTD);
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    let compressed = compress(raw, zstd_level).filter(|c| c.len() < raw.len());
    match compressed {
        Some(c) => out.extend_from_slice(&c),
        None => {
            out[0] = RAW;
            out.extend_from_slice(raw);
        }
    }
    out
}

/// Decodes a stored chunk and checks it against its id: a chunk whose bytes
/// no longer hash to its name is an error, never data.
pub fn decode_chunk(id: &ChunkId, stored: &[u8], max_len: u32) -> Result<Vec<u8>> {
    let corrupt = |why| FormatError::CorruptChunk { id: *id, why };
    if stored.len() < HEADER {
        return Err(corrupt(ChunkFault::TooShort(stored.len())));
    }
    let raw_len = u32::from_le_bytes([stored[1], stored[2], stored[3], stored[4]]) as usize;
    if raw_len > max_len as usize {
        return Err(corrupt(ChunkFault::TooLong {
            len: raw_len,
            max: max_len,
        }));
    }
    let payload = &stored[HEADER..];
    let raw = match stored[0] {
        RAW => payload.to_vec(),
        ZSTD => decompress(payload, raw_len).map_err(|e| corrupt(ChunkFault::Zstd(e)))?,
        other => return Err(corrupt(ChunkFault::UnknownCodec(other))),
    };
    if raw.len() != raw_len {
        return Err(corrupt(ChunkFault::Length {
            got: raw.len(),
            header: raw_len,
        }));
    }
    if ChunkId::of(&raw) != *id {
        return Err(corrupt(ChunkFault::NotItsId));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_compressible_and_random() {
        let text = b"boot boot boot boot boot boot boot boot".repeat(100);
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for raw in [&text[..], &noise[..], b""] {
            let id = ChunkId::of(raw);
            let stored = encode_chunk(raw, 3);
            assert!(stored.len() <= raw.len() + HEADER);
            assert_eq!(decode_chunk(&id, &stored, 1 << 20).unwrap(), raw);
        }
    }

    #[test]
    fn corruption_is_detected() {
        let raw = b"kernel".repeat(500);
        let id = ChunkId::of(&raw);
        let stored = encode_chunk(&raw, 3);
        for i in 0..stored.len() {
            let mut bad = stored.clone();
            bad[i] ^= 1;
            assert!(
                decode_chunk(&id, &bad, 1 << 20).is_err(),
                "flip at {i} accepted"
            );
        }
    }
}
