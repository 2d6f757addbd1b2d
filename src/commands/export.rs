use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::commands::{check_json_output, open_for_reading, print_json, summary};

#[derive(clap::Args)]
pub struct Args {
    /// VMI names; several go into one multi-file boot image.
    #[arg(required = true)]
    names: Vec<String>,
    /// Where to write the .yolo: a new or regular file (replaced atomically,
    /// mode 0600), or - for standard output.
    #[arg(short, long)]
    output: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(path: &Path, args: Args) -> anyhow::Result<ExitCode> {
    check_json_output(args.json, &args.output)?;
    let context = || format!("exporting to {}", args.output.display());
    yolo_store_core::check_output(&args.output).with_context(context)?;
    let store = open_for_reading(path)?;
    yolo_store_core::export(&store, &args.names, &args.output).with_context(context)?;
    if args.json {
        print_json(&serde_json::json!({ "names": args.names, "output": args.output }))?;
    } else {
        summary(
            &args.output,
            &format!(
                "exported {} -> {}",
                args.names.join(", "),
                args.output.display()
            ),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
