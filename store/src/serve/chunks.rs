//! The chunk source: where a served boot image and its chunks come from.
//! One chunk cache shared by every VMI; on a miss the store (caught up with
//! its writer when a chunk seems to have moved), and with `mount --remote`
//! the remote tier for what the store lacks. Preloads fill the cache in
//! recorded order. Every chunk is checked against its BLAKE3 id before it
//! enters the cache; errors go back to the caller, which serves the file.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rayon::prelude::*;

use crate::cache::ChunkCache;
use crate::follower::Follower;
use crate::id::ChunkId;
use crate::manifest::{Manifest, ManifestIndex};
use crate::pack::{decode_pack, Pack};
use crate::remote::{RemoteTier, Stored};
use crate::store::Store;
use crate::{Error, Result};

pub(super) struct ChunkSource {
    store: Follower,
    cache: ChunkCache,
    /// Boot images on the remote but not in the store, fetched as they are
    /// read (`mount --remote`; `remote/tier.rs`).
    remote: Option<Arc<RemoteTier>>,
    pub(super) preload_total: AtomicU64,
    pub(super) preload_done: AtomicU64,
}

impl ChunkSource {
    pub(super) fn new(store: Follower, cache_bytes: usize, remote: Option<RemoteTier>) -> Self {
        ChunkSource {
            store,
            cache: ChunkCache::new(cache_bytes),
            remote: remote.map(Arc::new),
            preload_total: AtomicU64::new(0),
            preload_done: AtomicU64::new(0),
        }
    }

    pub(super) fn follower(&self) -> &Follower {
        &self.store
    }

    pub(super) fn cache(&self) -> &ChunkCache {
        &self.cache
    }

    pub(super) fn remote(&self) -> Option<&Arc<RemoteTier>> {
        self.remote.as_ref()
    }

    /// File `name`'s boot image, as `store` (a view of the store) has it.
    /// On any error but "no such boot image" (a RocksDB read error, real
    /// damage), look once more at the store as it is now; the caller serves
    /// the file if that fails too. Views are whole commits (`open_untorn` in
    /// store/open.rs), so a writer committing meanwhile is not such an error.
    pub(super) fn boot_image(&self, store: &Store, name: &str) -> Result<Manifest> {
        match self.manifest_of(store, name) {
            Err(e) if !matches!(e, Error::UnknownVmi(_)) => match self.store.catch_up() {
                Ok(now) => self.manifest_of(&now, name),
                Err(_) => Err(e),
            },
            other => other,
        }
    }

    /// The boot image of `name`: the store's, else the remote's (whose
    /// chunks come from the remote tier).
    pub(super) fn manifest_of(&self, store: &Store, name: &str) -> Result<Manifest> {
        match store.manifest(name) {
            Err(Error::UnknownVmi(n)) => self
                .remote
                .as_ref()
                .and_then(|tier| tier.manifest(name))
                .ok_or(Error::UnknownVmi(n)),
            other => other,
        }
    }

    /// Copies `stream` (a range of the boot image's block stream) into
    /// `dst` from the chunks that hold it.
    pub(super) fn copy_stream(
        &self,
        index: &ManifestIndex,
        stream: Range<u64>,
        dst: &mut [u8],
    ) -> Result<()> {
        let mut written = 0;
        for (i, chunk_range) in index.chunks_for(stream.clone()) {
            let id = index.manifest().chunks[i].id;
            let data = self.chunk(&id)?;
            let from = stream.start.max(chunk_range.start) - chunk_range.start;
            let to = stream.end.min(chunk_range.end) - chunk_range.start;
            let src = data
                .get(from as usize..to as usize)
                .ok_or_else(|| Error::CorruptChunk {
                    id,
                    why: "shorter than its boot image says".into(),
                })?;
            dst[written..written + src.len()].copy_from_slice(src);
            written += src.len();
        }
        if written != dst.len() {
            return Err(Error::CorruptStore(format!(
                "the boot image's chunks cover {written} of {} bytes of its block stream",
                dst.len()
            )));
        }
        Ok(())
    }

    /// A chunk from the cache, or from the store (checked against its id).
    pub(super) fn chunk(&self, id: &ChunkId) -> Result<Arc<[u8]>> {
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

    /// A chunk the store lacks, from the remote tier (checked there).
    fn remote_chunk(&self, id: &ChunkId) -> Result<Arc<[u8]>> {
        // A chunk the remote does not hold either is a chunk failure.
        let tier = self
            .remote
            .as_ref()
            .filter(|tier| tier.has(id))
            .ok_or(Error::MissingChunk { id: *id })?;
        let data = tier.chunk(id)?;
        if !self.cache.contains(id) {
            self.cache.insert(*id, data.clone());
        }
        Ok(data)
    }

    /// You Only Load Once: loads a boot image's chunks into the cache in
    /// recorded (first-access) order, decompressing in parallel.
    pub(super) fn preload(&self, index: &ManifestIndex) {
        let ids: Vec<ChunkId> = index
            .manifest()
            .distinct_chunks()
            .iter()
            .map(|c| c.id)
            .collect();
        self.preload_total
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
            self.preload_done
                .fetch_add(window.len() as u64, Ordering::Relaxed);
        }
    }

    /// Writes remote boot image `name` to the store if all its chunks are
    /// here; true when there is nothing left to do for it.
    pub(super) fn store_remote(&self, name: &str) -> bool {
        matches!(self.store_remote_now(name), Stored::Done | Stored::Local)
    }

    pub(super) fn store_remote_now(&self, name: &str) -> Stored {
        let Some(tier) = &self.remote else {
            return Stored::Local;
        };
        let stored = tier.store(&self.store.current(), name);
        if stored == Stored::Done {
            // Served from the store from the next open on.
            let _ = self.store.catch_up();
        }
        stored
    }
}
