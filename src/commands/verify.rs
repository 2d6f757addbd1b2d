use std::path::{Path, PathBuf};
use std::process::ExitCode;

use yolo_store_core::{repair, verify, VerifyReport};

use crate::commands::{open_for_reading, open_for_writing, print_json};
use crate::human;

#[derive(clap::Args)]
pub struct Args {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Rebuild corrupt or missing chunks, and the chunks of damaged packs,
    /// from the VMI files under --images whose identity still matches their
    /// boot image; set wrong refcounts from the manifests; then verify again.
    #[arg(long, requires = "images")]
    repair: bool,
    /// The directory of VMI files (as given to `mount`).
    #[arg(long)]
    images: Option<PathBuf>,
}

/// Exit 0 when the store is consistent, 1 when a problem was found (and,
/// with --repair, is still there).
pub fn run(path: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let report = if args.repair {
        let store = open_for_writing(path)?;
        let before = verify(&store)?;
        match &args.images {
            Some(images) if !before.is_clean() => {
                let repaired = repair(&store, images, &before)?;
                for (chunk, vmi) in &repaired.repaired {
                    eprintln!("repaired chunk {chunk} from {vmi}");
                }
                for (chunk, why) in &repaired.unrepaired {
                    eprintln!("could not repair chunk {chunk}: {why}");
                }
                for chunk in &repaired.dropped {
                    eprintln!("dropped chunk {chunk} of a damaged pack: no boot image uses it");
                }
                for (chunk, pack) in &repaired.relocated {
                    eprintln!("repaired the refs record of chunk {chunk}: its bytes are intact in pack {pack}");
                }
                if repaired.numbers_rewritten > 0 {
                    eprintln!(
                        "rewrote {} chunk number records from the refs records",
                        repaired.numbers_rewritten
                    );
                }
                for (chunk, recorded, actual) in &repaired.refcounts_fixed {
                    eprintln!("set the refcount of chunk {chunk} from {recorded} to {actual}");
                }
                verify(&store)?
            }
            _ => before,
        }
    } else {
        verify(&open_for_reading(path)?)?
    };
    print_report(&report, args.json)?;
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_report(report: &VerifyReport, json: bool) -> anyhow::Result<()> {
    if json {
        print_json(&report)?;
    } else {
        for problem in &report.problems {
            outln!("PROBLEM: {problem}");
        }
        outln!(
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
    Ok(())
}
