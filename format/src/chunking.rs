//! How a boot image's block stream is cut into chunks. The parameters decide
//! what deduplicates, so they are fixed when a store is created and recorded
//! in it, together with the pinned fastcdc version.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{ChunkingFault, FormatError, Result};

/// The fastcdc crate version this build cuts with (pinned in Cargo.toml).
pub const FASTCDC_VERSION: &str = "3.2.1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Chunking {
    /// Chunks of `size` bytes made of whole blocks; a file's short last
    /// block ends its chunk. With `size` equal to the block size, one chunk
    /// per block: identical guest blocks deduplicate wherever they sit.
    Fixed { size: u32 },
    /// FastCDC (2020) over the block stream in first-access order.
    Fastcdc { min: u32, avg: u32, max: u32 },
}

impl Default for Chunking {
    /// Measured best on a family of Debian VMIs: see docs/chunking.md.
    fn default() -> Self {
        Chunking::Fixed { size: 4096 }
    }
}

impl Chunking {
    /// The longest chunk this chunking cuts: the bound on every chunk length
    /// read from outside before it sizes a buffer.
    pub fn max_len(&self) -> u32 {
        match *self {
            Chunking::Fixed { size } => size,
            Chunking::Fastcdc { max, .. } => max,
        }
    }

    pub fn validate(&self) -> Result<()> {
        use fastcdc::v2020 as cdc;
        match *self {
            Chunking::Fixed { size }
                if size.is_power_of_two() && (512..=1 << 20).contains(&size) =>
            {
                Ok(())
            }
            Chunking::Fixed { size } => Err(FormatError::Chunking(ChunkingFault::FixedSize(size))),
            Chunking::Fastcdc { min, avg, max }
                if (cdc::MINIMUM_MIN..=cdc::MINIMUM_MAX).contains(&min)
                    && (cdc::AVERAGE_MIN..=cdc::AVERAGE_MAX).contains(&avg)
                    && (cdc::MAXIMUM_MIN..=cdc::MAXIMUM_MAX).contains(&max)
                    && min <= avg
                    && avg <= max =>
            {
                Ok(())
            }
            Chunking::Fastcdc { .. } => {
                Err(FormatError::Chunking(ChunkingFault::FastcdcRange(*self)))
            }
        }
    }

    /// Lengths of the chunks `data` is cut into. `block_lens` are the lengths
    /// of the `block_size` blocks `data` is made of, in order: fixed chunking
    /// never splits a block, so its chunks stay aligned to guest blocks.
    /// The lengths sum to `data.len()`.
    pub fn cut(
        &self,
        data: &[u8],
        block_size: u32,
        block_lens: impl Iterator<Item = usize>,
    ) -> Vec<usize> {
        match *self {
            Chunking::Fixed { size } => {
                let size = size as usize;
                let mut lens = Vec::with_capacity(data.len() / size + 1);
                let mut current = 0;
                for len in block_lens {
                    current += len;
                    if current >= size || len < block_size as usize {
                        lens.push(current);
                        current = 0;
                    }
                }
                if current > 0 {
                    lens.push(current);
                }
                lens
            }
            Chunking::Fastcdc { min, avg, max } => {
                fastcdc::v2020::FastCDC::new(data, min, avg, max)
                    .map(|chunk| chunk.length)
                    .collect()
            }
        }
    }
}

impl fmt::Display for Chunking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Chunking::Fixed { size } => write!(f, "fixed:{size}"),
            Chunking::Fastcdc { min, avg, max } => write!(f, "fastcdc:{min}:{avg}:{max}"),
        }
    }
}

impl FromStr for Chunking {
    type Err = FormatError;
    /// `fixed:SIZE` or `fastcdc:MIN:AVG:MAX` (bytes).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || FormatError::Chunking(ChunkingFault::Syntax(s.to_string()));
        let parts: Vec<&str> = s.split(':').collect();
        let num = |p: &str| p.parse::<u32>().map_err(|_| bad());
        let chunking = match parts.as_slice() {
            ["fixed", size] => Chunking::Fixed { size: num(size)? },
            ["fastcdc", min, avg, max] => Chunking::Fastcdc {
                min: num(min)?,
                avg: num(avg)?,
                max: num(max)?,
            },
            _ => return Err(bad()),
        };
        chunking.validate()?;
        Ok(chunking)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fixed_is_block_aligned_even_after_a_short_block() {
        let lens = [4096, 4096, 100, 4096, 4096, 4096];
        let data = vec![0u8; lens.iter().sum()];
        let cuts = Chunking::Fixed { size: 8192 }.cut(&data, 4096, lens.iter().copied());
        assert_eq!(cuts, vec![8192, 100, 8192, 4096]);
    }

    #[test]
    fn parse_and_display_round_trip() {
        for s in ["fixed:4096", "fastcdc:2048:8192:65536"] {
            assert_eq!(s.parse::<Chunking>().unwrap().to_string(), s);
        }
        for bad in [
            "fixed:1000",
            "fastcdc:1:2:3",
            "rabin:4",
            "fastcdc:8192:4096:65536",
        ] {
            assert!(bad.parse::<Chunking>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn cdc_is_deterministic_and_covers_the_data(data in proptest::collection::vec(any::<u8>(), 0..100_000)) {
            let c = Chunking::Fastcdc { min: 256, avg: 1024, max: 4096 };
            let a = c.cut(&data, 4096, std::iter::empty());
            prop_assert_eq!(&a, &c.cut(&data, 4096, std::iter::empty()));
            prop_assert_eq!(a.iter().sum::<usize>(), data.len());
            prop_assert!(a.iter().all(|&l| l <= 4096));
        }
    }
}
