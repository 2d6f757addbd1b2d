//! One open of a VMI file ([`OpenImage`]) and the per-file policy the
//! server keeps across opens ([`Sessions`]): how the kernel may cache the
//! file's pages, whether its boot image is preloaded (once), and what became
//! of opens handed to the kernel. The FUSE adapter only translates these
//! decisions into open flags.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::id::ManifestHash;
use crate::latency::Latency;
use crate::learn::Learner;
use crate::manifest::ManifestIndex;
use crate::store::lock;
use crate::trust::FileVersion;

use super::WarnOnce;

/// An open VMI file: the file itself, and its boot image when one is
/// stored and still matches the file.
pub struct OpenImage {
    pub name: String,
    pub(super) file: File,
    pub(super) size: u64,
    pub(super) version: FileVersion,
    /// The boot image, and the hash of its manifest (computed once, at
    /// open).
    pub(super) index: Option<(Arc<ManifestIndex>, ManifestHash)>,
    /// The learner this open's reads are recorded for, told when it closes.
    pub(super) learner: Option<Arc<Learner>>,
    /// Where this file's read latencies are counted besides the total.
    pub(super) latency: Arc<Latency>,
    /// The daemon has nothing to add to this file's reads: it has no boot
    /// image, or one its blocks differ from. Not while a check is pending:
    /// the boot image may serve from the next open.
    pub(super) plain: bool,
}

impl Drop for OpenImage {
    fn drop(&mut self) {
        if let Some(learner) = &self.learner {
            learner.leave(&self.name, self.version);
        }
    }
}

impl OpenImage {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether this open's reads are recorded (`mount --learn`).
    pub fn is_learning(&self) -> bool {
        self.learner.is_some()
    }

    /// Whether reads of this file are served from a boot image.
    pub fn has_boot_image(&self) -> bool {
        self.index.is_some()
    }

    /// The boot image this file is served with, if any.
    pub fn boot_image(&self) -> Option<&Arc<ManifestIndex>> {
        self.index.as_ref().map(|(index, _)| index)
    }

    /// What identifies this version of the file without reading it.
    pub fn version(&self) -> FileVersion {
        self.version
    }

    /// The file itself, as opened (and checked to be regular) at open.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// When boot images are loaded into the chunk cache ahead of the reads
/// (`mount --preload`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Preload {
    /// At the first open of a file served with a boot image: the VM's reads
    /// then find the chunks loaded ahead of them in recorded order.
    #[default]
    OnOpen,
    /// Every boot image as soon as it is checked against its file (at
    /// start, and as the remote or learning adds them), and at open.
    All,
    /// Never: chunks are loaded as reads miss.
    Never,
}

/// How the kernel may cache a served file's pages, decided at each open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageCache {
    /// No page cache and no read-ahead: every read reaches the server as the
    /// reader made it. For files served with a boot image: the mount's
    /// read-ahead would widen each boot read to up to `--read-ahead-kb`, and
    /// the part outside the boot image would come from the (slow) file. The
    /// file's own filesystem still reads ahead for the reads that do fall
    /// through to it, so sequential reads keep their speed.
    Direct,
    /// Buffered, with the mount's read-ahead. `keep`: the pages cached by
    /// earlier opens are still right (same file version, same boot image
    /// state), so a second reader gets them without a round trip.
    Buffered { keep: bool },
    /// The kernel reads the file itself (FUSE passthrough), and no read
    /// reaches the server: for a file the server would serve byte for byte
    /// from itself anyway (no boot image, or one that does not match).
    /// Where the kernel refuses passthrough, buffered with `keep`. Only
    /// when the server was asked for passthrough.
    Passthrough { keep: bool },
}

/// What became of an open that could be handed to the kernel, as the mount
/// reports it back (counted in [`super::ServeStats`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PassthroughOutcome {
    /// Reads go from the kernel to the file, none to the server.
    Opened,
    /// A file the server would serve (a boot image, or a check pending)
    /// opened by passthrough all the same: the kernel allows no other open
    /// of a file while a passthrough open of it lives.
    Held,
    /// Served by the server instead, for this reason (logged once per
    /// reason).
    Refused(String),
    /// An open that was passed through (`Opened` or `Held`) was released.
    Closed,
}

/// What the server remembers of each file name across its opens.
pub(super) struct Sessions {
    passthrough: bool,
    preload: Preload,
    /// The version last opened and whether it had a boot image: what
    /// decides whether the kernel's pages are kept.
    opened: Mutex<HashMap<String, (FileVersion, bool)>>,
    /// Boot images preloaded: You Only Load Once, even when a VM opens its
    /// backing file several times.
    preloaded: Mutex<HashMap<String, ManifestHash>>,
    pub(super) counters: PassthroughCounters,
}

#[derive(Default)]
pub(super) struct PassthroughCounters {
    pub(super) opens: AtomicU64,
    pub(super) held: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) open_now: AtomicU64,
}

impl Sessions {
    pub(super) fn new(preload: Preload, passthrough: bool) -> Self {
        Sessions {
            passthrough,
            preload,
            opened: Mutex::new(HashMap::new()),
            preloaded: Mutex::new(HashMap::new()),
            counters: PassthroughCounters::default(),
        }
    }

    pub(super) fn passthrough(&self) -> bool {
        self.passthrough
    }

    pub(super) fn preload(&self) -> Preload {
        self.preload
    }

    /// How the kernel may cache `image`'s pages for the open that made it.
    /// A file served with a boot image gets direct I/O; one the server has
    /// nothing to add to is passed through to the kernel; any other
    /// (a check pending) is buffered. Buffered opens keep the pages of an
    /// earlier open only if the file and its boot image state are those of
    /// that open.
    ///
    /// A pending check is not passed through: the kernel holds every open
    /// of a file to passthrough while one passthrough open of it lives, so
    /// a VM that opened its backing file then would never get the boot
    /// image that the check is about to allow.
    pub(super) fn page_cache(&self, image: &OpenImage) -> PageCache {
        let state = (image.version, image.has_boot_image());
        let previous = lock(&self.opened).insert(image.name.clone(), state);
        let keep = previous == Some(state);
        // A learned boot must see every read, as `record` does: cached
        // pages and read-ahead would hide some and add others.
        if image.has_boot_image() || image.is_learning() {
            PageCache::Direct
        } else if image.plain && self.passthrough {
            PageCache::Passthrough { keep }
        } else {
            PageCache::Buffered { keep }
        }
    }

    /// Whether `image`'s boot image is to be loaded now: the first open
    /// of this file with this boot image, when opens preload at all.
    pub(super) fn first_preload(&self, image: &OpenImage) -> bool {
        let Some((_, hash)) = &image.index else {
            return false;
        };
        self.preload != Preload::Never
            && lock(&self.preloaded).insert(image.name.clone(), *hash) != Some(*hash)
    }

    /// Forgets that `name`'s boot image was preloaded, so the next open
    /// loads it again (a remote one that could not be stored yet).
    pub(super) fn preload_again(&self, name: &str) {
        lock(&self.preloaded).remove(name);
    }

    /// Counts what the mount did with an open that [`Self::page_cache`]
    /// or the kernel's rules made a passthrough candidate; a refusal is
    /// logged once per reason.
    pub(super) fn passthrough_outcome(
        &self,
        image: &OpenImage,
        outcome: PassthroughOutcome,
        warned: &WarnOnce,
    ) {
        let c = &self.counters;
        match outcome {
            PassthroughOutcome::Opened => {
                c.opens.fetch_add(1, Ordering::Relaxed);
                c.open_now.fetch_add(1, Ordering::Relaxed);
            }
            PassthroughOutcome::Held => {
                c.opens.fetch_add(1, Ordering::Relaxed);
                c.held.fetch_add(1, Ordering::Relaxed);
                c.open_now.fetch_add(1, Ordering::Relaxed);
            }
            PassthroughOutcome::Closed => {
                let _ = c
                    .open_now
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            }
            PassthroughOutcome::Refused(why) => {
                c.refused.fetch_add(1, Ordering::Relaxed);
                if warned.first(&format!("\0passthrough\0{why}")) {
                    eprintln!(
                        "yolo-store: note: FUSE passthrough refused ({why}), first for {}; \
                         such files are served by the daemon (counted in passthrough_refused)",
                        image.name
                    );
                }
            }
        }
    }
}
