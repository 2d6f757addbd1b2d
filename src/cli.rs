//! The command line, declared with clap. Each verb's arguments live with
//! the verb in `commands/`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands::{
    capture, export, extract, gc, import, init, ls, mount, pull, push, record, rm, stats, status,
    verify,
};

/// Where the store lives unless --store or YOLO_STORE says otherwise: a
/// node's dedicated SSD is usually mounted under /var/lib.
pub const DEFAULT_STORE: &str = "/var/lib/yolo-store";

#[derive(Parser)]
#[command(
    name = "yolo-store",
    version,
    about = "A deduplicated store of VM boot images, served through FUSE"
)]
pub struct Cli {
    /// The store directory (a RocksDB database, created private to its owner).
    #[arg(long, global = true, env = "YOLO_STORE", default_value = DEFAULT_STORE)]
    pub store: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a store with chosen chunking (import creates one with defaults).
    Init(init::Args),
    /// Build a boot image from a VMI file and a read trace, without FUSE.
    Capture(capture::Args),
    /// Add boot images to the store, deduplicated against what it holds.
    Import(import::Args),
    /// List the VMIs with a boot image, with their sizes and sharing.
    Ls(ls::Args),
    /// Store totals: logical and stored bytes, dedup and compression ratios.
    Stats(stats::Args),
    /// Write a VMI's boot image back out as a .yolo file.
    Export(export::Args),
    /// Write a sparse copy of a VMI holding only its recorded blocks.
    Extract(extract::Args),
    /// Remove boot images (their chunks are freed by gc).
    Rm(rm::Args),
    /// Delete chunks no boot image references, after printing the plan.
    Gc(gc::Args),
    /// Upload boot images to a remote (S3, Ceph radosgw): only missing chunks.
    Push(push::Args),
    /// Download boot images from a remote: only chunks this store lacks.
    Pull(pull::Args),
    /// Re-hash every chunk and check every reference and refcount.
    Verify(verify::Args),
    /// Serve a directory of VMIs through FUSE, boot-image blocks from the store.
    Mount(mount::Args),
    /// Mount a directory of VMIs pass-through and record a boot image of
    /// every file read, written on unmount.
    Record(record::Args),
    /// Print the counters of a running mount.
    Status(status::Args),
}
