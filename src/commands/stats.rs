use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use crate::commands::{open_for_reading, print_json};
use crate::human;

#[derive(clap::Args)]
pub struct Args {
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(path: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let store = open_for_reading(path)?;
    let (vmis, totals) = yolo_store_core::stats(&store)?;
    if args.json {
        print_json(&serde_json::json!({ "vmis": vmis, "totals": totals }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    let t = &totals;
    writeln!(out, "store:        {}", path.display())?;
    writeln!(
        out,
        "chunking:     {} (zstd level {})",
        t.chunking, t.zstd_level
    )?;
    writeln!(out, "VMIs:         {}", t.vmis)?;
    writeln!(
        out,
        "logical:      {} (sum of boot images)",
        human::bytes(t.logical_bytes)
    )?;
    writeln!(
        out,
        "unique raw:   {} in {} chunks",
        human::bytes(t.raw_bytes),
        t.chunks
    )?;
    writeln!(
        out,
        "stored:       {} (packs of chunks, after zstd)",
        human::bytes(t.stored_bytes)
    )?;
    writeln!(
        out,
        "on disk:      {} (whole store directory)",
        human::bytes(t.disk_bytes)
    )?;
    // Ratios of nothing are not 0x: say there is nothing to measure.
    let ratio = |r: f64| match t.vmis {
        0 => "- (empty store)".to_string(),
        _ => human::ratio(r),
    };
    writeln!(out, "dedup:        {}", ratio(t.dedup_ratio))?;
    writeln!(out, "compression:  {}", ratio(t.compression_ratio))?;
    writeln!(out, "overall:      {}", ratio(t.total_ratio))?;
    if t.garbage_chunks > 0 {
        writeln!(
            out,
            "garbage:      {} chunks, {} (run gc)",
            t.garbage_chunks,
            human::bytes(t.garbage_bytes)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
