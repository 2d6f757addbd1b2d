//! `pull`: the manifests, then only the chunks this store lacks, each
//! checked against its BLAKE3 id before it is stored; then every VMI whose
//! chunks all arrived is registered in one atomic write. Chunks are stored
//! durably as they arrive (unreferenced until then), so a killed pull, run
//! again, fetches only what it had not stored yet.

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt;
use rayon::prelude::*;
use serde::Serialize;

use super::lock::LockKind;
use super::{chunk_key, current_versions, decode_manifest_object, ManifestVersion, Remote};
use crate::codec::decode_chunk;
use crate::id::ChunkId;
use crate::import::{new_packs_batch, register_manifests, ImportReport};
use crate::manifest::Manifest;
use crate::store::Store;
use crate::{Error, Result};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PullReport {
    /// VMIs registered (new or changed).
    pub names: Vec<String>,
    /// VMIs whose local boot image already equals the remote's.
    pub unchanged: Vec<String>,
    /// Distinct chunks the pulled manifests reference.
    pub chunks: u64,
    pub downloaded_chunks: u64,
    /// Chunk bytes moved (as stored: compressed).
    pub downloaded_bytes: u64,
    pub manifest_bytes: u64,
    /// Chunks this store had already: raw bytes the transfer dedup saved.
    pub local_chunks: u64,
    pub local_raw_bytes: u64,
    /// VMIs refused, with why (a corrupt or missing remote object).
    pub failed: Vec<PullFailure>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PullFailure {
    pub name: String,
    /// The remote object at fault.
    pub object: String,
    pub why: String,
}

const WINDOW: usize = 1024;

/// Pulls the named boot images (all on the remote when `names` is empty).
pub fn pull(store: &Store, remote: &Remote, names: &[String]) -> Result<PullReport> {
    remote.agree_on_config(store.config(), false)?;
    let lock = remote.lock(LockKind::Pull)?;
    let mut report = PullReport::default();

    let wanted = wanted_versions(remote, names)?;
    let mut to_fetch = Vec::new();
    for version in wanted {
        match store.manifest(&version.name) {
            Ok(local) if local.hash() == version.hash => report.unchanged.push(version.name),
            Ok(_) | Err(Error::UnknownVmi(_)) => to_fetch.push(version),
            Err(e) => return Err(e),
        }
    }
    let mut manifests: Vec<(String, Manifest)> = Vec::new();
    for (version, fetched) in fetch_manifests(remote, &to_fetch)? {
        // A chunk longer than this store cuts would make decoding it
        // allocate what the remote says: refuse the manifest instead.
        let fetched = fetched.and_then(|(manifest, len)| {
            manifest
                .check_chunk_lens(store.config().chunking.max_len())
                .map(|()| (manifest, len))
        });
        match fetched {
            Ok((manifest, len)) => {
                report.manifest_bytes += len;
                manifests.push((version.name, manifest));
            }
            Err(why) => report.failed.push(PullFailure {
                object: version.key(),
                name: version.name,
                why,
            }),
        }
    }

    // Each distinct chunk with its raw length, which its data must match,
    // in the order the boot images first use them (the order they are
    // packed in).
    let mut raw_len: HashMap<ChunkId, u32> = HashMap::new();
    let mut first_use: Vec<ChunkId> = Vec::new();
    for (_, manifest) in &manifests {
        for chunk in &manifest.chunks {
            if let std::collections::hash_map::Entry::Vacant(e) = raw_len.entry(chunk.id) {
                e.insert(chunk.len);
                first_use.push(chunk.id);
            }
        }
    }
    report.chunks = raw_len.len() as u64;

    // From here to the registration, a local gc must not take the chunks
    // this pull relies on.
    let _guard = store.write_lock();
    let mut known = store.chunk_infos_of(raw_len.keys().copied().collect())?;
    let mut missing: Vec<ChunkId> = Vec::new();
    for id in first_use {
        if known.contains_key(&id) {
            report.local_chunks += 1;
            report.local_raw_bytes += u64::from(raw_len[&id]);
        } else {
            missing.push(id);
        }
    }
    let total: u64 = missing.iter().map(|id| u64::from(raw_len[id])).sum();
    remote.report_progress(0, total);

    let mut bad: BTreeMap<ChunkId, String> = BTreeMap::new();
    let mut done = 0u64;
    for window in missing.chunks(WINDOW) {
        lock.check_held()?;
        let fetched = fetch_chunks(remote, window)?;
        let mut checked: Vec<(ChunkId, CheckedChunk)> = fetched
            .into_par_iter()
            .map(|(id, value)| (id, value.and_then(|v| check_chunk(&id, v, raw_len[&id]))))
            .collect();
        // Fetched out of order; packed in first-use order.
        let position: HashMap<ChunkId, usize> =
            window.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        checked.sort_by_key(|(id, _)| position.get(id).copied());
        let mut good = Vec::with_capacity(checked.len());
        for (id, value) in &checked {
            match value {
                Ok((raw, object_len)) => {
                    report.downloaded_bytes += *object_len as u64;
                    good.push((*id, &raw[..], 0));
                }
                Err(why) => {
                    bad.insert(*id, why.clone());
                }
            }
        }
        // Synced through the WAL, unlike import's chunks: the network is
        // the bottleneck here, and a killed pull keeps every window it
        // finished, so running it again resumes where it stopped.
        let mut counts = ImportReport::default();
        let packs = store.build_packs(&good);
        store.write(new_packs_batch(store, &packs, &mut known, &mut counts)?)?;
        report.downloaded_chunks += counts.new_chunks;
        done += window.iter().map(|id| u64::from(raw_len[id])).sum::<u64>();
        remote.report_progress(done, total);
    }
    let mut complete = Vec::with_capacity(manifests.len());
    for (name, manifest) in manifests {
        match manifest.chunks.iter().find(|c| bad.contains_key(&c.id)) {
            Some(chunk) => report.failed.push(PullFailure {
                object: chunk_key(&chunk.id),
                why: bad[&chunk.id].clone(),
                name,
            }),
            None => complete.push((name, manifest)),
        }
    }
    register_manifests(store, &complete, &mut known)?;
    report.names = complete.into_iter().map(|(name, _)| name).collect();
    drop(lock);
    Ok(report)
}

/// The current version of each wanted name; every name must exist.
fn wanted_versions(remote: &Remote, names: &[String]) -> Result<Vec<ManifestVersion>> {
    let versions = remote.runtime.block_on(remote.list_manifests())?;
    let mut current = current_versions(&versions);
    if names.is_empty() {
        let mut all: Vec<ManifestVersion> = current.into_values().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        return Ok(all);
    }
    names
        .iter()
        .map(|name| {
            current
                .remove(name)
                .ok_or_else(|| remote.error(format!("no boot image named {name:?} on the remote")))
        })
        .collect()
}

/// Downloads and checks manifests: their bytes must hash to their key.
#[allow(clippy::type_complexity)]
fn fetch_manifests(
    remote: &Remote,
    versions: &[ManifestVersion],
) -> Result<
    Vec<(
        ManifestVersion,
        std::result::Result<(Manifest, u64), String>,
    )>,
> {
    remote
        .runtime
        .block_on(
            futures::stream::iter(versions.iter().cloned())
                .map(|version| async move {
                    let bytes = match remote.get_if_exists(&version.key()).await? {
                        Some(bytes) => bytes,
                        None => {
                            let why = "gone: replaced by a newer push; pull again".to_string();
                            return Ok((version, Err(why)));
                        }
                    };
                    let checked = decode_manifest_object(&version.hash, &bytes)
                        .map(|m| (m, bytes.len() as u64));
                    Ok((version, checked))
                })
                // In order: VMIs are registered and reported in the order asked.
                .buffered(remote.options.concurrency)
                .collect::<Vec<Result<_>>>(),
        )
        .into_iter()
        .collect()
}

/// Downloads chunks; a chunk missing on the remote is an `Err` in place,
/// any other failure (after the client's retries) ends the pull.
#[allow(clippy::type_complexity)]
fn fetch_chunks(
    remote: &Remote,
    ids: &[ChunkId],
) -> Result<Vec<(ChunkId, std::result::Result<bytes::Bytes, String>)>> {
    remote
        .runtime
        .block_on(
            futures::stream::iter(ids.iter().copied())
                .map(|id| async move {
                    let value = remote.get_if_exists(&chunk_key(&id)).await?;
                    Ok((id, value.ok_or_else(|| "missing on the remote".to_string())))
                })
                .buffer_unordered(remote.options.concurrency)
                .collect::<Vec<Result<_>>>(),
        )
        .into_iter()
        .collect()
}

/// A chunk's raw bytes and its object's size, or why it was refused.
type CheckedChunk = std::result::Result<(Vec<u8>, usize), String>;

/// A downloaded chunk value is stored only if it decodes to `raw_len`
/// bytes whose BLAKE3 is its id. Returns those bytes and the object's size.
fn check_chunk(id: &ChunkId, value: bytes::Bytes, raw_len: u32) -> CheckedChunk {
    // Read from the header before decoding, so a hostile length cannot make
    // the decoder allocate more than the manifest allows.
    let header_len = value
        .get(1..5)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes);
    if header_len != Some(raw_len) {
        return Err(format!(
            "its header gives {header_len:?} raw bytes, the manifest {raw_len}"
        ));
    }
    let raw = decode_chunk(id, &value, raw_len).map_err(|e| e.to_string())?;
    Ok((raw, value.len()))
}
