//! Test data shared by the unit tests and the integration tests (feature
//! `testing`): one generator of VMI-like boot images, so every test means
//! the same thing by "shared" and "own" blocks.

use crate::format::{BootImage, FileHeader, FileImage};
use crate::id::FileIdentity;
use crate::{Error, Result, Store};

/// A one-file boot image named `name`: `shared` blocks common to every
/// seed, then `own` blocks of its own (content from `seed`). Its identity
/// is made up from the seed: it describes no real file.
pub fn family_image(name: &str, seed: u64, shared: u64, own: u64) -> BootImage {
    let mut data = Vec::new();
    for i in 0..shared {
        data.extend(block(0, i));
    }
    for i in 0..own {
        data.extend(block(seed, i));
    }
    let n = shared + own;
    BootImage {
        block_size: 4096,
        files: vec![FileImage {
            header: FileHeader {
                name: name.to_string(),
                file_size: n * 4096,
                identity: FileIdentity([seed as u8; 32]),
                blocks: (0..n).collect(),
            },
            data,
        }],
    }
}

/// Block `i` of seed `s`: xorshift bytes of a small alphabet, so zstd has
/// something to do and no two blocks are equal.
fn block(s: u64, i: u64) -> Vec<u8> {
    let mut x = s * 1_000_003 + i * 2 + 1; // odd, distinct per block
    (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 11) as u8
        })
        .collect()
}

/// Deletes the `numbers` record of the last chunk of `name`'s boot image,
/// as `gc` would for a chunk no manifest uses, and returns that number:
/// the boot image is still listed, but its manifest no longer resolves
/// (an error other than `UnknownVmi`), which is what a view taken while a
/// writer commits saw in CI. Bypasses every check; for tests only.
pub fn lose_chunk_number(store: &Store, name: &str) -> Result<u32> {
    let manifest = store.manifest(name)?;
    let id = manifest
        .chunks
        .last()
        .ok_or_else(|| Error::CorruptStore(format!("{name} has no chunks to lose")))?
        .id;
    let info = store.chunk_info(&id)?.ok_or(Error::MissingChunk { id })?;
    let mut batch = store.batch();
    batch.delete_number(info.number)?;
    store.write(batch)?;
    Ok(info.number)
}
