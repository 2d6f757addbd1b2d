//! `push`: the chunks the remote lacks, in packs of a few MiB; then one
//! index object that lists those packs; then the manifests, which reference
//! chunks by pack and position. A killed push leaves whole packs behind (an
//! S3 PUT is atomic) that no index lists: run again, it packs the same
//! chunks into the same bytes, finds those packs present and goes on; gc
//! removes packs no index lists once they are older than the grace period.

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use rayon::prelude::*;
use serde::Serialize;

use super::layout::{self, PackDesc, PackEntry, PackId, PACK_TARGET};
use super::lock::LockKind;
use super::{current_versions, manifest_key, Remote, RemoteFault};
use crate::codec::encode_chunk;
use crate::id::{ChunkId, ManifestHash};
use crate::manifest::Manifest;
use crate::store::Store;
use crate::{Error, Result};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PushReport {
    pub names: Vec<String>,
    /// Distinct chunks the pushed manifests reference.
    pub chunks: u64,
    pub uploaded_chunks: u64,
    /// Pack bytes sent (chunks as stored: compressed).
    pub uploaded_bytes: u64,
    /// Pack objects written, by key.
    pub packs: Vec<String>,
    /// Index bytes written (one object per push that sent packs).
    pub index_bytes: u64,
    /// Index objects on the remote that were refused (with why).
    pub refused_index_objects: Vec<String>,
    /// Chunks the remote had already: the transfer dedup saved.
    pub present_chunks: u64,
    pub present_bytes: u64,
    /// Manifests written; the others were on the remote unchanged.
    pub manifests_uploaded: u64,
    pub manifest_bytes: u64,
}

/// Raw bytes read, checked and packed per step, whatever the chunking.
const WINDOW_BYTES: u64 = 32 << 20;

/// Pushes the named boot images (all when `names` is empty).
pub fn push(store: &Store, remote: &Remote, names: &[String]) -> Result<PushReport> {
    remote.agree_on_config(store.config(), true)?;
    let names = if names.is_empty() {
        store.names()?
    } else {
        names.to_vec()
    };
    let manifests = names
        .iter()
        .map(|name| Ok((name.clone(), store.manifest(name)?)))
        .collect::<Result<Vec<(String, Manifest)>>>()?;
    let lock = remote.lock(LockKind::Push)?;
    let mut report = PushReport {
        names,
        ..PushReport::default()
    };
    let max_raw = store.config().chunking.max_len();
    let cache = super::index_cache(store);
    // An index object that is refused only hides its packs: their chunks
    // count as missing and are sent again, with an index of their own.
    let (mut index, _, refused) =
        remote
            .runtime
            .block_on(remote.load_index(Some(&cache), max_raw, false))?;
    report.refused_index_objects = refused
        .into_iter()
        .map(|(key, why)| format!("{key}: {why}"))
        .collect();

    // Distinct chunks in the order the boot images first use them, so a
    // VMI's own chunks sit together in few packs and a node that lacks
    // only them fetches few ranges.
    let mut seen = std::collections::HashSet::new();
    let mut missing: Vec<ChunkId> = Vec::new();
    for (_, manifest) in &manifests {
        for chunk in &manifest.chunks {
            if !seen.insert(chunk.id) {
                continue;
            }
            match index.chunks.get(&chunk.id) {
                Some(&(pack, pos)) => {
                    report.present_chunks += 1;
                    report.present_bytes +=
                        u64::from(index.packs[&pack].entries[pos as usize].stored_len);
                }
                None => missing.push(chunk.id),
            }
        }
    }
    report.chunks = seen.len() as u64;
    let infos = store.chunk_infos_of(missing.clone())?;
    let total: u64 = infos.values().map(|i| u64::from(i.stored_len)).sum();
    remote.report_progress(0, total);
    let level = store.config().zstd_level;

    // Steps of at most WINDOW_BYTES raw (at least one chunk each).
    let mut windows: Vec<&[ChunkId]> = Vec::new();
    let (mut start, mut raw) = (0usize, 0u64);
    for (i, id) in missing.iter().enumerate() {
        let len = infos.get(id).map_or(0, |info| u64::from(info.raw_len));
        if raw + len > WINDOW_BYTES && i > start {
            windows.push(&missing[start..i]);
            (start, raw) = (i, 0);
        }
        raw += len;
    }
    if start < missing.len() {
        windows.push(&missing[start..]);
    }
    let last = windows.len();
    let mut new_packs: Vec<PackDesc> = Vec::new();
    let mut open = Pack::default();
    for (w, window) in windows.into_iter().enumerate() {
        lock.check_held()?;
        // Checked before it leaves the node (`read_chunk` hashes it): a
        // corrupt local chunk must not reach every other node.
        let raws = window
            .iter()
            .map(|id| store.read_chunk(id))
            .collect::<Result<Vec<_>>>()?;
        let values: Vec<(ChunkId, u32, Vec<u8>)> = window
            .par_iter()
            .zip(raws)
            .map(|(id, raw)| (*id, raw.len() as u32, encode_chunk(&raw, level)))
            .collect();
        let mut full = Vec::new();
        for (id, raw_len, value) in values {
            open.push(id, raw_len, value);
            if open.bytes.len() >= PACK_TARGET {
                full.push(std::mem::take(&mut open));
            }
        }
        if w + 1 == last && !open.entries.is_empty() {
            full.push(std::mem::take(&mut open));
        }
        for (desc, len) in upload_packs(remote, full)? {
            report.uploaded_chunks += desc.entries.len() as u64;
            report.uploaded_bytes += len;
            report.packs.push(desc.id.key());
            new_packs.push(desc);
        }
        remote.report_progress(report.uploaded_bytes, total);
    }

    // The index next: the packs it lists are all on the remote now.
    if !new_packs.is_empty() {
        lock.check_held()?;
        let object = layout::encode_index(&new_packs);
        let key = format!("index/{}", PackId::of(&object).to_hex());
        report.index_bytes = object.len() as u64;
        remote
            .runtime
            .block_on(remote.put_create(&key, object.into()))?;
        for pack in new_packs {
            index.add(pack);
        }
    }

    // Manifests last: each chunk they reference is in an indexed pack.
    lock.check_held()?;
    let versions = remote.runtime.block_on(remote.list_manifests())?;
    let current = current_versions(&versions);
    for (name, manifest) in &manifests {
        let hash = manifest.hash();
        if current.get(name).map(|v| v.hash) == Some(hash) {
            continue;
        }
        let object = layout::encode_manifest(manifest, &index).map_err(|chunk| {
            remote.error(RemoteFault::NotUploaded {
                name: name.clone(),
                chunk,
            })
        })?;
        report.manifests_uploaded += 1;
        report.manifest_bytes += object.len() as u64;
        remote
            .runtime
            .block_on(publish_manifest(remote, name, hash, object, &versions))?;
    }
    drop(lock);
    Ok(report)
}

/// A pack being filled: stored values end to end.
#[derive(Default)]
struct Pack {
    bytes: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl Pack {
    fn push(&mut self, id: ChunkId, raw_len: u32, value: Vec<u8>) {
        self.entries.push(PackEntry {
            id,
            raw_len,
            stored_len: value.len() as u32,
        });
        self.bytes.extend_from_slice(&value);
    }
}

/// Uploads packs, create-only: a pack already there (same bytes, same
/// name) is the one a killed push left, and counts as sent.
fn upload_packs(remote: &Remote, packs: Vec<Pack>) -> Result<Vec<(PackDesc, u64)>> {
    remote.runtime.block_on(
        futures::stream::iter(packs)
            .map(|pack| async move {
                let id = PackId::of(&pack.bytes);
                let len = pack.bytes.len() as u64;
                remote
                    .put_create(&id.key(), bytes::Bytes::from(pack.bytes).into())
                    .await?;
                let desc = PackDesc {
                    id,
                    entries: pack.entries,
                };
                Ok::<_, Error>((desc, len))
            })
            .buffered(remote.options.concurrency.max(1))
            .try_collect(),
    )
}

/// Writes a new current version of `name`'s manifest, then deletes the
/// versions it supersedes.
async fn publish_manifest(
    remote: &Remote,
    name: &str,
    hash: ManifestHash,
    object: Vec<u8>,
    versions: &[super::ManifestVersion],
) -> Result<()> {
    let key = manifest_key(name, &hash);
    let payload = bytes::Bytes::from(object);
    if !remote.put_create(&key, payload.clone().into()).await? {
        // An old, superseded copy of these same bytes: write it anew so it
        // is the newest version.
        remote.delete(&key).await?;
        remote.put_create(&key, payload.into()).await?;
    }
    let written = remote
        .objects
        .head(&remote.path(&key))
        .await
        .map_err(|e| remote.error(RemoteFault::Request(e)))?
        .last_modified
        .into();
    let ours = (written, hash.0);
    // Only older versions: if another node published a newer one meanwhile,
    // it wins, and its push deletes ours.
    for old in versions.iter().filter(|v| v.name == name && v.hash != hash) {
        if old.order() < ours {
            remote.delete(&old.key()).await?;
        }
    }
    Ok(())
}
