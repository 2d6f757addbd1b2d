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

use crate::codec::encode_chunk;
use crate::id::{ChunkId, FileIdentity};
use crate::manifest::Manifest;
use crate::name::validate_name;
use crate::store::{ChunkInfo, Store, CF_CHUNKS, CF_REFS};
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
                    rewrite(store, &id, &raw, used_by.len() as u64)?;
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

/// Stores the rebuilt chunk, keeping its refcount (or setting it to the
/// number of VMIs that use it when its refs record is gone too).
fn rewrite(store: &Store, id: &ChunkId, raw: &[u8], users: u64) -> Result<()> {
    let _guard = store.write_lock();
    let stored = encode_chunk(raw, store.config().zstd_level);
    let refs = store.chunk_info(id)?.map_or(users, |info| info.refs);
    let info = ChunkInfo {
        refs,
        raw_len: raw.len() as u32,
        stored_len: stored.len() as u32,
    };
    let mut batch = WriteBatch::default();
    batch.put_cf(store.cf(CF_CHUNKS)?, id.as_bytes(), &stored);
    batch.put_cf(store.cf(CF_REFS)?, id.as_bytes(), info.encode());
    store.write(batch)
}
