use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use yolo_store_core::{Follower, ImageServer};

use crate::fuse::{check_mount_paths, run_mount, MountOptions, Serve};
use crate::human;

#[derive(clap::Args)]
pub struct Args {
    /// The directory holding the VMI files (backing files) to serve.
    #[arg(long)]
    images: PathBuf,
    /// Where to mount: point a VM's qcow2 overlay at MOUNTPOINT/NAME.
    mountpoint: PathBuf,
    /// Bytes of decompressed chunks kept in memory, shared by every VMI
    /// (suffixes K, M, G).
    #[arg(long, default_value = "1G", value_parser = human::parse_size)]
    cache_size: u64,
    /// Which boot images to load into the cache ahead of reads: each one on
    /// its file's first open (`open`), every one at mount time (`all`), or
    /// none.
    #[arg(long, value_enum, default_value_t = Preload::Open)]
    preload: Preload,
    /// Serve every file through the daemon: no FUSE passthrough for files
    /// without a (matching) boot image.
    #[arg(long)]
    no_passthrough: bool,
    #[command(flatten)]
    fuse: FuseArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Preload {
    Open,
    All,
    None,
}

/// Options every mount takes.
#[derive(clap::Args)]
pub struct FuseArgs {
    /// Let users other than the one who mounted use the mount.
    #[arg(long)]
    allow_other: bool,
    /// FUSE request loops: a read that waits on the disk holds only its own.
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// Kernel read-ahead for the mount, in KiB (the bdi default is 128).
    #[arg(long, default_value_t = 1024)]
    read_ahead_kb: u32,
}

impl FuseArgs {
    pub fn options(&self) -> MountOptions {
        MountOptions {
            allow_other: self.allow_other,
            threads: self.threads,
            read_ahead_kb: self.read_ahead_kb,
        }
    }
}

pub fn run(path: &Path, args: Args) -> anyhow::Result<ExitCode> {
    // Everything that can be refused is, before the store is opened.
    let images = check_mount_paths(&args.images, &args.mountpoint)?;
    let cache_bytes = usize::try_from(args.cache_size).context("--cache-size is too large")?;
    let store =
        Follower::open(path).with_context(|| format!("opening store {}", path.display()))?;
    let server = Arc::new(
        ImageServer::new(store, &images, cache_bytes)
            .with_context(|| format!("images directory {}", images.display()))?,
    );
    let backend = Arc::new(Serve::new(
        server.clone(),
        args.preload != Preload::None,
        !args.no_passthrough,
    ));
    let files = backend.verify_all(args.preload == Preload::All)?;
    eprintln!(
        "yolo-store: checking the identity of {files} VMI file(s) with a boot image in the background{}",
        if args.preload == Preload::All { ", then preloading them" } else { "" }
    );
    let root = server.images_dir().to_path_buf();
    let served = run_mount(backend, root, &args.mountpoint, &args.fuse.options());
    served?;
    let stats = server.stats();
    eprintln!(
        "yolo-store: unmounted; {} reads, {} from the store, {} from files, cache {} hits / {} misses, {} chunk failures, {} passthrough opens",
        stats.reads,
        human::bytes(stats.bytes_from_store),
        human::bytes(stats.bytes_from_file),
        stats.cache.hits,
        stats.cache.misses,
        stats.chunk_failures,
        stats.passthrough_opens,
    );
    Ok(ExitCode::SUCCESS)
}
