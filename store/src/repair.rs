//! `verify --repair`: a corrupt or missing chunk is rebuilt from a VMI file
//! that uses it and still is the file its boot image was recorded from
//! (same identity). The rebuilt bytes must hash to the chunk's id, so a
//! repair can only restore the original content, never invent it.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rocksdb::WriteBatch;
use serde::Serialize;

use crate::id::{ChunkId, FileIdentity};
use crate::manifest::Manifest;
use crate::name::validate_name;
use crate::store::{pack_key, ChunkInfo, Store, CF_PACKS};
use crate::verify::{Problem, VerifyReport};
use crate::{Error, Result};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RepairReport {
    /// (chunk, the VMI whose file it was rebuilt from)
    pub repaired: Vec<(String, String)>,
    /// (chunk, why no VMI could rebuild it)
    pub unrepaired: Vec<(String, String)>,
}

/// Rebuilds every corrupt or missing chunk `report` names from the VMI
/// files under `images`.
pub fn repair(store: &Store, images: &Path, report: &VerifyReport) -> Result<RepairReport> {
    let mut out = RepairReport::default();
    let mut rebuilt_chunks: Vec<(ChunkId, Vec<u8>, u64)> = Vec::new();
    // Each VMI file is hashed at most once.
    let mut matches: HashMap<String, std::result::Result<Manifest, String>> = HashMap::new();
    for problem in &report.problems {
        let (chunk, used_by) = match problem {
            Problem::CorruptChunk { chunk, used_by, .. } => (chunk, used_by),
            Problem::MissingChunk { chunk, used_by } => (chunk, used_by),
            _ => continue,
        };
        let id: ChunkId = chunk
            .parse()
            .map_err(|e: String| Error::CorruptStore(format!("chunk name {e}")))?;
        let mut whys = Vec::new();
        let mut done = false;
        for vmi in used_by {
            let manifest = matches
                .entry(vmi.clone())
                .or_insert_with(|| matching_manifest(store, images, vmi));
            let rebuilt = match manifest {
                Ok(manifest) => rebuild(&images.join(vmi), manifest, &id),
                Err(why) => Err(why.clone()),
            };
            match rebuilt {
                Ok(raw) => {
                    rebuilt_chunks.push((id, raw, used_by.len() as u64));
                    out.repaired.push((chunk.clone(), vmi.clone()));
                    done = true;
                    break;
                }
                Err(why) => whys.push(format!("{vmi}: {why}")),
            }
        }
        if !done {
            if whys.is_empty() {
                whys.push("no boot image uses it".into());
            }
            out.unrepaired.push((chunk.clone(), whys.join("; ")));
        }
    }
    rewrite(store, &rebuilt_chunks)?;
    Ok(out)
}

/// The VMI's manifest, if its file under `images` is the one recorded.
fn matching_manifest(
    store: &Store,
    images: &Path,
    vmi: &str,
) -> std::result::Result<Manifest, String> {
    validate_name(vmi).map_err(|e| e.to_string())?;
    let manifest = store.manifest(vmi).map_err(|e| e.to_string())?;
    let path = images.join(vmi);
    let identity = FileIdentity::of_file(&path).map_err(|e| e.to_string())?;
    if identity != manifest.identity {
        return Err("the file changed since its boot image was recorded".into());
    }
    Ok(manifest)
}

/// Reads chunk `id`'s bytes back from the VMI file: the part of the boot
/// image's block stream the chunk covers, block by block.
fn rebuild(path: &Path, manifest: &Manifest, id: &ChunkId) -> std::result::Result<Vec<u8>, String> {
    let mut start = 0u64;
    let mut len = None;
    for chunk in &manifest.chunks {
        if chunk.id == *id {
            len = Some(u64::from(chunk.len));
            break;
        }
        start += u64::from(chunk.len);
    }
    let len = len.ok_or("its manifest does not reference the chunk")?;
    let end = start + len;
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bs = u64::from(manifest.block_size);
    let mut raw = Vec::with_capacity(len as usize);
    let mut at = 0u64; // stream offset of the current block
    for &block in &manifest.blocks {
        let block_len = manifest.block_len(block) as u64;
        let (from, to) = (start.max(at), end.min(at + block_len));
        if from < to {
            let mut buf = vec![0u8; (to - from) as usize];
            file.read_exact_at(&mut buf, block * bs + (from - at))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            raw.extend_from_slice(&buf);
        }
        at += block_len;
        if at >= end {
            break;
        }
    }
    if ChunkId::of(&raw) != *id {
        return Err("the file's bytes do not hash to the chunk's id".into());
    }
    Ok(raw)
}

/// Stores the rebuilt chunks in new packs, keeping their refcounts (or
/// setting one to the number of VMIs that use it when its refs record is
/// gone too), and deletes each pack they leave empty, in one synced batch:
/// a repair killed part way leaves the store as it was, or repaired.
fn rewrite(store: &Store, rebuilt: &[(ChunkId, Vec<u8>, u64)]) -> Result<()> {
    if rebuilt.is_empty() {
        return Ok(());
    }
    let _guard = store.write_lock();
    // How many chunks live in each pack, less those that move out.
    let infos: HashMap<ChunkId, ChunkInfo> = store.chunk_infos()?.into_iter().collect();
    let mut remaining: HashMap<u64, u64> = HashMap::new();
    for info in infos.values() {
        *remaining.entry(info.pack).or_default() += 1;
    }
    let mut chunks = Vec::with_capacity(rebuilt.len());
    for (id, raw, users) in rebuilt {
        let info = infos.get(id);
        if let Some(count) = info.and_then(|i| remaining.get_mut(&i.pack)) {
            *count -= 1;
        }
        chunks.push((*id, &raw[..], info.map_or(*users, |i| i.refs)));
    }
    let packs = store.build_packs(&chunks);
    let mut batch = WriteBatch::default();
    store.put_packs(&mut batch, &packs)?;
    for (pack, count) in remaining {
        if count == 0 {
            batch.delete_cf(store.cf(CF_PACKS)?, pack_key(pack));
        }
    }
    store.write(batch)
}
