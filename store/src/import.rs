//! `import`: cut a boot image's block streams into chunks, store the chunks
//! the store lacks, and register one manifest per file, all in one atomic,
//! synced write.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::UsageFault;
use crate::format::{BootImage, FileImage};
use crate::id::ChunkId;
use crate::manifest::{ChunkRef, Manifest};
use crate::name::validate_name;
use crate::pack::{runs, PACK_BYTES};
use crate::refcount::ManifestChanges;
use crate::store::{Batch, ChunkInfo, NewPack, Store};
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
        return Err(UsageFault::NameNeedsOneFile {
            files: image.files.len(),
        }
        .into());
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

    // Which chunks does the store lack? Those are packed in the order the
    // boot images first use them, so a boot image loads from few packs.
    let mut seen = HashSet::new();
    let mut distinct_chunks: Vec<(ChunkId, &[u8], u64)> = Vec::new();
    for cut in cuts {
        for (id, range) in &cut.chunks {
            if seen.insert(*id) {
                distinct_chunks.push((*id, &cut.file.data[range.clone()], 0));
            }
        }
    }
    let mut current = store.chunk_infos_of(distinct_chunks.iter().map(|c| c.0).collect())?;
    distinct_chunks.retain(|(id, _, _)| !current.contains_key(id));
    // First the new chunks, unreferenced (refcount 0) and durable; then,
    // in one synced batch, the manifests and every refcount change. A crash
    // in between leaves garbage for gc, never a dangling reference.
    let mut report = ImportReport::default();
    store_new_chunks(store, &distinct_chunks, &mut current, &mut report)?;

    let manifests: Vec<(String, Manifest)> = cuts
        .iter()
        .map(|cut| {
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
            (cut.name.clone(), manifest)
        })
        .collect();
    // The new packs must be durable before the batch that references
    // them; the flush is mostly waiting on the disk, so the batch is built
    // meanwhile.
    let batch = std::thread::scope(|scope| {
        let flush = scope.spawn(|| match distinct_chunks.is_empty() {
            true => Ok(()),
            false => store.flush_chunks(),
        });
        let batch = manifests_batch(store, &manifests, &mut current);
        flush
            .join()
            .unwrap_or_else(|_| Err(Error::Panicked { what: "flush" }))?;
        batch
    })?;
    store.write(batch)?;
    store.settle()?;
    for (name, manifest) in &manifests {
        report.names.push(name.clone());
        report.logical_bytes += manifest.stream_len();
        report.chunks += manifest.chunks.len() as u64;
    }
    Ok(report)
}

/// Registers `manifests` (replacing any of the same name) and applies every
/// refcount change, in one synced batch. Every chunk they reference must be
/// stored already; `known` holds the refs records the caller has read or
/// written, the rest are read here. The caller holds the write lock. Then
/// settles the store, as an import does.
pub(crate) fn register_manifests(
    store: &Store,
    manifests: &[(String, Manifest)],
    known: &mut HashMap<ChunkId, ChunkInfo>,
) -> Result<()> {
    store.write(manifests_batch(store, manifests, known)?)?;
    store.settle()
}

/// The batch [`register_manifests`] writes.
fn manifests_batch<'s>(
    store: &'s Store,
    manifests: &[(String, Manifest)],
    known: &mut HashMap<ChunkId, ChunkInfo>,
) -> Result<Batch<'s>> {
    let mut changes = ManifestChanges::default();
    for (name, manifest) in manifests {
        changes.put(name, manifest.clone());
    }
    changes.batch(store, known)
}

/// Packs, compresses and writes `chunks` (which the store lacks, refcount
/// 0), a window of packs at a time: rayon compresses one window while a
/// writer thread puts the previous one into RocksDB, so writing hides
/// behind compression. Records each new chunk's refs record in `current`
/// and its sizes in `report`. They are durable after `flush_chunks`.
fn store_new_chunks(
    store: &Store,
    chunks: &[(ChunkId, &[u8], u64)],
    current: &mut HashMap<ChunkId, ChunkInfo>,
    report: &mut ImportReport,
) -> Result<()> {
    if chunks.is_empty() {
        return Ok(());
    }
    const WINDOW_BYTES: usize = 16 * PACK_BYTES;
    std::thread::scope(|scope| {
        let (to_writer, windows) = std::sync::mpsc::sync_channel::<Batch>(1);
        let writer = scope.spawn(move || -> Result<()> {
            for batch in windows {
                store.write_unreferenced_chunks(batch)?;
            }
            Ok(())
        });
        for window in runs(chunks, WINDOW_BYTES, |(_, raw, _)| raw.len()) {
            let packs = store.build_packs(&chunks[window], &HashMap::new())?;
            let batch = new_packs_batch(store, &packs, current, report)?;
            if to_writer.send(batch).is_err() {
                break; // the writer failed; its error is returned below
            }
        }
        drop(to_writer);
        writer.join().unwrap_or_else(|_| {
            Err(Error::Panicked {
                what: "chunk writer",
            })
        })
    })
}

/// A batch that stores `packs` with their chunks' refs records, which it
/// also records in `current` and counts in `report`.
pub(crate) fn new_packs_batch<'s>(
    store: &'s Store,
    packs: &[NewPack],
    current: &mut HashMap<ChunkId, ChunkInfo>,
    report: &mut ImportReport,
) -> Result<Batch<'s>> {
    // Sized up front: growing a large batch copies it each time.
    let bytes: usize = packs
        .iter()
        .map(|p| p.value.len() + 80 * p.chunks.len() + 32)
        .sum();
    let mut batch = store.batch_with_capacity(bytes);
    batch.put_packs(packs)?;
    for pack in packs {
        for (id, info) in &pack.chunks {
            current.insert(*id, *info);
            report.new_chunks += 1;
            report.new_raw_bytes += u64::from(info.raw_len);
            report.new_stored_bytes += u64::from(info.stored_len);
        }
    }
    Ok(batch)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::format::FileHeader;
    use crate::id::FileIdentity;

    /// Every chunk a VMI's manifest references, read back in order: its
    /// block stream.
    pub(crate) fn stream(store: &Store, name: &str) -> Vec<u8> {
        let manifest = store.manifest(name).unwrap();
        manifest
            .chunks
            .iter()
            .flat_map(|c| store.read_chunk(&c.id).unwrap())
            .collect()
    }

    /// An image of `blocks` distinct pseudo-random 4 KiB blocks, in reverse
    /// order: enough to take several compression windows.
    pub(crate) fn image(blocks: u64, seed: u64) -> BootImage {
        let mut x = seed | 1;
        let data: Vec<u8> = (0..blocks * 4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 7) as u8 // compressible, never all equal
            })
            .collect();
        BootImage {
            block_size: 4096,
            files: vec![FileImage {
                header: FileHeader {
                    name: format!("vmi{seed}"),
                    file_size: blocks * 4096,
                    identity: FileIdentity([seed as u8; 32]),
                    blocks: (0..blocks).rev().collect(),
                },
                data,
            }],
        }
    }

    #[test]
    fn existence_lookups_agree_whether_they_scan_or_multiget() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(&dir.path().join("s"), None).unwrap();
        import(&store, &image(3000, 5), &ImportOptions::default()).unwrap();
        let stored: Vec<ChunkId> = (store.manifest("vmi5").unwrap())
            .distinct_chunks()
            .iter()
            .map(|c| c.id)
            .collect();
        let absent: Vec<ChunkId> = (0..50u32).map(|i| ChunkId::of(&i.to_le_bytes())).collect();
        // Few ids: point lookups. Most of the store: one pass over the keys.
        for take in [7, stored.len()] {
            let mut ids: Vec<ChunkId> = stored[..take].to_vec();
            ids.extend(&absent);
            let found = store.chunk_infos_of(ids).unwrap();
            assert_eq!(found.len(), take);
            for id in &stored[..take] {
                assert_eq!(found[id], store.chunk_info(id).unwrap().unwrap());
            }
        }
    }

    #[test]
    fn a_large_import_stores_every_chunk_once_and_reimport_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(&dir.path().join("s"), None).unwrap();
        let img = image(5000, 3);
        let first = import(&store, &img, &ImportOptions::default()).unwrap();
        assert_eq!(first.new_chunks, 5000);
        assert!(first.new_stored_bytes < first.new_raw_bytes);
        assert!(stream(&store, "vmi3") == img.files[0].data);
        let again = import(&store, &img, &ImportOptions::default()).unwrap();
        assert_eq!((again.new_chunks, again.new_raw_bytes), (0, 0));
        let report = crate::verify::verify(&store).unwrap();
        assert!(report.is_clean(), "{:?}", report.problems);
        assert_eq!(report.chunks, 5000);
    }
}
