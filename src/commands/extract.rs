use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::commands::open_for_reading;

#[derive(clap::Args)]
pub struct Args {
    name: String,
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(path: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let store = open_for_reading(path)?;
    yolo_store_core::extract(&store, &args.name, &args.output)
        .with_context(|| format!("extracting {} to {}", args.name, args.output.display()))?;
    println!(
        "extracted {} -> {} (sparse)",
        args.name,
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}
