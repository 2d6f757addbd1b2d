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
    let (vmis, _) = yolo_store_core::stats(&store)?;
    if args.json {
        print_json(&vmis)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<32} {:>10} {:>10} {:>8} {:>10} {:>10}",
        "VMI", "FILE", "BOOT", "BLOCKS", "UNIQUE", "SHARED"
    )?;
    for v in &vmis {
        writeln!(
            out,
            "{:<32} {:>10} {:>10} {:>8} {:>10} {:>10}",
            v.name,
            human::bytes(v.file_size),
            human::bytes(v.logical_bytes),
            v.blocks,
            human::bytes(v.unique_bytes),
            human::bytes(v.shared_bytes)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
