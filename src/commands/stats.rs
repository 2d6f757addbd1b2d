use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use crate::commands::{open_for_reading, print_json};
use crate::human;

#[derive(clap::Args)]
pub struct Args {
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
    writeln!(out, "dedup:        {}", human::ratio(t.dedup_ratio))?;
    writeln!(out, "compression:  {}", human::ratio(t.compression_ratio))?;
    writeln!(out, "overall:      {}", human::ratio(t.total_ratio))?;
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
