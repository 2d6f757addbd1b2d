use std::path::Path;
use std::process::ExitCode;

use crate::commands::{open_for_reading, print_json};
use crate::human;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
}

/// Exit 0 when the store is consistent, 1 when a problem was found.
pub fn run(path: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let store = open_for_reading(path)?;
    let report = yolo_store_core::verify(&store)?;
    if args.json {
        print_json(&report)?;
    } else {
        for problem in &report.problems {
            println!("PROBLEM: {problem}");
        }
        println!(
            "verified {} manifests and {} chunks ({} re-hashed): {}",
            report.manifests,
            report.chunks,
            human::bytes(report.chunk_bytes_hashed),
            if report.is_clean() {
                "clean".to_string()
            } else {
                format!("{} problem(s)", report.problems.len())
            }
        );
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
