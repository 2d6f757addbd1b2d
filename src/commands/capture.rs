use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use yolo_store_core::{open_regular, parse_trace, write_boot_image, CaptureSource};

use crate::commands::{check_json_output, print_json, summary};

#[derive(clap::Args)]
pub struct Args {
    /// Read trace: `OFFSET LENGTH` per line in time order, `#` comments.
    #[arg(long)]
    trace: PathBuf,
    /// The VMI file the trace was recorded on (a regular file).
    file: PathBuf,
    /// Where to write the boot image: a new or regular file (replaced
    /// atomically, with FILE's permissions), or - for standard output.
    #[arg(short, long)]
    output: PathBuf,
    /// Name of the file in the boot image (default: FILE's file name).
    #[arg(long)]
    name: Option<String>,
    /// Block size of the boot image, in bytes (a power of two).
    #[arg(long, default_value_t = 4096)]
    block_size: u32,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    check_json_output(args.json, &args.output)?;
    yolo_store_core::check_output(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    yolo_store_core::validate_block_size(args.block_size)?;
    let trace = File::open(&args.trace)
        .with_context(|| format!("opening trace {}", args.trace.display()))?;
    let reads = parse_trace(BufReader::new(trace))
        .with_context(|| format!("reading trace {}", args.trace.display()))?;
    let name = match args.name {
        Some(name) => name,
        None => args
            .file
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .with_context(|| {
                format!(
                    "{} has no UTF-8 file name; pass --name",
                    args.file.display()
                )
            })?,
    };
    let file = open_regular(&args.file)?;
    let source = CaptureSource::from_reads(file, &args.file, &name, &reads, args.block_size)
        .with_context(|| format!("capturing {}", args.file.display()))?;
    write_boot_image(&args.output, args.block_size, std::slice::from_ref(&source))
        .with_context(|| format!("writing {}", args.output.display()))?;
    if args.json {
        print_json(&serde_json::json!({
            "name": name,
            "reads": reads.len(),
            "blocks": source.header.blocks.len(),
            "block_size": args.block_size,
            "output": args.output,
        }))?;
    } else {
        summary(
            &args.output,
            &format!(
                "captured {name}: {} reads, {} blocks of {} bytes -> {}",
                reads.len(),
                source.header.blocks.len(),
                args.block_size,
                args.output.display()
            ),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
