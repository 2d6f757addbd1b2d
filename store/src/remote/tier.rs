//! The lazy remote tier of a mount (`mount --remote`): a boot image that is
//! on the remote but not in the local store is served all the same, its
//! chunks fetched with range GETs of the remote's packs as the preload (in
//! boot-image order) and the VM's reads ask for them. Every chunk is
//! checked against its BLAKE3 id before it is handed out, and a boot image
//! whose chunks have all arrived is written to the local store the way
//! `pull` writes (new packs, then the manifest and refcounts in one synced
//! batch, under the one-writer lock), so the next mount serves it locally.
//!
//! The remote is never in the way of a read: a fetch waits at most
//! `timeout`, a failed or slow one marks the remote down for
//! [`DOWN_FOR`] (reads then go to the VMI file at once), and the caller
//! serves the range from the file and counts it.
//!
//! Trust is the server's, as for local boot images: a remote manifest only
//! says which blocks to check, and the file's blocks must hash to its chunks
//! before it serves (`crate::trust`).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::ObjectStoreExt;
use serde::Serialize;

use super::layout::{Index, PackId};
use super::pull::{check_chunk, fetch_manifests, plan_requests, wanted_versions, Request};
use super::{Remote, RemoteFault};
use crate::id::{ChunkId, ManifestHash};
use crate::import::{new_packs_batch, register_manifests, ImportReport};
use crate::manifest::Manifest;
use crate::store::{lock, Store};
use crate::{Error, Result};

/// How long reads skip the remote after a fetch failed or timed out: a
/// remote that is down must not cost every read a timeout.
pub const DOWN_FOR: Duration = Duration::from_secs(10);

/// What the mount's status and metrics show of the tier.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RemoteTierStats {
    pub remote: String,
    /// Rounds that read the remote's manifests and index (and checked the
    /// new boot images against their files).
    pub loads: u64,
    pub load_failures: u64,
    /// Boot images served from the remote (not in the local store).
    pub boot_images: u64,
    /// Chunks fetched and found to hash to their ids.
    pub chunks_fetched: u64,
    /// Raw bytes of those chunks.
    pub raw_bytes_fetched: u64,
    /// Bytes of the GET responses' bodies (chunks as stored, compressed,
    /// with the gaps between needed chunks a range carried along).
    pub bytes_fetched: u64,
    pub gets: u64,
    /// GETs that failed or did not answer within the timeout.
    pub get_failures: u64,
    /// Fetched chunks that did not decode to their BLAKE3 id.
    pub bad_chunks: u64,
    /// Boot-image ranges served from the VMI file because the remote could
    /// not deliver their chunks in time (down, slow, or a bad chunk).
    pub fallbacks: u64,
    pub fallback_bytes: u64,
    /// Remote boot images written to the local store once complete.
    pub boot_images_stored: u64,
    pub store_failures: u64,
    /// Whether reads skip the remote now (a fetch failed recently).
    pub down: bool,
}

pub struct RemoteTier {
    remote: Remote,
    /// The longest a fetch may keep a read waiting.
    timeout: Duration,
    loaded: RwLock<Loaded>,
    /// Chunks being fetched now, so a read waits for the preload's GET
    /// rather than sending its own.
    inflight: Mutex<HashMap<ChunkId, Arc<Slot>>>,
    /// Fetched and checked, not in the local store yet: held until their
    /// boot image is stored (the cache may evict them before).
    fetched: Mutex<HashMap<ChunkId, Arc<[u8]>>>,
    down_until: Mutex<Option<Instant>>,
    counters: Counters,
}

#[derive(Default)]
struct Loaded {
    index: Index,
    /// Remote boot images with no local manifest, by name.
    boot_images: HashMap<String, (ManifestHash, Arc<Manifest>)>,
}

/// One fetch in flight: its result, once known.
#[derive(Default)]
struct Slot {
    result: Mutex<Option<Option<Arc<[u8]>>>>,
    done: Condvar,
}

impl Slot {
    fn finish(&self, data: Option<Arc<[u8]>>) {
        *lock(&self.result) = Some(data);
        self.done.notify_all();
    }

    fn wait(&self, timeout: Duration) -> Option<Arc<[u8]>> {
        let guard = lock(&self.result);
        let (guard, _) = self
            .done
            .wait_timeout_while(guard, timeout, |r| r.is_none())
            .unwrap_or_else(|p| p.into_inner());
        guard.clone().flatten()
    }
}

#[derive(Default)]
struct Counters {
    loads: AtomicU64,
    load_failures: AtomicU64,
    chunks_fetched: AtomicU64,
    raw_bytes_fetched: AtomicU64,
    bytes_fetched: AtomicU64,
    gets: AtomicU64,
    get_failures: AtomicU64,
    bad_chunks: AtomicU64,
    fallbacks: AtomicU64,
    fallback_bytes: AtomicU64,
    stored: AtomicU64,
    store_failures: AtomicU64,
}

/// What became of an attempt to write a remote boot image locally.
#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    Done,
    /// Chunks still to fetch.
    Incomplete(usize),
    /// Another writer holds the store; try again later.
    Busy,
    /// The name has a local boot image now: left alone.
    Local,
}

impl RemoteTier {
    /// A tier over `remote`; nothing is read from it until [`Self::load`].
    pub fn new(remote: Remote, timeout: Duration) -> Self {
        RemoteTier {
            remote,
            timeout,
            loaded: RwLock::new(Loaded::default()),
            inflight: Mutex::new(HashMap::new()),
            fetched: Mutex::new(HashMap::new()),
            down_until: Mutex::new(None),
            counters: Counters::default(),
        }
    }

    pub fn url(&self) -> &str {
        self.remote.url()
    }

    /// Reads the remote's current manifests of the names `serve` accepts
    /// (files in the images directory without a local boot image) and its
    /// index, reusing what the last round decoded. Returns the names new
    /// since then (or with a new version): the caller checks them against
    /// their files. Runs on a thread of its own: the remote's client
    /// retries for up to two minutes, and no read waits for this.
    pub fn load(&self, store: &Store, serve: impl Fn(&str) -> bool) -> Result<Vec<String>> {
        let result = self.load_inner(store, serve);
        if result.is_err() {
            self.counters.load_failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Counts a load whose new boot images have been checked against
    /// their files: from then on they serve.
    pub fn round_done(&self) {
        self.counters.loads.fetch_add(1, Ordering::Relaxed);
    }

    fn load_inner(&self, store: &Store, serve: impl Fn(&str) -> bool) -> Result<Vec<String>> {
        self.remote.agree_on_config(store.config(), false)?;
        let versions: Vec<_> = wanted_versions(&self.remote, &[])?
            .into_iter()
            .filter(|v| serve(&v.name))
            .collect();
        let max_raw = store.config().chunking.max_len();
        let cache = super::index_cache(store);
        let (index, _, refused) =
            self.remote
                .runtime
                .block_on(self.remote.load_index(Some(&cache), max_raw, false))?;
        for (key, why) in refused {
            eprintln!("yolo-store: remote tier: refused index object {key}: {why}");
        }
        let known: HashMap<String, (ManifestHash, Arc<Manifest>)> =
            self.read_loaded().boot_images.clone();
        let mut boot_images = HashMap::new();
        let mut to_fetch = Vec::new();
        for version in versions {
            match known.get(&version.name) {
                Some((hash, manifest)) if *hash == version.hash => {
                    boot_images.insert(version.name.clone(), (*hash, manifest.clone()));
                }
                _ => to_fetch.push(version),
            }
        }
        let mut new = Vec::new();
        for (version, fetched) in fetch_manifests(&self.remote, &to_fetch, &index)? {
            let checked = fetched.and_then(|(manifest, _, _)| {
                manifest.check_chunk_lens(max_raw)?;
                Ok(manifest)
            });
            match checked {
                Ok(manifest) => {
                    boot_images.insert(version.name.clone(), (version.hash, Arc::new(manifest)));
                    new.push(version.name);
                }
                Err(why) => eprintln!(
                    "yolo-store: remote tier: refused {}: remote object {}: {why}",
                    version.name,
                    version.key()
                ),
            }
        }
        // Fetched chunks are kept only for boot images still served from
        // here (one stored or replaced since needs them no more).
        let live: HashSet<ChunkId> = boot_images
            .values()
            .flat_map(|(_, m)| m.chunks.iter().map(|c| c.id))
            .collect();
        lock(&self.fetched).retain(|id, _| live.contains(id));
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = Loaded { index, boot_images };
        Ok(new)
    }

    fn read_loaded(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.loaded.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The remote boot image of `name`, if the last load found one.
    pub fn manifest(&self, name: &str) -> Option<Manifest> {
        self.read_loaded()
            .boot_images
            .get(name)
            .map(|(_, m)| Manifest::clone(m))
    }

    /// Names of the remote boot images the last load found.
    pub fn names(&self) -> Vec<String> {
        self.read_loaded().boot_images.keys().cloned().collect()
    }

    /// Whether the remote's index places chunk `id` in a pack.
    pub fn has(&self, id: &ChunkId) -> bool {
        self.read_loaded().index.chunks.contains_key(id)
    }

    fn is_down(&self) -> bool {
        lock(&self.down_until).is_some_and(|until| Instant::now() < until)
    }

    fn mark_down(&self) {
        *lock(&self.down_until) = Some(Instant::now() + DOWN_FOR);
    }

    /// Counts a boot-image range of `bytes` served from the file because
    /// the remote did not deliver.
    pub fn fell_back(&self, bytes: u64) {
        self.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
        self.counters
            .fallback_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// One chunk, for a read: waits at most the timeout.
    pub fn chunk(&self, id: &ChunkId) -> Result<Arc<[u8]>> {
        self.fetch(&[*id]).remove(id).ok_or_else(|| {
            self.remote.error(if self.is_down() {
                RemoteFault::Down {
                    secs: DOWN_FOR.as_secs(),
                }
            } else {
                RemoteFault::ChunkUnavailable(*id)
            })
        })
    }

    /// Fetches `ids` (checked), in as few range GETs as their places in
    /// the remote's packs allow; those another fetch is getting now are
    /// waited for instead. Chunks that cannot be had in time are left out.
    pub fn fetch(&self, ids: &[ChunkId]) -> HashMap<ChunkId, Arc<[u8]>> {
        let mut got = HashMap::new();
        let mut waits = Vec::new();
        let mut mine = Vec::new();
        {
            let fetched = lock(&self.fetched);
            let mut inflight = lock(&self.inflight);
            for id in ids {
                if let Some(data) = fetched.get(id) {
                    got.insert(*id, data.clone());
                } else if let Some(slot) = inflight.get(id) {
                    waits.push((*id, slot.clone()));
                } else if !got.contains_key(id) && !mine.iter().any(|(m, _)| m == id) {
                    let slot = Arc::new(Slot::default());
                    inflight.insert(*id, slot.clone());
                    mine.push((*id, slot));
                }
            }
        }
        if !mine.is_empty() {
            let ids: Vec<ChunkId> = mine.iter().map(|(id, _)| *id).collect();
            let results = if self.is_down() {
                HashMap::new()
            } else {
                self.get_chunks(&ids)
            };
            lock(&self.fetched).extend(results.iter().map(|(id, d)| (*id, d.clone())));
            let mut inflight = lock(&self.inflight);
            for (id, slot) in mine {
                inflight.remove(&id);
                slot.finish(results.get(&id).cloned());
            }
            got.extend(results);
        }
        for (id, slot) in waits {
            if let Some(data) = slot.wait(self.timeout) {
                got.insert(id, data);
            }
        }
        got
    }

    /// The GETs themselves, bounded by the timeout as a whole.
    fn get_chunks(&self, ids: &[ChunkId]) -> HashMap<ChunkId, Arc<[u8]>> {
        let (requests, raw_len) = {
            let loaded = self.read_loaded();
            let index = &loaded.index;
            let mut by_pack: Vec<(PackId, Vec<u32>)> = Vec::new();
            let mut at: HashMap<PackId, usize> = HashMap::new();
            let mut raw_len: HashMap<ChunkId, u32> = HashMap::new();
            for id in ids {
                let Some(&(pack, pos)) = index.chunks.get(id) else {
                    continue;
                };
                let Some(desc) = index.packs.get(&pack) else {
                    continue;
                };
                if let Some(entry) = desc.entries.get(pos as usize) {
                    raw_len.insert(*id, entry.raw_len);
                }
                let i = *at.entry(pack).or_insert_with(|| {
                    by_pack.push((pack, Vec::new()));
                    by_pack.len() - 1
                });
                by_pack[i].1.push(pos);
            }
            let requests: Vec<Request> = by_pack
                .into_iter()
                .flat_map(|(pack, positions)| plan_requests(&index.packs[&pack], positions))
                .collect();
            (requests, raw_len)
        };
        let remote = &self.remote;
        let gets = requests.len() as u64;
        self.counters.gets.fetch_add(gets, Ordering::Relaxed);
        let all = futures::stream::iter(requests)
            .map(|r| async move {
                let path = remote.path(&r.pack.key());
                let body = remote.objects.get_range(&path, r.range.clone()).await;
                (r, body)
            })
            .buffer_unordered(remote.options.concurrency.max(1))
            .collect::<Vec<_>>();
        let answered = match remote
            .runtime
            .block_on(async { tokio::time::timeout(self.timeout, all).await })
        {
            Ok(answered) => answered,
            Err(_) => {
                self.counters
                    .get_failures
                    .fetch_add(gets, Ordering::Relaxed);
                self.mark_down();
                return HashMap::new();
            }
        };
        let mut out = HashMap::new();
        for (r, body) in answered {
            let want = r.range.end - r.range.start;
            let body = match body {
                Ok(body) if body.len() as u64 == want => body,
                // Gone (a remote gc repacked it since our index was read):
                // the remote is up, only this pack is stale.
                Err(object_store::Error::NotFound { .. }) => {
                    self.counters.get_failures.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                _ => {
                    self.counters.get_failures.fetch_add(1, Ordering::Relaxed);
                    self.mark_down();
                    continue;
                }
            };
            self.counters
                .bytes_fetched
                .fetch_add(want, Ordering::Relaxed);
            for &(id, offset, stored) in &r.chunks {
                let at = (offset - r.range.start) as usize;
                let Some(value) = body.get(at..at + stored as usize) else {
                    continue;
                };
                let Some(&len) = raw_len.get(&id) else {
                    continue;
                };
                match check_chunk(&id, value, len) {
                    Ok(raw) => {
                        self.counters.chunks_fetched.fetch_add(1, Ordering::Relaxed);
                        self.counters
                            .raw_bytes_fetched
                            .fetch_add(u64::from(len), Ordering::Relaxed);
                        out.insert(id, Arc::from(raw));
                    }
                    Err(why) => {
                        self.counters.bad_chunks.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "yolo-store: remote tier: chunk {} from {}: {why}",
                            id.to_hex(),
                            r.pack.key()
                        );
                    }
                }
            }
        }
        out
    }

    /// Writes remote boot image `name` into the store at `store` once all
    /// its chunks are here (fetched, or in the store already): new packs of
    /// the fetched chunks in first-use order, then the manifest and its
    /// refcounts in one synced batch, as `pull` does, all under the
    /// writer's lock so no gc takes a chunk in between. Its hash is the
    /// remote's, so the file's check carries over.
    /// `view` (the mount's read-only view of the store) tells, without
    /// opening the store as a writer, whether anything is still missing.
    pub fn store(&self, view: &Store, name: &str) -> Stored {
        let Some((_, manifest)) = self.read_loaded().boot_images.get(name).cloned() else {
            return Stored::Local;
        };
        match self.lacking(view, &manifest) {
            Ok(0) => {}
            Ok(n) => return Stored::Incomplete(n),
            Err(_) => return Stored::Incomplete(0),
        }
        match self.store_inner(view.path(), name, &manifest) {
            Ok(Stored::Done) => {
                self.counters.stored.fetch_add(1, Ordering::Relaxed);
                let ids: HashSet<ChunkId> = manifest.chunks.iter().map(|c| c.id).collect();
                lock(&self.fetched).retain(|id, _| !ids.contains(id));
                self.loaded
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .boot_images
                    .remove(name);
                eprintln!("yolo-store: remote tier: {name} is in the local store now");
                Stored::Done
            }
            Ok(other) => other,
            Err(Error::Busy(_)) => Stored::Busy,
            Err(e) => {
                self.counters.store_failures.fetch_add(1, Ordering::Relaxed);
                eprintln!("yolo-store: remote tier: could not store {name}: {e}");
                Stored::Incomplete(0)
            }
        }
    }

    /// How many of `manifest`'s chunks are neither in `store` nor fetched.
    fn lacking(&self, store: &Store, manifest: &Manifest) -> Result<usize> {
        let distinct = manifest.distinct_chunks();
        let known = store.chunk_infos_of(distinct.iter().map(|c| c.id).collect())?;
        let fetched = lock(&self.fetched);
        Ok(distinct
            .iter()
            .filter(|c| !known.contains_key(&c.id) && !fetched.contains_key(&c.id))
            .count())
    }

    fn store_inner(&self, path: &Path, name: &str, manifest: &Manifest) -> Result<Stored> {
        let store = Store::open(path)?;
        let _guard = store.write_lock();
        match store.manifest(name) {
            Err(Error::UnknownVmi(_)) => {}
            Ok(_) => return Ok(Stored::Local),
            Err(e) => return Err(e),
        }
        let distinct = manifest.distinct_chunks();
        let mut known = store.chunk_infos_of(distinct.iter().map(|c| c.id).collect())?;
        // Taken out of the lock: compressing them must not hold up reads.
        let mut have: Vec<(ChunkId, Arc<[u8]>)> = Vec::new();
        let mut lacking = 0;
        {
            let fetched = lock(&self.fetched);
            for chunk in &distinct {
                if known.contains_key(&chunk.id) {
                    continue;
                }
                match fetched.get(&chunk.id) {
                    Some(data) => have.push((chunk.id, data.clone())),
                    None => lacking += 1,
                }
            }
        }
        if lacking > 0 {
            return Ok(Stored::Incomplete(lacking));
        }
        let new: Vec<(ChunkId, &[u8], u64)> =
            have.iter().map(|(id, data)| (*id, &data[..], 0)).collect();
        let packs = store.build_packs(&new, &HashMap::new())?;
        let mut counts = ImportReport::default();
        store.write(new_packs_batch(&store, &packs, &mut known, &mut counts)?)?;
        register_manifests(&store, &[(name.to_string(), manifest.clone())], &mut known)?;
        Ok(Stored::Done)
    }

    pub fn stats(&self) -> RemoteTierStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RemoteTierStats {
            remote: self.remote.url().to_string(),
            loads: get(&c.loads),
            load_failures: get(&c.load_failures),
            boot_images: self.read_loaded().boot_images.len() as u64,
            chunks_fetched: get(&c.chunks_fetched),
            raw_bytes_fetched: get(&c.raw_bytes_fetched),
            bytes_fetched: get(&c.bytes_fetched),
            gets: get(&c.gets),
            get_failures: get(&c.get_failures),
            bad_chunks: get(&c.bad_chunks),
            fallbacks: get(&c.fallbacks),
            fallback_bytes: get(&c.fallback_bytes),
            boot_images_stored: get(&c.stored),
            store_failures: get(&c.store_failures),
            down: self.is_down(),
        }
    }
}

#[cfg(test)]
#[path = "tier_tests.rs"]
mod tests;
