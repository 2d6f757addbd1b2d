//! Test data shared by the unit tests and the integration tests (feature
//! `testing`): one generator of VMI-like boot images, so every test means
//! the same thing by "shared" and "own" blocks.

use crate::format::{BootImage, FileHeader, FileImage};
use crate::id::FileIdentity;

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
