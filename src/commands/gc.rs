use std::path::Path;
use std::process::ExitCode;

use yolo_store_core::{execute_gc, plan_gc, remote_gc};

use crate::commands::remote::RemoteArgs;
use crate::commands::{open_for_reading, open_for_writing, print_json};
use crate::human;

#[derive(clap::Args)]
pub struct Args {
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the plan and the result as JSON.
    #[arg(long)]
    json: bool,
    /// Collect a remote (s3://BUCKET[/PREFIX] or file:///DIR) instead of the
    /// local store: chunks no manifest there references.
    #[arg(long)]
    remote: Option<String>,
    /// With --remote: keep unreferenced chunks younger than this, since
    /// another node's push may be about to reference them.
    #[arg(long, default_value = "1h", value_parser = human::parse_duration, requires = "remote")]
    grace: std::time::Duration,
    #[arg(long, requires = "remote")]
    endpoint: Option<String>,
    #[arg(long, requires = "remote")]
    region: Option<String>,
}

pub fn run(path: &Path, args: Args) -> anyhow::Result<ExitCode> {
    if let Some(url) = &args.remote {
        return run_remote(url, &args);
    }
    // Plan on a read-only view first: a store with nothing to collect (or a
    // dry run) is never opened for writing, which by itself adds files.
    let mut plan = plan_gc(&open_for_reading(path)?)?;
    let store = match args.dry_run || plan.chunks.is_empty() {
        true => None,
        false => {
            let store = open_for_writing(path)?;
            plan = plan_gc(&store)?;
            Some(store)
        }
    };
    if !args.json {
        outln!(
            "gc plan: {} unreferenced chunks, {} raw, {} stored to free",
            plan.chunks.len(),
            human::bytes(plan.raw_bytes),
            human::bytes(plan.stored_bytes)
        );
    }
    let Some(store) = store.filter(|_| !plan.chunks.is_empty()) else {
        if args.json {
            print_json(&serde_json::json!({ "plan": plan }))?;
        } else if !args.dry_run {
            outln!("gc done: nothing to collect, store unchanged");
        }
        return Ok(ExitCode::SUCCESS);
    };
    let report = execute_gc(&store, &plan)?;
    if args.json {
        print_json(&serde_json::json!({ "plan": plan, "report": report }))?;
    } else {
        outln!(
            "gc done: deleted {} chunks ({}), store on disk {} -> {}{}",
            report.deleted_chunks,
            human::bytes(report.freed_stored_bytes),
            human::bytes(report.disk_before),
            human::bytes(report.disk_after),
            if report.revived_chunks > 0 {
                format!(
                    ", {} chunks kept (reused by an import meanwhile)",
                    report.revived_chunks
                )
            } else {
                String::new()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn run_remote(url: &str, args: &Args) -> anyhow::Result<ExitCode> {
    let remote_args = RemoteArgs {
        remote: url.to_string(),
        endpoint: args.endpoint.clone(),
        region: args.region.clone(),
        jobs: 32,
    };
    let (remote, _) = remote_args.open("gc")?;
    let report = remote_gc(&remote, args.grace, args.dry_run)?;
    if args.json {
        return print_json(&report).map(|()| ExitCode::SUCCESS);
    }
    let plan = &report.plan;
    outln!(
        "remote gc plan for {}: {} unreferenced chunks ({}) in packs older than {} s to drop \
         ({} pack(s) to delete, {} to repack), {} younger kept, {} kept in mostly live packs, \
         {} referenced; {} superseded manifest(s)",
        remote.url(),
        plan.chunks.len(),
        human::bytes(plan.bytes),
        plan.grace_secs,
        plan.delete_packs.len(),
        plan.repack_packs.len(),
        plan.young_chunks,
        plan.kept_dead_chunks,
        plan.referenced_chunks,
        plan.manifests.len()
    );
    if !args.dry_run {
        outln!(
            "remote gc done: dropped {} chunks ({}): {} pack(s) deleted, {} repacked, \
             {} manifest(s) re-encoded; {} superseded manifest(s) deleted",
            report.deleted_chunks,
            human::bytes(report.deleted_bytes),
            report.deleted_packs,
            report.repacked_packs,
            report.rewritten_manifests,
            report.deleted_manifests
        );
    }
    Ok(ExitCode::SUCCESS)
}
