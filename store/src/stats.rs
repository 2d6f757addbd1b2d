//! `ls` and `stats`: what each VMI's boot image weighs, what it shares, and
//! what the whole store saves.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use serde::Serialize;

use crate::chunking::Chunking;
use crate::id::ChunkId;
use crate::store::{ChunkInfo, Store};
use crate::Result;

#[derive(Clone, Debug, Serialize)]
pub struct VmiStats {
    pub name: String,
    pub file_size: u64,
    pub block_size: u32,
    pub blocks: u64,
    /// Bytes of boot data (what the VM reads from the boot image).
    pub logical_bytes: u64,
    pub chunks: u64,
    /// Raw bytes of chunks no other VMI references.
    pub unique_bytes: u64,
    /// Raw bytes of its distinct chunks that other VMIs reference too.
    pub shared_bytes: u64,
    pub identity: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct StoreStats {
    pub chunking: Chunking,
    pub zstd_level: i32,
    pub vmis: u64,
    /// Sum of every VMI's boot data.
    pub logical_bytes: u64,
    /// Live chunks (referenced by at least one VMI).
    pub chunks: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    /// Unreferenced chunks awaiting gc.
    pub garbage_chunks: u64,
    pub garbage_bytes: u64,
    /// The store directory on disk (RocksDB files, WAL, metadata).
    pub disk_bytes: u64,
    /// Where `disk_bytes` goes: table files per column family and blob
    /// files (the packs), by name; the rest is RocksDB's own files.
    pub disk_parts: std::collections::BTreeMap<String, u64>,
    /// logical / raw: what deduplication saves.
    pub dedup_ratio: f64,
    /// raw / stored: what zstd saves.
    pub compression_ratio: f64,
    /// logical / stored.
    pub total_ratio: f64,
}

pub fn stats(store: &Store) -> Result<(Vec<VmiStats>, StoreStats)> {
    // Chunk ids are BLAKE3 hashes; foldhash (randomly seeded) hashes them
    // several times faster than SipHash, and this map is asked once per
    // chunk reference of every manifest (a million at 1000 VMIs).
    let infos: Vec<(ChunkId, ChunkInfo)> = store.chunk_infos()?;
    let mut refs: HashMap<ChunkId, u64, RandomState> =
        HashMap::with_capacity_and_hasher(infos.len(), RandomState::default());
    refs.extend(infos.iter().map(|(id, info)| (*id, info.refs)));
    let mut vmis = Vec::new();
    let mut failed = None;
    store.each_manifest(|name, manifest| {
        let m = match manifest {
            Ok(m) => m,
            Err(e) => {
                failed.get_or_insert(e);
                return;
            }
        };
        let mut v = VmiStats {
            name: name.to_owned(),
            file_size: m.file_size,
            block_size: m.block_size,
            blocks: m.blocks.len() as u64,
            logical_bytes: m.stream_len(),
            chunks: m.chunks.len() as u64,
            unique_bytes: 0,
            shared_bytes: 0,
            identity: m.identity.to_hex(),
        };
        for c in m.distinct_chunks() {
            if refs.get(&c.id).copied().unwrap_or(0) > 1 {
                v.shared_bytes += u64::from(c.len);
            } else {
                v.unique_bytes += u64::from(c.len);
            }
        }
        vmis.push(v);
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    let mut s = StoreStats {
        chunking: store.config().chunking,
        zstd_level: store.config().zstd_level,
        vmis: vmis.len() as u64,
        logical_bytes: vmis.iter().map(|v| v.logical_bytes).sum(),
        chunks: 0,
        raw_bytes: 0,
        stored_bytes: 0,
        garbage_chunks: 0,
        garbage_bytes: 0,
        disk_bytes: store.disk_usage()?,
        disk_parts: store.table_bytes()?.into_iter().collect(),
        dedup_ratio: 0.0,
        compression_ratio: 0.0,
        total_ratio: 0.0,
    };
    for (_, info) in &infos {
        if info.refs == 0 {
            s.garbage_chunks += 1;
            s.garbage_bytes += u64::from(info.stored_len);
        } else {
            s.chunks += 1;
            s.raw_bytes += u64::from(info.raw_len);
            s.stored_bytes += u64::from(info.stored_len);
        }
    }
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    s.dedup_ratio = ratio(s.logical_bytes, s.raw_bytes);
    s.compression_ratio = ratio(s.raw_bytes, s.stored_bytes);
    s.total_ratio = ratio(s.logical_bytes, s.stored_bytes);
    Ok((vmis, s))
}
