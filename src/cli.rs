//! The command line, declared with clap. Each verb's arguments live with
//! the verb in `commands/`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands::{
    capture, export, extract, gc, handoff, import, init, ls, mount, pull, push, record, rm, stats,
    status, verify,
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
    /// The store directory, for the verbs that use one (also accepted after
    /// the verb; default /var/lib/yolo-store).
    #[arg(long, env = "YOLO_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// `--store`, given to the verbs that use a store (and only those, so it
/// appears only in their help).
#[derive(clap::Args)]
pub struct StoreArg {
    /// The store directory (a RocksDB database, created private to its
    /// owner) [env: YOLO_STORE] [default: /var/lib/yolo-store].
    #[arg(long = "store", value_name = "DIR")]
    store: Option<PathBuf>,
}

impl StoreArg {
    /// The store to use: `--store` after the verb, else before it (or
    /// YOLO_STORE), else the default.
    pub fn path(&self, before_verb: Option<&PathBuf>) -> PathBuf {
        self.store
            .clone()
            .or_else(|| before_verb.cloned())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE))
    }
}

/// A verb's own arguments, plus `--store`.
#[derive(clap::Args)]
pub struct WithStore<A: clap::Args> {
    #[command(flatten)]
    pub store: StoreArg,
    #[command(flatten)]
    pub args: A,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a store with chosen chunking (import creates one with defaults).
    Init(WithStore<init::Args>),
    /// Build a boot image from a VMI file and a read trace, without FUSE.
    Capture(capture::Args),
    /// Add boot images to the store, deduplicated against what it holds.
    Import(WithStore<import::Args>),
    /// List the VMIs with a boot image, with their sizes and sharing.
    Ls(WithStore<ls::Args>),
    /// Store totals: logical and stored bytes, dedup and compression ratios.
    Stats(WithStore<stats::Args>),
    /// Write a VMI's boot image back out as a .yolo file.
    Export(WithStore<export::Args>),
    /// Write a sparse copy of a VMI holding only its recorded blocks.
    Extract(WithStore<extract::Args>),
    /// Remove boot images (their chunks are freed by gc).
    Rm(WithStore<rm::Args>),
    /// Delete chunks no boot image references, after printing the plan.
    Gc(WithStore<gc::Args>),
    /// Upload boot images to a remote (S3, Ceph radosgw): only missing chunks.
    Push(WithStore<push::Args>),
    /// Download boot images from a remote: only chunks this store lacks.
    Pull(WithStore<pull::Args>),
    /// Re-hash every chunk and check every reference and refcount.
    Verify(WithStore<verify::Args>),
    /// Serve a directory of VMIs through FUSE, boot-image blocks from the store.
    Mount(WithStore<mount::Args>),
    /// Mount a directory of VMIs pass-through and record a boot image of
    /// every file read, written on unmount.
    Record(record::Args),
    /// Print the counters of a running mount.
    Status(status::Args),
    /// Switch a running QEMU's backing file from the mount to the plain
    /// file (after boot, the VM no longer needs its boot image).
    Handoff(handoff::Args),
}
