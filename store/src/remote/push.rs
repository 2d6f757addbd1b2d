//! `push`: the chunks the remote lacks, then the manifests that reference
//! them. A killed push leaves only whole chunks behind (an S3 PUT is
//! atomic), so running it again lists them as present and goes on.

use std::collections::BTreeSet;

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use rayon::prelude::*;
use serde::Serialize;

use super::lock::LockKind;
use super::{chunk_key, current_versions, encode_manifest_object, manifest_key, Remote};
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
    pub uploaded_bytes: u64,
    /// Chunks the remote had already: the transfer dedup saved.
    pub present_chunks: u64,
    pub present_bytes: u64,
    /// Manifests written; the others were on the remote unchanged.
    pub manifests_uploaded: u64,
    pub manifest_bytes: u64,
}

/// Chunks read, checked and uploaded per step.
const WINDOW: usize = 1024;

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

    let needed: BTreeSet<ChunkId> = manifests
        .iter()
        .flat_map(|(_, m)| m.chunks.iter().map(|c| c.id))
        .collect();
    report.chunks = needed.len() as u64;
    let on_remote = remote.runtime.block_on(remote.list_chunks())?;
    let mut missing = Vec::new();
    for id in needed {
        match on_remote.get(&id) {
            Some(object) => {
                report.present_chunks += 1;
                report.present_bytes += object.size;
            }
            None => missing.push(id),
        }
    }
    let infos = store.chunk_infos_of(missing.clone())?;
    // In pack order, so each pack is decoded once.
    missing.sort_by_key(|id| infos.get(id).map(|i| (i.pack, i.offset)));
    let total: u64 = infos.values().map(|i| u64::from(i.stored_len)).sum();
    remote.report_progress(0, total);
    let level = store.config().zstd_level;

    for window in missing.chunks(WINDOW) {
        lock.check_held()?;
        // Checked before it leaves the node (`read_chunk` hashes it): a
        // corrupt local chunk must not reach every other node. On the
        // remote each chunk is an object of its own.
        let raws = window
            .iter()
            .map(|id| store.read_chunk(id))
            .collect::<Result<Vec<_>>>()?;
        let checked: Vec<(ChunkId, bytes::Bytes)> = window
            .par_iter()
            .zip(raws)
            .map(|(id, raw)| (*id, bytes::Bytes::from(encode_chunk(&raw, level))))
            .collect();
        let sent: Vec<(bool, u64)> = remote.runtime.block_on(
            futures::stream::iter(checked)
                .map(|(id, value)| async move {
                    let len = value.len() as u64;
                    let created = remote.put_create(&chunk_key(&id), value.into()).await?;
                    Ok::<_, Error>((created, len))
                })
                .buffer_unordered(remote.options.concurrency)
                .try_collect(),
        )?;
        for (created, len) in sent {
            // Not created: another node pushed the same chunk meanwhile.
            if created {
                report.uploaded_chunks += 1;
                report.uploaded_bytes += len;
            } else {
                report.present_chunks += 1;
                report.present_bytes += len;
            }
        }
        remote.report_progress(report.uploaded_bytes, total);
    }

    // Manifests last: each chunk they reference is on the remote now.
    lock.check_held()?;
    let versions = remote.runtime.block_on(remote.list_manifests())?;
    let current = current_versions(&versions);
    for (name, manifest) in &manifests {
        let (hash, object) = encode_manifest_object(manifest)?;
        if current.get(name).map(|v| v.hash) == Some(hash) {
            continue;
        }
        report.manifests_uploaded += 1;
        report.manifest_bytes += object.len() as u64;
        remote
            .runtime
            .block_on(publish_manifest(remote, name, hash, object, &versions))?;
    }
    drop(lock);
    Ok(report)
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
        .map_err(|e| remote.error(e))?
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
