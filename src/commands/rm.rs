use std::path::Path;
use std::process::ExitCode;

use crate::commands::open_for_writing;

#[derive(clap::Args)]
pub struct Args {
    /// VMI names to remove; all or none are removed.
    #[arg(required = true)]
    names: Vec<String>,
}

pub fn run(path: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let store = open_for_writing(path)?;
    yolo_store_core::remove(&store, &args.names)?;
    println!(
        "removed {} (run gc to free unshared chunks)",
        args.names.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
