use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use yolo_store_core::{Chunking, Store, StoreConfig};

#[derive(clap::Args)]
pub struct Args {
    /// `fixed:SIZE` (whole blocks) or `fastcdc:MIN:AVG:MAX`, in bytes.
    #[arg(long, default_value_t = Chunking::default())]
    chunking: Chunking,
    /// zstd level for chunk data.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    zstd_level: i32,
}

pub fn run(path: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let config = StoreConfig {
        chunking: args.chunking,
        zstd_level: args.zstd_level,
        ..StoreConfig::default()
    };
    Store::open_or_create(path, Some(config.clone()))
        .with_context(|| format!("creating store {}", path.display()))?;
    outln!(
        "store {} ready: chunking {}, zstd level {}",
        path.display(),
        config.chunking,
        config.zstd_level
    );
    Ok(ExitCode::SUCCESS)
}
