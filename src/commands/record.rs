use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use yolo_store_core::Recorder;

use crate::commands::mount::FuseArgs;
use crate::fuse::{check_mount_paths, run_mount, Record};
use crate::human;

#[derive(clap::Args)]
pub struct Args {
    /// The directory holding the VMI files to record reads of.
    #[arg(long)]
    images: PathBuf,
    /// Where to mount: boot a VM with its backing file under it.
    mountpoint: PathBuf,
    /// Where to write one NAME.yolo per file that was read, on unmount.
    #[arg(short, long)]
    output: PathBuf,
    /// Block size of the boot images.
    #[arg(long, default_value_t = 4096)]
    block_size: u32,
    #[command(flatten)]
    fuse: FuseArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    yolo_store_core::validate_block_size(args.block_size)?;
    let images = check_mount_paths(&args.images, &args.mountpoint)?;
    let recorder = Arc::new(
        Recorder::new(&images).with_context(|| format!("images directory {}", images.display()))?,
    );
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let root = recorder.images_dir().to_path_buf();
    run_mount(
        Arc::new(Record(recorder.clone())),
        root,
        &args.mountpoint,
        &args.fuse.options(),
    )?;
    for (name, reads, bytes) in recorder.summary() {
        eprintln!("yolo-store: {name}: {reads} reads, {}", human::bytes(bytes));
    }
    let written = recorder.write_boot_images(&args.output, args.block_size)?;
    for path in &written {
        outln!("{}", path.display());
    }
    if written.is_empty() {
        eprintln!("yolo-store: no file was read; no boot image written");
    }
    Ok(ExitCode::SUCCESS)
}
