//! `import`: cut a boot image's block streams into chunks, store the chunks
//! the store lacks, and register one manifest per file, all in one atomic,
//! synced write.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use rayon::prelude::*;
use rocksdb::WriteBatch;
use serde::Serialize;

use crate::codec::encode_chunk;
use crate::format::{BootImage, FileImage};
use crate::id::ChunkId;
use crate::manifest::{ChunkRef, Manifest};
use crate::name::validate_name;
use crate::store::{ChunkInfo, Store, CF_CHUNKS, CF_MANIFESTS, CF_REFS};
use crate::{Error, Result};

#[derive(Default)]
pub struct ImportOptions<'a> {
    /// Register the (single) file under this name instead of its own.
    pub name: Option<&'a str>,
    /// Called with the number of bytes chunked and hashed so far.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    pub names: Vec<String>,
    /// Block data in the imported boot images.
    pub logical_bytes: u64,
    /// Chunk references in the new manifests.
    pub chunks: u64,
    /// Chunks that were not in the store before.
    pub new_chunks: u64,
    pub new_raw_bytes: u64,
    pub new_stored_bytes: u64,
}

impl ImportReport {
    /// Logical bytes per new raw byte stored (infinite when nothing was new).
    pub fn dedup_ratio(&self) -> f64 {
        self.logical_bytes as f64 / self.new_raw_bytes as f64
    }

    pub fn compression_ratio(&self) -> f64 {
        self.new_raw_bytes as f64 / self.new_stored_bytes as f64
    }
}

/// A file cut into chunks, before anything is written.
struct Cut<'a> {
    name: String,
    file: &'a FileImage,
    chunks: Vec<(ChunkId, Range<usize>)>,
}

pub fn import(store: &Store, image: &BootImage, opts: &ImportOptions) -> Result<ImportReport> {
    if opts.name.is_some() && image.files.len() != 1 {
        return Err(Error::Invalid(format!(
            "--name needs a boot image with one file; this one has {}",
            image.files.len()
        )));
    }
    let mut done = 0u64;
    let mut cuts = Vec::with_capacity(image.files.len());
    for file in &image.files {
        let name = opts.name.unwrap_or(&file.header.name).to_string();
        validate_name(&name)?;
        cuts.push(cut_file(store, image.block_size, name, file));
        done += file.data.len() as u64;
        if let Some(progress) = opts.progress {
            progress(done);
        }
    }
    commit(store, image.block_size, &cuts)
}

fn cut_file<'a>(store: &Store, block_size: u32, name: String, file: &'a FileImage) -> Cut<'a> {
    let header = &file.header;
    let lens = store.config().chunking.cut(
        &file.data,
        block_size,
        header
            .blocks
            .iter()
            .map(|&id| header.block_len(block_size, id)),
    );
    let mut ranges = Vec::with_capacity(lens.len());
    let mut at = 0;
    for len in lens {
        ranges.push(at..at + len);
        at += len;
    }
    let chunks = ranges
        .into_par_iter()
        .map(|r| (ChunkId::of(&file.data[r.clone()]), r))
        .collect();
    Cut { name, file, chunks }
}

fn commit(store: &Store, block_size: u32, cuts: &[Cut]) -> Result<ImportReport> {
    // Held from the existence check to the write: gc cannot delete a chunk
    // this import has decided to reuse instead of storing.
    let _guard = store.write_lock();
    let refs_cf = store.cf(CF_REFS)?;

    // Which chunks does the store lack? Compress those, once each.
    let mut raw_of: HashMap<ChunkId, &[u8]> = HashMap::new();
    for cut in cuts {
        for (id, range) in &cut.chunks {
            raw_of.entry(*id).or_insert(&cut.file.data[range.clone()]);
        }
    }
    // Sorted, so RocksDB can look them up in key order.
    let mut ids: Vec<ChunkId> = raw_of.keys().copied().collect();
    ids.sort_unstable();
    let mut current: HashMap<ChunkId, ChunkInfo> = HashMap::with_capacity(ids.len());
    let found = store
        .db()
        .batched_multi_get_cf(refs_cf, ids.iter().map(|id| id.as_bytes()), true);
    for (id, value) in ids.iter().zip(found) {
        if let Some(value) = value? {
            current.insert(*id, ChunkInfo::decode(&value)?);
        }
    }
    let level = store.config().zstd_level;
    let new_chunks: Vec<(ChunkId, Vec<u8>, u32)> = ids
        .par_iter()
        .filter(|id| !current.contains_key(id))
        .map(|id| {
            let raw = raw_of[id];
            (*id, encode_chunk(raw, level), raw.len() as u32)
        })
        .collect();

    // Refcount = number of manifests that reference a chunk.
    let mut delta: HashMap<ChunkId, i64> = HashMap::new();
    let mut manifests = Vec::with_capacity(cuts.len());
    for cut in cuts {
        let manifest = Manifest {
            block_size,
            file_size: cut.file.header.file_size,
            identity: cut.file.header.identity,
            blocks: cut.file.header.blocks.clone(),
            chunks: cut
                .chunks
                .iter()
                .map(|(id, r)| ChunkRef {
                    id: *id,
                    len: r.len() as u32,
                })
                .collect(),
        };
        for id in distinct(&manifest) {
            *delta.entry(id).or_default() += 1;
        }
        match store.manifest(&cut.name) {
            Ok(old) => {
                for id in distinct(&old) {
                    *delta.entry(id).or_default() -= 1;
                }
            }
            Err(Error::UnknownVmi(_)) => {}
            Err(e) => return Err(e),
        }
        manifests.push((cut.name.clone(), manifest));
    }
    // Chunks only the replaced manifests referenced are not in `current` yet.
    let missing: Vec<ChunkId> = delta
        .keys()
        .filter(|id| !raw_of.contains_key(id))
        .copied()
        .collect();
    for id in missing {
        let info = store.chunk_info(&id)?.ok_or_else(|| {
            Error::CorruptStore(format!(
                "a stored manifest references chunk {id}, which has no refs record"
            ))
        })?;
        current.insert(id, info);
    }

    // First the new chunks, unreferenced (refcount 0) and durable; then,
    // in one synced batch, the manifests and every refcount change. A crash
    // in between leaves garbage for gc, never a dangling reference.
    let mut report = ImportReport::default();
    let chunks_cf = store.cf(CF_CHUNKS)?;
    // Sized up front: growing a batch of a hundred MiB copies it each time.
    let batch_bytes: usize = new_chunks.iter().map(|(_, v, _)| v.len() + 80).sum();
    let mut chunk_batch = WriteBatch::with_capacity_bytes(batch_bytes + 64);
    for (id, stored, raw_len) in &new_chunks {
        let info = ChunkInfo {
            refs: 0,
            raw_len: *raw_len,
            stored_len: stored.len() as u32,
        };
        chunk_batch.put_cf(chunks_cf, id.as_bytes(), stored);
        chunk_batch.put_cf(refs_cf, id.as_bytes(), info.encode());
        current.insert(*id, info);
        report.new_chunks += 1;
        report.new_raw_bytes += u64::from(*raw_len);
        report.new_stored_bytes += stored.len() as u64;
    }
    if !new_chunks.is_empty() {
        store.write_unreferenced_chunks(chunk_batch)?;
    }
    drop(new_chunks);
    let mut batch = WriteBatch::default();
    for (id, change) in &delta {
        if *change == 0 {
            continue;
        }
        let mut info = current[id];
        info.refs = info.refs.checked_add_signed(*change).ok_or_else(|| {
            Error::CorruptStore(format!("refcount of chunk {id} would go below zero"))
        })?;
        batch.put_cf(refs_cf, id.as_bytes(), info.encode());
    }
    let manifests_cf = store.cf(CF_MANIFESTS)?;
    for (name, manifest) in &manifests {
        batch.put_cf(manifests_cf, name.as_bytes(), manifest.encode());
        report.names.push(name.clone());
        report.logical_bytes += manifest.stream_len();
        report.chunks += manifest.chunks.len() as u64;
    }
    store.write(batch)?;
    Ok(report)
}

pub(crate) fn distinct(manifest: &Manifest) -> HashSet<ChunkId> {
    manifest.chunks.iter().map(|c| c.id).collect()
}
