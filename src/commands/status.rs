use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::fuse::STATUS_FILE;

#[derive(clap::Args)]
pub struct Args {
    /// A running mount (`yolo-store mount` or `record`).
    mountpoint: PathBuf,
}

/// Prints the counters of a running mount, read from its virtual status
/// file (JSON).
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let path = args.mountpoint.join(STATUS_FILE);
    let body = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (is a yolo-store mount there?)", path.display()))?;
    println!("{}", body.trim_end());
    Ok(ExitCode::SUCCESS)
}
