//! Serving VMI files from the store: the paper's Algorithm 1. A read of
//! `(file, offset, length)` takes every block the file's boot image holds
//! from the chunk cache (loading and checking chunks from the store on a
//! miss) and every other byte from the file itself; a request that spans
//! both is split and stitched. No FUSE types here: the mount adapter calls
//! [`ImageServer::open`] and [`ImageServer::read`].
//!
//! The server never returns bytes that differ from the file: a boot image
//! is used only once the file's recorded blocks have been read back and
//! hash to its chunks ([`crate::trust`]), for that version of the file, and
//! a chunk that fails its BLAKE3 check is replaced by a read of the file.
//! Checks and preloads run on a small pool of their own, never on the
//! threads that answer reads, and never one thread per file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::Serialize;

use crate::cache::{CacheStats, ChunkCache};
use crate::files::{images_dir, metadata_in, open_file_in};
use crate::follower::Follower;
use crate::id::{ChunkId, ManifestHash};
use crate::latency::{Latency, LatencyStats, VmiLatencies};
use crate::learn::{LearnOptions, LearnStats, Learner};
use crate::manifest::{Manifest, ManifestIndex};
use crate::name::validate_name;
use crate::pack::{decode_pack, Pack};
use crate::remote::{Remote, RemoteTier, RemoteTierStats};
use crate::store::lock;
use crate::trust::{blocks_match, now_ns, verified_path, FileVersion, Verified};
use crate::{Error, Result};

// The lazy remote tier's side of the server (`mount --remote`).
#[path = "remote/serve_tier.rs"]
mod serve_tier;

/// An open VMI file: the file itself, and its boot image when one is
/// stored and still matches the file.
pub struct OpenImage {
    pub name: String,
    file: File,
    size: u64,
    version: FileVersion,
    index: Option<Arc<ManifestIndex>>,
    /// The hash of `index`'s manifest, computed once at open.
    index_hash: Option<ManifestHash>,
    /// Whether this open's reads are recorded to learn a boot image.
    learning: bool,
    /// The learner this open joined, told when it closes.
    learner: Option<Arc<Learner>>,
    /// Where this file's read latencies are counted besides the total.
    latency: Arc<Latency>,
    /// The daemon has nothing to add to this file's reads: it has no boot
    /// image, or one its blocks differ from. Not while a check is pending:
    /// the boot image may serve from the next open.
    plain: bool,
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
        self.learning
    }

    /// Whether reads of this file are served from a boot image.
    pub fn has_boot_image(&self) -> bool {
        self.index.is_some()
    }

    /// The boot image this file is served with, if any.
    pub fn boot_image(&self) -> Option<&Arc<ManifestIndex>> {
        self.index.as_ref()
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
    /// Where passthrough is refused, buffered with `keep`.
    Passthrough { keep: bool },
}

/// What became of an open that could be handed to the kernel, as the mount
/// reports it back (counted in [`ServeStats`]).
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

pub struct ImageServer {
    store: Follower,
    images: PathBuf,
    cache: ChunkCache,
    trust: Arc<Mutex<Trust>>,
    /// Checks of new file versions and preloads: bounded, and apart from
    /// rayon's global pool, which reads use to decode packs.
    background: rayon::ThreadPool,
    /// Boot images preloaded, by file name: You Only Load Once, even when
    /// a VM opens its backing file several times.
    preloaded: Mutex<HashMap<String, ManifestHash>>,
    startup_checked: AtomicBool,
    /// Per file name, the version last opened and whether it had a boot
    /// image: what decides whether the kernel's pages are kept.
    opened: Mutex<HashMap<String, (FileVersion, bool)>>,
    warned: Mutex<HashSet<String>>,
    counters: Counters,
    /// Records the boots of files without a usable boot image, with
    /// `--learn`.
    learner: Option<Arc<Learner>>,
    latency_by_vmi: VmiLatencies,
    /// Boot images on the remote but not in the store, fetched as they are
    /// read (`mount --remote`; `remote/tier.rs`).
    remote: Option<Arc<RemoteTier>>,
}

/// What is known of (file version, boot image) pairs.
struct Trust {
    verified: Verified,
    /// Being checked now.
    pending: HashSet<(FileVersion, ManifestHash)>,
    /// Checked, and the blocks differ: served from the file.
    mismatched: HashSet<(FileVersion, ManifestHash)>,
    /// The version of each name last seen: what the kept set is pruned to.
    current: HashMap<String, FileVersion>,
}

enum Checked {
    Matches,
    Differs,
    /// Not known yet (being checked, or to be checked).
    Unknown,
}

/// How many files are checked at once: reading many at a time from one
/// disk is a seek storm on a hard disk.
const BACKGROUND_THREADS: usize = 2;

#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    bytes_from_store: AtomicU64,
    bytes_from_file: AtomicU64,
    chunk_failures: AtomicU64,
    identity_mismatches: AtomicU64,
    unverified_opens: AtomicU64,
    passthrough_opens: AtomicU64,
    passthrough_held: AtomicU64,
    passthrough_refused: AtomicU64,
    passthrough_open_now: AtomicU64,
    preload_total: AtomicU64,
    preload_done: AtomicU64,
    latency: Latency,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ServeStats {
    pub reads: u64,
    pub bytes_from_store: u64,
    pub bytes_from_file: u64,
    pub chunk_failures: u64,
    /// Opens of a file whose recorded blocks differ from its boot image's
    /// (served from the file).
    pub identity_mismatches: u64,
    /// Opens served from the file because the file's blocks were still
    /// being checked against its boot image.
    pub unverified_opens: u64,
    /// Opens whose reads the kernel sends straight to the file (FUSE
    /// passthrough): none of them reaches `reads`.
    pub passthrough_opens: u64,
    /// Of those, opens of a file with a boot image (or a check pending),
    /// passed through because the file was already open that way.
    pub passthrough_held: u64,
    /// Opens that could have been passed through but were served by the
    /// daemon (passthrough not offered, not allowed, or in conflict).
    pub passthrough_refused: u64,
    /// Passthrough opens not released yet.
    pub passthrough_open_now: u64,
    /// (file version, boot image) pairs being checked now.
    pub identities_pending: u64,
    /// (file version, boot image) pairs known to match, kept across
    /// restarts.
    pub boot_images_verified: u64,
    /// Whether the check of every boot image at start has finished.
    pub startup_verification_done: bool,
    pub preload_chunks_total: u64,
    pub preload_chunks_done: u64,
    pub cache: CacheStats,
    /// (upper bound in microseconds, reads) for every non-empty bucket.
    pub latency_us: Vec<(u64, u64)>,
    /// With `--learn`: what became of the recorded boots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learning: Option<LearnStats>,
    /// With `--remote`: the lazy remote tier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteTierStats>,
    /// Microseconds spent in all reads.
    pub latency_us_sum: u64,
    /// The same per VMI, for a bounded set of VMIs; every other file's
    /// reads under [`crate::OTHER_VMIS`].
    pub latency_by_vmi: BTreeMap<String, LatencyStats>,
}

impl ImageServer {
    pub fn new(store: Follower, images: &Path, cache_bytes: usize) -> Result<Self> {
        let images = images_dir(images)?;
        let background = rayon::ThreadPoolBuilder::new()
            .num_threads(BACKGROUND_THREADS)
            .thread_name(|i| format!("yolo-check-{i}"))
            .build()
            .map_err(|e| Error::Spawn {
                what: "background",
                source: std::io::Error::other(e),
            })?;
        let verified = Verified::load(Some(verified_path(store.path())));
        Ok(ImageServer {
            store,
            images,
            cache: ChunkCache::new(cache_bytes),
            trust: Arc::new(Mutex::new(Trust {
                verified,
                pending: HashSet::new(),
                mismatched: HashSet::new(),
                current: HashMap::new(),
            })),
            background,
            preloaded: Mutex::new(HashMap::new()),
            startup_checked: AtomicBool::new(false),
            opened: Mutex::new(HashMap::new()),
            warned: Mutex::new(HashSet::new()),
            counters: Counters::default(),
            learner: None,
            latency_by_vmi: VmiLatencies::default(),
            remote: None,
        })
    }

    /// Learns a boot image from the first boot of every file version that
    /// has none (or one that does not match): see [`Learner`]. A thread
    /// ends recordings, imports them and checks the new boot images, so
    /// the next open of the file is served from the store.
    pub fn learn(mut self, options: LearnOptions, remote: Option<Remote>) -> Result<Arc<Self>> {
        let tick = (options.quiet / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        self.learner = Some(Arc::new(Learner::new(
            self.store.path(),
            &self.images,
            options,
            remote,
        )?));
        let server = Arc::new(self);
        let weak = Arc::downgrade(&server);
        std::thread::Builder::new()
            .name("yolo-learn".into())
            .spawn(move || loop {
                std::thread::sleep(tick);
                let Some(server) = weak.upgrade() else { return };
                let Some(learner) = &server.learner else { return };
                let imported = learner.finish_due();
                if !imported.is_empty() {
                    // Checked now against the store with the new boot
                    // images in it, so the next open serves them.
                    if let Err(e) = server.store.catch_up() {
                        eprintln!("yolo-store: learning: could not catch up with the store: {e}");
                    }
                }
                for name in imported {
                    match server.verify_boot_image(&name) {
                        Ok(true) => learner.ready(1),
                        Ok(false) => eprintln!(
                            "yolo-store: learning: {name}: the learned boot image does not match the file"
                        ),
                        Err(e) => eprintln!("yolo-store: learning: {name}: {e}"),
                    }
                }
            })
            .map_err(|source| Error::Spawn {
                what: "learning",
                source,
            })?;
        Ok(server)
    }

    pub fn images_dir(&self) -> &Path {
        &self.images
    }

    /// Opens file `name` of the images directory. The boot image is looked
    /// up at every open, so one imported while mounted is used from the next
    /// open on; it serves only once this version of the file is known to
    /// hold its blocks. Until then the open is served from the file, and
    /// the check runs in the background: an open never waits for it.
    pub fn open(&self, name: &str) -> Result<OpenImage> {
        let (file, path) = open_image_file(&self.images, name)?;
        // See what `import`, `rm` and `gc` committed since the last open.
        let store = self.store.catch_up().unwrap_or_else(|e| {
            self.warn_once(name, "could not catch up with the store: ", e);
            self.store.current()
        });
        let meta = file.metadata().map_err(|e| Error::io(&path, e))?;
        let version = FileVersion::of(&meta);
        let mut index_hash = None;
        // Learned when there is no boot image, or one known not to match;
        // not while a match is being checked.
        let mut learnable = false;
        let manifest = match self.manifest_of(&store, name) {
            // A view opened while a writer commits may not read what the
            // manifest names: look once more, at the store as it is now.
            Err(e) if !matches!(e, Error::UnknownVmi(_)) => match self.store.catch_up() {
                Ok(now) => self.manifest_of(&now, name),
                Err(_) => Err(e),
            },
            other => other,
        };
        let latency = self.latency_by_vmi.for_file(name, manifest.is_ok());
        let index = match manifest {
            Ok(manifest) => match self.checked(name, version, &manifest) {
                (Checked::Matches, hash) => {
                    index_hash = Some(hash);
                    Some(Arc::new(ManifestIndex::new(manifest)))
                }
                (Checked::Differs, _) => {
                    self.counters
                        .identity_mismatches
                        .fetch_add(1, Ordering::Relaxed);
                    self.warn_once(
                        name,
                        "the file does not hold its boot image's blocks; serving it from the file",
                        "",
                    );
                    learnable = true;
                    None
                }
                (Checked::Unknown, hash) => {
                    self.counters
                        .unverified_opens
                        .fetch_add(1, Ordering::Relaxed);
                    self.check_in_background(name, version, manifest, hash);
                    None
                }
            },
            Err(Error::UnknownVmi(_)) => {
                learnable = true;
                None
            }
            // The store failing must not fail a VM's open: the file holds
            // every byte, so it serves them all.
            Err(e) => {
                self.counters.chunk_failures.fetch_add(1, Ordering::Relaxed);
                self.warn_once(
                    name,
                    "its boot image could not be read, served from the file instead (counted in chunk_failures): ",
                    e,
                );
                None
            }
        };
        let learner = self
            .learner
            .as_ref()
            .filter(|learner| learnable && learner.join(name, version))
            .cloned();
        Ok(OpenImage {
            name: name.to_string(),
            file,
            size: meta.len(),
            version,
            index,
            index_hash,
            learning: learner.is_some(),
            // A learned open needs its reads, so it is not passed through.
            plain: learnable && learner.is_none(),
            learner,
            latency,
        })
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
    pub fn page_cache(&self, image: &OpenImage) -> PageCache {
        let state = (image.version, image.has_boot_image());
        let previous = lock(&self.opened).insert(image.name.clone(), state);
        let keep = previous == Some(state);
        // A learned boot must see every read, as `record` does: cached
        // pages and read-ahead would hide some and add others.
        if image.has_boot_image() || image.learning {
            PageCache::Direct
        } else if image.plain {
            PageCache::Passthrough { keep }
        } else {
            PageCache::Buffered { keep }
        }
    }

    /// Counts what the mount did with an open that [`Self::page_cache`]
    /// or the kernel's rules made a passthrough candidate; a refusal is
    /// logged once per reason.
    pub fn passthrough_outcome(&self, image: &OpenImage, outcome: PassthroughOutcome) {
        let c = &self.counters;
        match outcome {
            PassthroughOutcome::Opened => {
                c.passthrough_opens.fetch_add(1, Ordering::Relaxed);
                c.passthrough_open_now.fetch_add(1, Ordering::Relaxed);
            }
            PassthroughOutcome::Held => {
                c.passthrough_opens.fetch_add(1, Ordering::Relaxed);
                c.passthrough_held.fetch_add(1, Ordering::Relaxed);
                c.passthrough_open_now.fetch_add(1, Ordering::Relaxed);
            }
            PassthroughOutcome::Closed => {
                let _ = c.passthrough_open_now.fetch_update(
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                    |n| n.checked_sub(1),
                );
            }
            PassthroughOutcome::Refused(why) => {
                c.passthrough_refused.fetch_add(1, Ordering::Relaxed);
                if lock(&self.warned).insert(format!("\0passthrough\0{why}")) {
                    eprintln!(
                        "yolo-store: note: FUSE passthrough refused ({why}), first for {}; \
                         such files are served by the daemon (counted in passthrough_refused)",
                        image.name
                    );
                }
            }
        }
    }

    /// What is known of `manifest` against this version of file `name`.
    /// Also returns the manifest's hash, so callers compute it once (it
    /// encodes and hashes the whole manifest).
    fn checked(
        &self,
        name: &str,
        version: FileVersion,
        manifest: &Manifest,
    ) -> (Checked, ManifestHash) {
        let hash = manifest.hash();
        if version.size() != manifest.file_size {
            return (Checked::Differs, hash);
        }
        let mut trust = lock(&self.trust);
        trust.current.insert(name.to_string(), version);
        let checked = if trust.verified.contains(version, hash) {
            Checked::Matches
        } else if trust.mismatched.contains(&(version, hash)) {
            Checked::Differs
        } else {
            Checked::Unknown
        };
        (checked, hash)
    }

    /// Queues a check of `manifest` against file `name` at `version`,
    /// unless one is queued or running.
    fn check_in_background(
        &self,
        name: &str,
        version: FileVersion,
        manifest: Manifest,
        hash: ManifestHash,
    ) {
        if !lock(&self.trust).pending.insert((version, hash)) {
            return;
        }
        let (trust, images, name) = (self.trust.clone(), self.images.clone(), name.to_string());
        self.background.spawn(move || {
            let _ = check(&trust, &images, &name, version, &manifest, hash);
            let _ = save(&trust);
        });
    }

    /// Checks file `name` against its boot image now, unless this version
    /// is known already: a mount does this for every VMI at start, so VMs
    /// find them trusted. True when the boot image will serve.
    pub fn verify_boot_image(&self, name: &str) -> Result<bool> {
        let (matches, checked_now) = self.check_now(name)?;
        if checked_now {
            save(&self.trust)?;
        }
        Ok(matches)
    }

    /// [`Self::verify_boot_image`] without keeping the result on disk:
    /// whether the boot image serves, and whether the file was read for it.
    fn check_now(&self, name: &str) -> Result<(bool, bool)> {
        let manifest = match self.manifest_of(&self.store.current(), name) {
            Ok(manifest) => manifest,
            Err(Error::UnknownVmi(_)) => return Ok((false, false)),
            Err(e) => return Err(e),
        };
        let (file, path) = open_image_file(&self.images, name)?;
        let version = FileVersion::of(&file.metadata().map_err(|e| Error::io(&path, e))?);
        drop(file);
        match self.checked(name, version, &manifest) {
            (Checked::Matches, _) => Ok((true, false)),
            (Checked::Differs, _) => Ok((false, false)),
            (Checked::Unknown, hash) => {
                lock(&self.trust).pending.insert((version, hash));
                let matches = check(&self.trust, &self.images, name, version, &manifest, hash)?;
                Ok((matches, true))
            }
        }
    }

    /// Checks every boot image in the store against its file, one file at
    /// a time, in a thread of its own; with `preload`, loads each into the
    /// cache once checked. Keeps what it learned for the next start.
    pub fn verify_all_in_background(self: &Arc<Self>, preload: bool) -> Result<usize> {
        // Only regular files: a FIFO under a VMI's name is no VMI.
        let names: Vec<String> = self
            .store
            .current()
            .names()?
            .into_iter()
            .filter(|name| metadata_in(&self.images, name).is_ok_and(|m| m.is_file()))
            .collect();
        let count = names.len();
        let server = self.clone();
        std::thread::Builder::new()
            .name("yolo-startup".into())
            .spawn(move || {
                // What was learned is kept every few seconds, so a restart
                // part way does not start over.
                let mut saved = Instant::now();
                for name in names {
                    let result = server.check_now(&name).and_then(|(ok, checked_now)| {
                        if checked_now && saved.elapsed().as_secs() >= 5 {
                            save(&server.trust)?;
                            saved = Instant::now();
                        }
                        if ok && preload {
                            server.preload_once(&server.open(&name)?);
                        }
                        Ok(())
                    });
                    if let Err(e) = result {
                        eprintln!("yolo-store: {name}: {e}");
                    }
                }
                if let Err(e) = save(&server.trust) {
                    eprintln!("yolo-store: keeping verified boot images: {e}");
                }
                server.startup_checked.store(true, Ordering::Relaxed);
            })
            .map_err(|source| Error::Spawn {
                what: "startup verification",
                source,
            })?;
        Ok(count)
    }

    /// Warns about file `name` once per kind of trouble (`what`), however
    /// many times it happens (a damaged pack fails many chunks).
    fn warn_once(&self, name: &str, what: &str, detail: impl std::fmt::Display) {
        if lock(&self.warned).insert(format!("{name}\0{what}")) {
            eprintln!("yolo-store: warning: {name}: {what}{detail}");
        }
    }

    /// Reads up to `size` bytes at `offset`: boot-image blocks from the
    /// cache, everything else from the file. Short only at end of file.
    ///
    /// The file's size is checked at every read (one `fstat`): a file
    /// truncated or grown under an open descriptor no longer matches its
    /// boot image, so it is then read from the file alone, up to its
    /// current end.
    pub fn read(&self, image: &OpenImage, offset: u64, size: usize) -> std::io::Result<Vec<u8>> {
        let started = Instant::now();
        let file_size = image.file.metadata()?.len();
        let end = offset.saturating_add(size as u64).min(file_size);
        let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
        let mut from_file: Vec<Range<u64>> = Vec::new();
        match &image.index {
            Some(index) if file_size == image.size => {
                self.fill_from_store(image, index, offset, &mut buf, &mut from_file)
            }
            _ if buf.is_empty() => {}
            _ => from_file.push(offset..end),
        }
        for range in &from_file {
            let dst = &mut buf[(range.start - offset) as usize..(range.end - offset) as usize];
            image.file.read_exact_at(dst, range.start)?;
            self.counters
                .bytes_from_file
                .fetch_add(dst.len() as u64, Ordering::Relaxed);
        }
        if image.learning {
            if let Some(learner) = &self.learner {
                learner.record(&image.name, image.version, offset, buf.len() as u64);
            }
        }
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        let elapsed = started.elapsed();
        self.counters.latency.record(elapsed);
        image.latency.record(elapsed);
        Ok(buf)
    }

    /// Copies the boot image's blocks into `buf` (which holds the file from
    /// `offset`) and lists the ranges left for the file, merged.
    fn fill_from_store(
        &self,
        image: &OpenImage,
        index: &ManifestIndex,
        offset: u64,
        buf: &mut [u8],
        from_file: &mut Vec<Range<u64>>,
    ) {
        let end = offset + buf.len() as u64;
        for (piece, stream) in index.plan(offset..end) {
            let served = stream.is_some_and(|stream| {
                let dst = &mut buf[(piece.start - offset) as usize..(piece.end - offset) as usize];
                self.copy_stream(image, index, stream, dst)
            });
            if served {
                self.counters
                    .bytes_from_store
                    .fetch_add(piece.end - piece.start, Ordering::Relaxed);
            } else {
                match from_file.last_mut() {
                    Some(last) if last.end == piece.start => last.end = piece.end,
                    _ => from_file.push(piece),
                }
            }
        }
    }

    /// Copies `stream` (a range of the block stream) into `dst` from the
    /// chunks that hold it. False if a chunk is missing or corrupt.
    fn copy_stream(
        &self,
        image: &OpenImage,
        index: &ManifestIndex,
        stream: Range<u64>,
        dst: &mut [u8],
    ) -> bool {
        let mut written = 0;
        for (i, chunk_range) in index.chunks_for(stream.clone()) {
            let id = index.manifest().chunks[i].id;
            let data = match self.chunk(&id) {
                Ok(data) => data,
                Err(Error::Remote { .. }) => {
                    // Down or slow: the file has the same bytes (checked).
                    if let Some(tier) = &self.remote {
                        tier.fell_back(dst.len() as u64);
                    }
                    return false;
                }
                Err(e) => {
                    self.counters.chunk_failures.fetch_add(1, Ordering::Relaxed);
                    self.warn_once(
                        &image.name,
                        "chunks fail, served from the file instead (counted in chunk_failures); first: ",
                        e,
                    );
                    return false;
                }
            };
            let from = stream.start.max(chunk_range.start) - chunk_range.start;
            let to = stream.end.min(chunk_range.end) - chunk_range.start;
            let src = data.get(from as usize..to as usize);
            let Some(src) = src else { return false };
            dst[written..written + src.len()].copy_from_slice(src);
            written += src.len();
        }
        written == dst.len()
    }

    /// A chunk from the cache, or from the store (checked against its id).
    fn chunk(&self, id: &ChunkId) -> Result<Arc<[u8]>> {
        if let Some(data) = self.cache.get(id) {
            return Ok(data);
        }
        let (offset, pack) = match self.load_pack_of(id) {
            Err(Error::MissingChunk { .. }) if self.remote.is_some() => {
                return self.remote_chunk(id)
            }
            other => other?,
        };
        let corrupt = |why: String| Error::CorruptChunk { id: *id, why };
        match self.cache_pack(&pack, Some(offset)) {
            Some((found, data)) if found == *id => Ok(data),
            Some(_) => Err(corrupt("content does not match its BLAKE3 id".into())),
            None => Err(corrupt(format!("its pack has no chunk at offset {offset}"))),
        }
    }

    /// The pack that holds chunk `id`, and where. A chunk that is missing
    /// or unreadable may have moved under a compaction or a gc since we
    /// last caught up with the writer: catch up and try once more. A
    /// corrupt one is final.
    fn load_pack_of(&self, id: &ChunkId) -> Result<(u32, Pack)> {
        let found = match self.store.current().pack_of(id) {
            Err(Error::MissingChunk { .. } | Error::Db(_)) => self.store.catch_up()?.pack_of(id),
            other => other,
        };
        found.map(|(info, pack)| (info.offset, pack))
    }

    /// Puts every chunk of a pack just read in the cache: they were first
    /// used together, so the neighbours of the one asked for are likely
    /// next. Each is named by the BLAKE3 of its own bytes, so a damaged one
    /// lands under an id nothing asks for. Returns the chunk at raw
    /// `offset`, with the id its bytes hash to.
    fn cache_pack(&self, pack: &Pack, offset: Option<u32>) -> Option<(ChunkId, Arc<[u8]>)> {
        let mut at_offset = None;
        for (id, at, raw) in pack.identified() {
            let data: Arc<[u8]> = raw.into();
            if Some(at) == offset {
                at_offset = Some((id, data.clone()));
            }
            if !self.cache.contains(&id) {
                self.cache.insert(id, data);
            }
        }
        at_offset
    }

    /// Starts loading `image`'s boot image into the cache on the
    /// background pool, unless that boot image was loaded already.
    pub fn preload_once(self: &Arc<Self>, image: &OpenImage) {
        let (Some(index), Some(hash)) = (image.boot_image(), image.index_hash) else {
            return;
        };
        let first = lock(&self.preloaded).insert(image.name.clone(), hash) != Some(hash);
        if first {
            let (server, index) = (self.clone(), index.clone());
            let name = image.name.clone();
            self.background.spawn(move || {
                server.preload(&index);
                // A remote boot image not stored yet (the remote failed
                // part way, or another writer held the store) is preloaded
                // again at the next open: what was fetched is kept.
                if !server.store_remote(&name) {
                    lock(&server.preloaded).remove(&name);
                }
            });
        }
    }

    /// You Only Load Once: loads a boot image's chunks into the cache in
    /// recorded (first-access) order, decompressing in parallel.
    pub fn preload(&self, index: &ManifestIndex) {
        let ids: Vec<ChunkId> = index
            .manifest()
            .distinct_chunks()
            .iter()
            .map(|c| c.id)
            .collect();
        self.counters
            .preload_total
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        // In recorded order, a window at a time, so the first blocks the VM
        // needs are loaded first. Each window reads the packs that hold its
        // chunks in one MultiGet (blob reads sorted by offset), then decodes
        // and checks them on every core.
        let mut packs_done = HashSet::new();
        for window in ids.chunks(256) {
            let wanted: Vec<ChunkId> = window
                .iter()
                .filter(|id| !self.cache.contains(id))
                .copied()
                .collect();
            // A missing chunk is left to the read path, which counts it and
            // serves the file.
            // Where the chunks are and the packs themselves, from one view.
            let store = self.store.current();
            let infos = store.chunk_infos_of(wanted.clone()).unwrap_or_default();
            let mut packs = Vec::new();
            for info in wanted.iter().filter_map(|id| infos.get(id)) {
                if packs_done.insert(info.pack) {
                    packs.push(info.pack);
                }
            }
            let max_chunk = store.config().chunking.max_len();
            if let Ok(values) = store.read_encoded_packs(&packs) {
                values.into_par_iter().flatten().for_each(|value| {
                    // A corrupt pack or chunk is left to the read path too.
                    if let Ok(pack) = decode_pack(&value, max_chunk) {
                        self.cache_pack(&pack, None);
                    }
                });
            }
            // What the store lacks comes from the remote, in the same order.
            if let Some(tier) = &self.remote {
                let absent: Vec<ChunkId> = wanted
                    .iter()
                    .filter(|id| !infos.contains_key(id))
                    .copied()
                    .collect();
                if !absent.is_empty() {
                    for (id, data) in tier.fetch(&absent) {
                        self.cache.insert(id, data);
                    }
                }
            }
            self.counters
                .preload_done
                .fetch_add(window.len() as u64, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> ServeStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (identities_pending, boot_images_verified) = {
            let trust = lock(&self.trust);
            (trust.pending.len() as u64, trust.verified.len() as u64)
        };
        let latency = c.latency.snapshot();
        ServeStats {
            reads: get(&c.reads),
            bytes_from_store: get(&c.bytes_from_store),
            bytes_from_file: get(&c.bytes_from_file),
            chunk_failures: get(&c.chunk_failures),
            identity_mismatches: get(&c.identity_mismatches),
            unverified_opens: get(&c.unverified_opens),
            passthrough_opens: get(&c.passthrough_opens),
            passthrough_held: get(&c.passthrough_held),
            passthrough_refused: get(&c.passthrough_refused),
            passthrough_open_now: get(&c.passthrough_open_now),
            identities_pending,
            boot_images_verified,
            startup_verification_done: self.startup_checked.load(Ordering::Relaxed),
            preload_chunks_total: get(&c.preload_total),
            preload_chunks_done: get(&c.preload_done),
            cache: self.cache.stats(),
            latency_us: latency.buckets,
            latency_us_sum: latency.sum_us,
            latency_by_vmi: self.latency_by_vmi.snapshot(),
            learning: self.learner.as_deref().map(Learner::stats),
            remote: self.remote.as_deref().map(RemoteTier::stats),
        }
    }
}

/// Reads file `name`'s recorded blocks and records whether they are the
/// boot image's, unless the file changed from `version` meanwhile. The
/// caller has put the pair in `pending`; it leaves there whatever happens.
fn check(
    trust: &Mutex<Trust>,
    images: &Path,
    name: &str,
    version: FileVersion,
    manifest: &Manifest,
    hash: ManifestHash,
) -> Result<bool> {
    let checked_at = now_ns();
    let result = open_image_file(images, name).and_then(|(file, path)| {
        let version_now = || -> Result<FileVersion> {
            Ok(FileVersion::of(
                &file.metadata().map_err(|e| Error::io(&path, e))?,
            ))
        };
        if version_now()? != version {
            return Ok(None);
        }
        let matches = blocks_match(&file, manifest)?;
        // A change while we read voids what we read.
        Ok((version_now()? == version).then_some(matches))
    });
    let mut trust = lock(trust);
    trust.pending.remove(&(version, hash));
    match result {
        Ok(Some(true)) => {
            trust.verified.insert(version, hash, checked_at);
            Ok(true)
        }
        Ok(Some(false)) => {
            trust.mismatched.insert((version, hash));
            Ok(false)
        }
        // Changed meanwhile: the next open sees the new version.
        Ok(None) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes the verified pairs of the versions still current.
fn save(trust: &Mutex<Trust>) -> Result<()> {
    let trust = lock(trust);
    let current: HashSet<FileVersion> = trust.current.values().copied().collect();
    trust.verified.save(&current)
}

/// Opens regular file `name` of the images directory `images` (canonical),
/// refusing anything that resolves outside it (`..`, absolute paths,
/// symlinks anywhere on the path) and anything but a regular file, without
/// blocking on a FIFO.
pub(crate) fn open_image_file(images: &Path, name: &str) -> Result<(File, PathBuf)> {
    validate_name(name)?;
    let file = open_file_in(images, name)?;
    Ok((file, images.join(name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{BootImage, FileHeader, FileImage};
    use crate::id::FileIdentity;
    use crate::import::{import, ImportOptions};
    use proptest::prelude::*;

    /// A store holding a boot image of `images/vmi` with `blocks` (in that
    /// order), and a server over it with a cache of `cache` bytes.
    fn serve(data: &[u8], blocks: &[u64], cache: usize) -> (tempfile::TempDir, ImageServer) {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        std::fs::create_dir(&images).unwrap();
        std::fs::write(images.join("vmi"), data).unwrap();
        let header = FileHeader {
            name: "vmi".into(),
            file_size: data.len() as u64,
            identity: FileIdentity::of_file(&images.join("vmi")).unwrap(),
            blocks: blocks.to_vec(),
        };
        let mut block_data = Vec::new();
        for &b in blocks {
            let start = b as usize * 4096;
            block_data.extend_from_slice(&data[start..(start + 4096).min(data.len())]);
        }
        let image = BootImage {
            block_size: 4096,
            files: vec![FileImage {
                header,
                data: block_data,
            }],
        };
        let path = dir.path().join("store");
        let store = crate::Store::open_or_create(&path, None).unwrap();
        import(&store, &image, &ImportOptions::default()).unwrap();
        drop(store);
        let server = ImageServer::new(Follower::open(&path).unwrap(), &images, cache).unwrap();
        server.verify_boot_image("vmi").unwrap();
        (dir, server)
    }

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 / 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn reads_stitch_store_and_file() {
        let data = content(10 * 4096 + 123);
        let (_dir, server) = serve(&data, &[7, 2, 10, 3], 1 << 20);
        let image = server.open("vmi").unwrap();
        assert!(image.has_boot_image());
        // Block 2 and 3 from the store, 4 from the file, across both edges.
        let got = server.read(&image, 2 * 4096 + 5, 3 * 4096).unwrap();
        assert_eq!(got, &data[2 * 4096 + 5..5 * 4096 + 5]);
        // The short last block, and a read past the end.
        let got = server.read(&image, 10 * 4096, 8192).unwrap();
        assert_eq!(got, &data[10 * 4096..]);
        assert!(server
            .read(&image, data.len() as u64 + 1, 10)
            .unwrap()
            .is_empty());
        let stats = server.stats();
        assert_eq!(stats.bytes_from_store, 2 * 4096 - 5 + 123);
        assert_eq!(stats.bytes_from_file, 5 + 4096);
    }

    #[test]
    fn a_changed_file_is_served_from_itself() {
        let data = content(4 * 4096);
        let (dir, server) = serve(&data, &[0, 1], 1 << 20);
        let changed: Vec<u8> = data.iter().map(|b| b ^ 0xFF).collect();
        std::fs::write(dir.path().join("images/vmi"), &changed).unwrap();
        // Until the new version is hashed, opens are served from the file.
        let image = server.open("vmi").unwrap();
        assert!(!image.has_boot_image());
        assert_eq!(server.read(&image, 0, 8192).unwrap(), &changed[..8192]);
        assert_eq!(server.stats().unverified_opens, 1);
        server.verify_boot_image("vmi").unwrap();
        let image = server.open("vmi").unwrap();
        assert!(!image.has_boot_image());
        assert_eq!(server.read(&image, 0, 8192).unwrap(), &changed[..8192]);
        assert_eq!(server.stats().identity_mismatches, 1);
    }

    #[test]
    fn a_held_file_truncated_or_grown_is_read_to_its_current_end() {
        let data = content(10 * 4096);
        let (dir, server) = serve(&data, &[9, 0], 1 << 20);
        let path = dir.path().join("images/vmi");
        let image = server.open("vmi").unwrap();
        assert!(image.has_boot_image());
        // Truncated under the open file: the recorded last block is past
        // the new end and must not come back from the store.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(9 * 4096)
            .unwrap();
        assert!(server.read(&image, 9 * 4096, 4096).unwrap().is_empty());
        assert_eq!(server.read(&image, 0, 4096).unwrap(), &data[..4096]);
        // Grown: the bytes past the old end are there at once.
        let mut grown = data[..9 * 4096].to_vec();
        grown.extend(content(3 * 4096).iter().map(|b| b ^ 0x5A));
        std::fs::write(&path, &grown).unwrap();
        assert_eq!(
            server.read(&image, 8 * 4096, 4 * 4096).unwrap(),
            &grown[8 * 4096..]
        );
    }

    #[test]
    fn a_fifo_with_a_vmi_name_is_refused_without_blocking() {
        let data = content(4096);
        let (dir, server) = serve(&data, &[0], 1 << 20);
        let path = dir.path().join("images/vmi");
        std::fs::remove_file(&path).unwrap();
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(server.verify_boot_image("vmi").is_err());
        assert!(server.open("vmi").is_err());
    }

    #[test]
    fn a_file_served_with_a_boot_image_bypasses_the_page_cache() {
        let data = content(8 * 4096);
        let (dir, server) = serve(&data, &[3, 1], 1 << 20);
        let image = server.open("vmi").unwrap();
        assert_eq!(server.page_cache(&image), PageCache::Direct);
        assert_eq!(server.page_cache(&image), PageCache::Direct);
        // A file without one is buffered, its pages kept while it is the
        // same version as at the previous open.
        let other = dir.path().join("images/other");
        std::fs::write(&other, &data).unwrap();
        let open = |s: &ImageServer| s.page_cache(&s.open("other").unwrap());
        assert_eq!(open(&server), PageCache::Passthrough { keep: false });
        assert_eq!(open(&server), PageCache::Passthrough { keep: true });
        std::fs::write(&other, &data[..4096]).unwrap();
        assert_eq!(open(&server), PageCache::Passthrough { keep: false });
    }

    #[test]
    fn only_a_file_the_server_adds_nothing_to_is_passed_through() {
        let data = content(8 * 4096);
        let (dir, server) = serve(&data, &[3, 1], 1 << 20);
        let path = dir.path().join("images/vmi");
        // Changed: a check is pending, and the boot image may serve from
        // the next open, so this one must not pin the file to passthrough.
        let changed: Vec<u8> = data.iter().map(|b| b ^ 0x11).collect();
        std::fs::write(&path, &changed).unwrap();
        let image = server.open("vmi").unwrap();
        assert_eq!(
            server.page_cache(&image),
            PageCache::Buffered { keep: false }
        );
        // Checked, and its blocks differ: nothing for the server to add.
        server.verify_boot_image("vmi").unwrap();
        let image = server.open("vmi").unwrap();
        assert!(matches!(
            server.page_cache(&image),
            PageCache::Passthrough { .. }
        ));
        // Back to the recorded bytes: the boot image serves again.
        std::fs::write(&path, &data).unwrap();
        server.verify_boot_image("vmi").unwrap();
        let image = server.open("vmi").unwrap();
        assert_eq!(server.page_cache(&image), PageCache::Direct);
    }

    #[test]
    fn names_outside_the_images_directory_are_refused() {
        let data = content(4096);
        let (dir, server) = serve(&data, &[0], 1 << 20);
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("images/link")).unwrap();
        for name in ["../store/CURRENT", "/etc/passwd", "link", "a/../../x", ""] {
            assert!(server.open(name).is_err(), "{name} was opened");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn every_read_equals_the_file(
            picks in proptest::collection::vec(0u64..40, 0..40),
            reads in proptest::collection::vec((0u64..41 * 4096, 1usize..70_000), 1..40),
            cache in prop_oneof![Just(0usize), Just(64 << 10), Just(1 << 20)],
        ) {
            let data = content(40 * 4096 - 77);
            let mut blocks = Vec::new();
            for b in picks {
                if !blocks.contains(&b) {
                    blocks.push(b);
                }
            }
            let (_dir, server) = serve(&data, &blocks, cache);
            let image = server.open("vmi").unwrap();
            for (offset, len) in reads {
                let start = (offset as usize).min(data.len());
                let want = &data[start..(start + len).min(data.len())];
                prop_assert_eq!(server.read(&image, offset, len).unwrap(), want);
            }
        }
    }
}
