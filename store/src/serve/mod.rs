//! Serving VMI files from the store: the paper's Algorithm 1. A read of
//! `(file, offset, length)` takes every block the file's boot image holds
//! from the chunk cache (loading and checking chunks from the store on a
//! miss) and every other byte from the file itself; a request that spans
//! both is split and stitched. No FUSE types here: the mount adapter calls
//! [`ImageServer::open`], [`ImageServer::page_cache`] and
//! [`ImageServer::read`], and translates.
//!
//! The server never returns bytes that differ from the file: a boot image
//! is used only once the file's recorded blocks have been read back and
//! hash to its chunks, for that version of the file, and a chunk that fails
//! its BLAKE3 check is replaced by a read of the file.
//!
//! The parts, each in its own module:
//! - `identity`: which boot image may serve which file version (checks on
//!   a small pool of their own, never on the threads that answer reads);
//! - `chunks`: where boot images and chunks come from (the chunk cache, the
//!   store and its catch-up, the remote tier, preloads);
//! - Algorithm 1's plan of a read: [`ManifestIndex::plan`], a pure
//!   function, carried out by [`ImageServer::read`];
//! - `session`: one open of a file, and the per-file policy kept across
//!   opens (page cache, preload once, passthrough);
//! - `remote`: what `mount --remote` adds (reading the remote's boot
//!   images);
//! - `stats`: what the mount reports.

use std::collections::HashSet;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::files::{images_dir, metadata_in, open_image_file};
use crate::follower::Follower;
use crate::latency::VmiLatencies;
use crate::learn::{LearnOptions, Learner};
use crate::manifest::ManifestIndex;
use crate::remote::{Remote, RemoteTier};
use crate::store::lock;
use crate::trust::FileVersion;
use crate::{Error, Result};

mod chunks;
mod identity;
mod remote;
mod session;
mod stats;
#[cfg(test)]
mod tests;

use chunks::ChunkSource;
use identity::{Checked, Identities};
use session::Sessions;
pub use session::{OpenImage, PageCache, PassthroughOutcome, Preload};
use stats::ReadCounters;
pub use stats::ServeStats;

/// How a server serves (`mount`'s options, as the library takes them).
pub struct ServeOptions {
    /// The chunk cache's budget (`mount --cache-size`, 1 GiB by default).
    pub cache_bytes: usize,
    pub preload: Preload,
    /// Files the server adds nothing to are handed to the kernel (FUSE
    /// passthrough) instead of being read through the server.
    pub passthrough: bool,
    /// Serve the boot images this remote holds and the store does not,
    /// fetching their chunks as they are read (`mount --remote`).
    pub remote: Option<RemoteTier>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            cache_bytes: 1 << 30,
            preload: Preload::default(),
            passthrough: false,
            remote: None,
        }
    }
}

pub struct ImageServer {
    images: PathBuf,
    chunks: Arc<ChunkSource>,
    identities: Identities,
    sessions: Arc<Sessions>,
    /// Checks of new file versions and preloads: bounded, and apart from
    /// rayon's global pool, which reads use to decode packs.
    background: Arc<rayon::ThreadPool>,
    /// Records the boots of files without a usable boot image, with
    /// `--learn`.
    learner: Option<Arc<Learner>>,
    counters: ReadCounters,
    latency_by_vmi: VmiLatencies,
    warned: WarnOnce,
}

/// How many files are checked or preloaded at once: reading many at a time
/// from one disk is a seek storm on a hard disk.
const BACKGROUND_THREADS: usize = 2;

impl ImageServer {
    pub fn new(store: Follower, images: &Path, options: ServeOptions) -> Result<Self> {
        let images = images_dir(images)?;
        let background = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(BACKGROUND_THREADS)
                .thread_name(|i| format!("yolo-check-{i}"))
                .build()
                .map_err(|e| Error::Spawn {
                    what: "background",
                    source: std::io::Error::other(e),
                })?,
        );
        Ok(ImageServer {
            identities: Identities::load(store.path(), &images, background.clone()),
            chunks: Arc::new(ChunkSource::new(store, options.cache_bytes, options.remote)),
            sessions: Arc::new(Sessions::new(options.preload, options.passthrough)),
            images,
            background,
            learner: None,
            counters: ReadCounters::default(),
            latency_by_vmi: VmiLatencies::default(),
            warned: WarnOnce::default(),
        })
    }

    /// Learns a boot image from the first boot of every file version that
    /// has none (or one that does not match): see [`Learner`]. A thread
    /// ends recordings, imports them and checks the new boot images, so
    /// the next open of the file is served from the store.
    pub fn learn(mut self, options: LearnOptions, remote: Option<Remote>) -> Result<Arc<Self>> {
        let tick = (options.quiet / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        self.learner = Some(Arc::new(Learner::new(
            self.chunks.follower().path(),
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
                    if let Err(e) = server.chunks.follower().catch_up() {
                        eprintln!("yolo-store: learning: could not catch up with the store: {e}");
                    }
                }
                for name in imported {
                    match server.verify_boot_image(&name) {
                        Ok(true) => {
                            learner.ready(1);
                            if let Err(e) = server.preload_if_all(&name) {
                                eprintln!("yolo-store: learning: {name}: {e}");
                            }
                        }
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

    /// Whether the server hands the files it adds nothing to the kernel
    /// ([`ServeOptions::passthrough`]).
    pub fn wants_passthrough(&self) -> bool {
        self.sessions.passthrough()
    }

    /// Opens file `name` of the images directory. The boot image is looked
    /// up at every open, so one imported while mounted is used from the next
    /// open on; it serves only once this version of the file is known to
    /// hold its blocks. Until then the open is served from the file, and
    /// the check runs in the background: an open never waits for it. The
    /// first open of a file with its boot image starts its preload.
    pub fn open(&self, name: &str) -> Result<OpenImage> {
        let (file, path) = open_image_file(&self.images, name)?;
        // See what `import`, `rm` and `gc` committed since the last open.
        let follower = self.chunks.follower();
        let store = follower.catch_up().unwrap_or_else(|e| {
            self.warned
                .warn(name, "could not catch up with the store: ", e);
            follower.current()
        });
        let meta = file.metadata().map_err(|e| Error::io(&path, e))?;
        let version = FileVersion::of(&meta);
        // Learned when there is no boot image, or one known not to match;
        // not while a match is being checked.
        let mut learnable = false;
        let manifest = self.chunks.boot_image(&store, name);
        let latency = self.latency_by_vmi.for_file(name, manifest.is_ok());
        let index = match manifest {
            Ok(manifest) => match self.identities.checked(name, version, &manifest) {
                (Checked::Matches, hash) => Some((Arc::new(ManifestIndex::new(manifest)), hash)),
                (Checked::Differs, _) => {
                    self.identities.mismatches.fetch_add(1, Ordering::Relaxed);
                    self.warned.warn(
                        name,
                        "the file does not hold its boot image's blocks; serving it from the file",
                        "",
                    );
                    learnable = true;
                    None
                }
                (Checked::Unknown, hash) => {
                    self.identities
                        .unverified_opens
                        .fetch_add(1, Ordering::Relaxed);
                    self.identities
                        .check_in_background(name, version, manifest, hash);
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
                self.warned.warn(
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
        let image = OpenImage {
            name: name.to_string(),
            file,
            size: meta.len(),
            version,
            index,
            // A learned open needs its reads, so it is not passed through.
            plain: learnable && learner.is_none(),
            learner,
            latency,
        };
        if self.sessions.first_preload(&image) {
            self.preload_in_background(&image);
        }
        Ok(image)
    }

    /// How the kernel may cache `image`'s pages for the open that made it
    /// (the policy: [`Sessions::page_cache`]).
    pub fn page_cache(&self, image: &OpenImage) -> PageCache {
        self.sessions.page_cache(image)
    }

    /// Counts what the mount did with an open that could be handed to the
    /// kernel; a refusal is logged once per reason.
    pub fn passthrough_outcome(&self, image: &OpenImage, outcome: PassthroughOutcome) {
        self.sessions
            .passthrough_outcome(image, outcome, &self.warned);
    }

    /// Checks file `name` against its boot image now, unless this version
    /// is known already: a mount does this for every VMI at start, so VMs
    /// find them trusted. True when the boot image will serve.
    pub fn verify_boot_image(&self, name: &str) -> Result<bool> {
        let (matches, checked_now) = self.check_now(name)?;
        if checked_now {
            self.identities.save()?;
        }
        Ok(matches)
    }

    /// [`Self::verify_boot_image`] without keeping the result on disk:
    /// whether the boot image serves, and whether the file was read for it.
    fn check_now(&self, name: &str) -> Result<(bool, bool)> {
        let store = self.chunks.follower().current();
        match self.chunks.manifest_of(&store, name) {
            Ok(manifest) => self.identities.check_now(name, &manifest),
            Err(Error::UnknownVmi(_)) => Ok((false, false)),
            Err(e) => Err(e),
        }
    }

    /// Checks every boot image in the store against its file, one file at
    /// a time, in a thread of its own; with [`Preload::All`], loads each
    /// into the cache once checked. Keeps what it learned for the next
    /// start. Returns how many files it will check.
    pub fn verify_all_in_background(self: &Arc<Self>) -> Result<usize> {
        // Only regular files: a FIFO under a VMI's name is no VMI.
        let names: Vec<String> = self
            .chunks
            .follower()
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
                            server.identities.save()?;
                            saved = Instant::now();
                        }
                        if ok {
                            server.preload_if_all(&name)?;
                        }
                        Ok(())
                    });
                    if let Err(e) = result {
                        eprintln!("yolo-store: {name}: {e}");
                    }
                }
                if let Err(e) = server.identities.save() {
                    eprintln!("yolo-store: keeping verified boot images: {e}");
                }
                server.identities.startup_done();
            })
            .map_err(|source| Error::Spawn {
                what: "startup verification",
                source,
            })?;
        Ok(count)
    }

    /// For a boot image just found to match its file: with
    /// [`Preload::All`], loads it into the cache now (opening the file
    /// starts its preload) rather than at the file's first open.
    fn preload_if_all(&self, name: &str) -> Result<()> {
        if self.sessions.preload() == Preload::All {
            self.open(name)?;
        }
        Ok(())
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
        match image.boot_image() {
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
        if let Some(learner) = &image.learner {
            learner.record(&image.name, image.version, offset, buf.len() as u64);
        }
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        let elapsed = started.elapsed();
        self.counters.latency.record(elapsed);
        image.latency.record(elapsed);
        Ok(buf)
    }

    /// Carries out Algorithm 1's plan of a read: copies the boot image's
    /// blocks into `buf` (which holds the file from `offset`) and lists the
    /// ranges left for the file, merged. A chunk that cannot be had leaves
    /// its piece to the file.
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
                match self.chunks.copy_stream(index, stream, dst) {
                    Ok(()) => true,
                    Err(e) => {
                        self.chunk_failed(image, dst.len() as u64, e);
                        false
                    }
                }
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

    /// Counts a piece of a read the chunk source could not give (`bytes`
    /// long), which the file serves instead.
    fn chunk_failed(&self, image: &OpenImage, bytes: u64, e: Error) {
        match (e, self.chunks.remote()) {
            // Down or slow: the file has the same bytes (checked).
            (e, Some(tier)) if e.is_remote_unavailable() => tier.fell_back(bytes),
            (e, _) => {
                self.counters.chunk_failures.fetch_add(1, Ordering::Relaxed);
                self.warned.warn(
                    &image.name,
                    "chunks fail, served from the file instead (counted in chunk_failures); first: ",
                    e,
                );
            }
        }
    }

    /// Starts loading `image`'s boot image into the cache on the
    /// background pool.
    fn preload_in_background(&self, image: &OpenImage) {
        let Some(index) = image.boot_image() else {
            return;
        };
        let (chunks, sessions) = (self.chunks.clone(), self.sessions.clone());
        let (index, name) = (index.clone(), image.name.clone());
        self.background.spawn(move || {
            chunks.preload(&index);
            // A remote boot image not stored yet (the remote failed part
            // way, or another writer held the store) is preloaded again at
            // the next open: what was fetched is kept.
            if !chunks.store_remote(&name) {
                sessions.preload_again(&name);
            }
        });
    }

    /// Loads a boot image's chunks into the cache now, in recorded order.
    pub fn preload(&self, index: &ManifestIndex) {
        self.chunks.preload(index);
    }

    pub fn stats(&self) -> ServeStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.counters;
        let passthrough = &self.sessions.counters;
        let (identities_pending, boot_images_verified, startup_verification_done) =
            self.identities.progress();
        let latency = c.latency.snapshot();
        ServeStats {
            reads: get(&c.reads),
            bytes_from_store: get(&c.bytes_from_store),
            bytes_from_file: get(&c.bytes_from_file),
            chunk_failures: get(&c.chunk_failures),
            identity_mismatches: get(&self.identities.mismatches),
            unverified_opens: get(&self.identities.unverified_opens),
            passthrough_opens: get(&passthrough.opens),
            passthrough_held: get(&passthrough.held),
            passthrough_refused: get(&passthrough.refused),
            passthrough_open_now: get(&passthrough.open_now),
            identities_pending,
            boot_images_verified,
            startup_verification_done,
            preload_chunks_total: get(&self.chunks.preload_total),
            preload_chunks_done: get(&self.chunks.preload_done),
            cache: self.chunks.cache().stats(),
            latency_us: latency.buckets,
            latency_us_sum: latency.sum_us,
            latency_by_vmi: self.latency_by_vmi.snapshot(),
            learning: self.learner.as_deref().map(Learner::stats),
            remote: self.chunks.remote().map(|tier| tier.stats()),
        }
    }
}

/// Warnings given once per file and kind of trouble, however many times it
/// happens (a damaged pack fails many chunks).
#[derive(Default)]
pub(super) struct WarnOnce(Mutex<HashSet<String>>);

impl WarnOnce {
    /// True the first time `key` is given.
    fn first(&self, key: &str) -> bool {
        lock(&self.0).insert(key.to_string())
    }

    fn warn(&self, name: &str, what: &str, detail: impl std::fmt::Display) {
        if self.first(&format!("{name}\0{what}")) {
            eprintln!("yolo-store: warning: {name}: {what}{detail}");
        }
    }
}
