use std::path::Path;
use std::process::ExitCode;

use crate::commands::{open_for_writing, print_json};

#[derive(clap::Args)]
pub struct Args {
    /// VMI names to remove; all or none are removed.
    #[arg(required = true)]
    names: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(path: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let store = open_for_writing(path)?;
    yolo_store_core::remove(&store, &args.names)?;
    if args.json {
        print_json(&serde_json::json!({ "removed": args.names }))?;
    } else {
        outln!(
            "removed {} (run gc to free unshared chunks)",
            args.names.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
