//! The hot cache of decompressed chunks, shared by every VMI a mount serves:
//! keyed by chunk id, so a chunk used by ten VMIs is held once.
//!
//! The `lru` crate bounds entries, not bytes, and needs `&mut` on every hit.
//! So the cache is split into shards (by the first byte of the id, which is
//! uniformly distributed), each a mutex around an unbounded `LruCache` whose
//! byte total we keep ourselves. A lock is held only to look up, promote or
//! insert: never across store reads or decompression.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;
use serde::Serialize;

use crate::id::ChunkId;

const SHARDS: usize = 16;

pub struct ChunkCache {
    shards: Box<[Mutex<Shard>]>,
    shard_budget: usize,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

struct Shard {
    lru: LruCache<ChunkId, Arc<[u8]>>,
    bytes: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub budget: u64,
}

impl ChunkCache {
    /// A cache that holds at most `budget` bytes of chunk data.
    pub fn new(budget: usize) -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    lru: LruCache::unbounded(),
                    bytes: 0,
                })
            })
            .collect();
        ChunkCache {
            shards,
            shard_budget: budget / SHARDS,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    fn shard(&self, id: &ChunkId) -> MutexGuard<'_, Shard> {
        let i = usize::from(id.0[0]) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The chunk if cached, promoted to most recently used.
    pub fn get(&self, id: &ChunkId) -> Option<Arc<[u8]>> {
        let found = self.shard(id).lru.get(id).cloned();
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.shard(id).lru.contains(id)
    }

    /// Inserts a chunk, evicting least recently used ones past the budget.
    /// A chunk larger than a whole shard's budget is not cached.
    pub fn insert(&self, id: ChunkId, data: Arc<[u8]>) {
        if data.len() > self.shard_budget {
            return;
        }
        let mut shard = self.shard(&id);
        let len = data.len();
        if let Some(old) = shard.lru.put(id, data) {
            shard.bytes -= old.len();
        }
        shard.bytes += len;
        while shard.bytes > self.shard_budget {
            match shard.lru.pop_lru() {
                Some((_, evicted)) => {
                    shard.bytes -= evicted.len();
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
                None => break,
            }
        }
    }

    pub fn stats(&self) -> CacheStats {
        let (mut chunks, mut bytes) = (0, 0);
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            chunks += shard.lru.len() as u64;
            bytes += shard.bytes as u64;
        }
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            chunks,
            bytes,
            budget: (self.shard_budget * SHARDS) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(i: u32, len: usize) -> (ChunkId, Arc<[u8]>) {
        let data = vec![i as u8; len];
        (
            ChunkId::of(&[&i.to_le_bytes()[..], &data].concat()),
            data.into(),
        )
    }

    #[test]
    fn stays_within_its_byte_budget() {
        let cache = ChunkCache::new(SHARDS * 10_000);
        for i in 0..1000 {
            let (id, data) = chunk(i, 4096);
            cache.insert(id, data);
            let s = cache.stats();
            assert!(s.bytes <= s.budget, "{s:?}");
        }
        let s = cache.stats();
        assert!(s.evictions > 0 && s.chunks > 0);
    }

    #[test]
    fn hits_promote_and_misses_count() {
        let cache = ChunkCache::new(SHARDS * 8192);
        let (a, da) = chunk(1, 4096);
        cache.insert(a, da.clone());
        assert_eq!(cache.get(&a).as_deref(), Some(&da[..]));
        let (b, _) = chunk(2, 10);
        assert!(cache.get(&b).is_none());
        let s = cache.stats();
        assert_eq!((s.hits, s.misses), (1, 1));
    }
}
