use std::path::Path;
use std::process::ExitCode;

use yolo_store_core::Store;

use crate::commands::remote::RemoteArgs;
use crate::commands::{print_json, wait_for_writer};
use crate::human;

#[derive(clap::Args)]
pub struct Args {
    /// VMIs to pull (default: every boot image on the remote).
    names: Vec<String>,
    #[command(flatten)]
    remote: RemoteArgs,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(path: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let (remote, bar) = args.remote.open("pull")?;
    let store = if path.join("CURRENT").exists() {
        wait_for_writer(path, || Store::open(path))?
    } else {
        // A new store chunks the way the remote does, so they deduplicate.
        let config = remote
            .config()?
            .ok_or_else(|| anyhow::anyhow!("{}: nothing was ever pushed here", remote.url()))?;
        wait_for_writer(path, || {
            Store::open_or_create(path, Some(config.store_config()))
        })?
    };
    let report = yolo_store_core::pull(&store, &remote, &args.names);
    bar.finish_and_clear();
    let report = report?;
    if args.json {
        print_json(&report)?;
    } else {
        outln!(
            "pulled {} VMI(s) from {} ({} unchanged): {} chunks downloaded ({} in {} \
             pack and {} range GETs, {} of index and manifests), {} already here ({} not moved)",
            report.names.len(),
            remote.url(),
            report.unchanged.len(),
            report.downloaded_chunks,
            human::bytes(report.downloaded_bytes),
            report.pack_gets,
            report.range_gets,
            human::bytes(report.index_bytes + report.manifest_bytes),
            report.local_chunks,
            human::bytes(report.local_raw_bytes),
        );
    }
    for refused in &report.refused_index_objects {
        eprintln!("yolo-store: refused remote index object {refused}");
    }
    for failure in &report.failed {
        eprintln!(
            "yolo-store: refused {}: remote object {}: {}",
            failure.name, failure.object, failure.why
        );
    }
    if report.failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}
