use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::commands::{open_for_reading, print_json};

#[derive(clap::Args)]
pub struct Args {
    name: String,
    /// Where to write the sparse copy: a new or regular file, written aside
    /// and renamed over it (mode 0600), so a failure leaves it as it was.
    #[arg(short, long)]
    output: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(path: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let context = || format!("extracting {} to {}", args.name, args.output.display());
    yolo_store_core::check_output(&args.output).with_context(context)?;
    let store = open_for_reading(path)?;
    yolo_store_core::extract(&store, &args.name, &args.output).with_context(context)?;
    if args.json {
        print_json(&serde_json::json!({ "name": args.name, "output": args.output }))?;
    } else {
        outln!(
            "extracted {} -> {} (sparse)",
            args.name,
            args.output.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
