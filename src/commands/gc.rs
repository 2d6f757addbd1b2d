use std::path::Path;
use std::process::ExitCode;

use yolo_store_core::{execute_gc, plan_gc};

use crate::commands::{open_for_writing, print_json};
use crate::human;

#[derive(clap::Args)]
pub struct Args {
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(path: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let store = open_for_writing(path)?;
    let plan = plan_gc(&store)?;
    if !args.json {
        println!(
            "gc plan: {} unreferenced chunks, {} raw, {} stored to free",
            plan.chunks.len(),
            human::bytes(plan.raw_bytes),
            human::bytes(plan.stored_bytes)
        );
    }
    if args.dry_run {
        if args.json {
            print_json(&serde_json::json!({ "plan": plan }))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = execute_gc(&store, &plan)?;
    if args.json {
        print_json(&serde_json::json!({ "plan": plan, "report": report }))?;
    } else {
        println!(
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
