use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::commands::open_for_reading;

#[derive(clap::Args)]
pub struct Args {
    /// VMI names; several go into one multi-file boot image.
    #[arg(required = true)]
    names: Vec<String>,
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(path: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let store = open_for_reading(path)?;
    yolo_store_core::export(&store, &args.names, &args.output)
        .with_context(|| format!("exporting to {}", args.output.display()))?;
    println!(
        "exported {} -> {}",
        args.names.join(", "),
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}
