use std::path::Path;
use std::process::ExitCode;

use crate::commands::remote::RemoteArgs;
use crate::commands::{open_for_reading, print_json};
use crate::human;

#[derive(clap::Args)]
pub struct Args {
    /// VMIs to push (default: every boot image in the store).
    names: Vec<String>,
    #[command(flatten)]
    remote: RemoteArgs,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(path: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let store = open_for_reading(path)?;
    let (remote, bar) = args.remote.open("push")?;
    let report = yolo_store_core::push(&store, &remote, &args.names);
    bar.finish_and_clear();
    let report = report?;
    if args.json {
        print_json(&report)?;
    } else {
        outln!(
            "pushed {} VMI(s) to {}: {} chunks uploaded ({} in {} pack(s)), {} already there \
             ({} not sent); {} manifest(s) written",
            report.names.len(),
            remote.url(),
            report.uploaded_chunks,
            human::bytes(report.uploaded_bytes),
            report.packs.len(),
            report.present_chunks,
            human::bytes(report.present_bytes),
            report.manifests_uploaded,
        );
    }
    Ok(ExitCode::SUCCESS)
}
