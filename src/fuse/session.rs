//! Mounting, waiting and unmounting: foreground until SIGINT/SIGTERM or an
//! external `umount`, then a clean unmount.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fuser::{MountOption, SessionACL};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::{Backend, ImagesFs};

pub struct MountOptions {
    /// Let users other than the mount's owner use it (`allow_other`).
    pub allow_other: bool,
    /// FUSE receive loops: a slow read from disk blocks only its own loop.
    pub threads: usize,
    /// Read-ahead the daemon asks for, and the bdi limit it sets (KiB).
    pub read_ahead_kb: u32,
    /// Ask the kernel for FUSE passthrough (`mount --passthrough`).
    pub passthrough: bool,
}

/// Checks, before anything is opened or mounted, that `images` is a
/// directory and that the mount cannot serve itself: with the images
/// directory at or under the mountpoint (or the mountpoint inside the images
/// directory), each request waits on the mount it is served by, a deadlock
/// that leaves the daemon unkillable. Returns the canonical images directory.
pub fn check_mount_paths(images: &Path, mountpoint: &Path) -> anyhow::Result<PathBuf> {
    let images = yolo_store_core::images_dir(images)
        .with_context(|| format!("images directory {}", images.display()))?;
    let point = mountpoint
        .canonicalize()
        .with_context(|| format!("mountpoint {}", mountpoint.display()))?;
    if !point.is_dir() {
        anyhow::bail!("mountpoint {} is not a directory", mountpoint.display());
    }
    if images.starts_with(&point) || point.starts_with(&images) {
        anyhow::bail!(
            "the images directory {} and the mountpoint {} overlap (one is inside the other); \
             the mount would serve itself and hang",
            images.display(),
            point.display()
        );
    }
    Ok(images)
}

/// Mounts `backend` over `root` at `mountpoint` and serves until a signal
/// or an external unmount.
pub fn run_mount<B: Backend>(
    backend: Arc<B>,
    root: PathBuf,
    mountpoint: &Path,
    opts: &MountOptions,
) -> anyhow::Result<()> {
    let fs = ImagesFs::new(backend, root, opts.read_ahead_kb * 1024);
    let config = fuse_config(opts);
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    let session = fuser::spawn_mount(fs, mountpoint, &config)
        .with_context(|| format!("mounting on {}", mountpoint.display()))?;
    if let Err(e) = set_bdi_read_ahead(mountpoint, opts.read_ahead_kb) {
        eprintln!("yolo-store: note: could not raise the mount's read_ahead_kb: {e}");
    }
    eprintln!(
        "yolo-store: mounted on {} (Ctrl-C or umount to stop)",
        mountpoint.display()
    );
    let by_signal = loop {
        if session.guard.is_finished() {
            break false;
        }
        if signals.pending().next().is_some() {
            break true;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if by_signal {
        session.umount_and_join().context("unmounting")?;
    } else {
        session.join().context("FUSE session")?;
    }
    Ok(())
}

/// The mount options and request loops of every mount.
pub(super) fn fuse_config(opts: &MountOptions) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::DefaultPermissions,
        MountOption::FSName("yolo-store".into()),
        MountOption::Subtype("yolo".into()),
    ];
    if opts.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    config
}

/// The kernel caps a FUSE mount's buffered read-ahead at its bdi's
/// `read_ahead_kb` (128 KiB by default), whatever `max_readahead` says.
pub(super) fn set_bdi_read_ahead(mountpoint: &Path, kb: u32) -> std::io::Result<()> {
    let dev = std::fs::metadata(mountpoint)?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    std::fs::write(
        format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"),
        kb.to_string(),
    )
}
