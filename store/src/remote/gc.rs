//! Remote gc: deletes the chunks no manifest references, under the remote's
//! exclusive lock and only once they are older than a grace period; a push
//! that does not hold a lock (an old client, a lock that lapsed) still has
//! that long to publish its manifest. Superseded manifest versions older
//! than the grace period go too.

use std::collections::HashSet;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::lock::{LockKind, RemoteLock};
use super::{chunk_key, current_versions, decode_manifest_object, ManifestVersion, Remote};
use crate::id::ChunkId;
use crate::manifest::Manifest;
use crate::Result;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RemoteGcPlan {
    pub grace_secs: u64,
    /// Chunks some manifest references.
    pub referenced_chunks: u64,
    /// Unreferenced chunks older than the grace period: to delete.
    pub chunks: Vec<ChunkId>,
    pub bytes: u64,
    /// Unreferenced chunks kept because they are younger than the grace.
    pub young_chunks: u64,
    /// Superseded manifest versions older than the grace period: to delete.
    pub manifests: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RemoteGcReport {
    pub plan: RemoteGcPlan,
    pub deleted_chunks: u64,
    pub deleted_bytes: u64,
    pub deleted_manifests: u64,
}

/// Computes the plan under the exclusive lock and, unless `dry_run`,
/// executes it under the same lock.
pub fn remote_gc(remote: &Remote, grace: Duration, dry_run: bool) -> Result<RemoteGcReport> {
    let lock = remote.lock(LockKind::Gc)?;
    let plan = plan(remote, &lock, grace)?;
    let mut report = RemoteGcReport::default();
    if !dry_run {
        execute(remote, &lock, &plan, &mut report)?;
    }
    report.plan = plan;
    drop(lock);
    Ok(report)
}

fn plan(remote: &Remote, lock: &RemoteLock, grace: Duration) -> Result<RemoteGcPlan> {
    let now = lock.taken_at;
    let old = |written| now.duration_since(written).unwrap_or_default() > grace;
    let mut plan = RemoteGcPlan {
        grace_secs: grace.as_secs(),
        ..RemoteGcPlan::default()
    };
    let versions = remote.runtime.block_on(remote.list_manifests())?;
    let current = current_versions(&versions);
    let mut keep: Vec<ManifestVersion> = Vec::new();
    for version in versions {
        let is_current = current.get(&version.name).map(|v| v.hash) == Some(version.hash);
        if is_current || !old(version.written) {
            keep.push(version);
        } else {
            plan.manifests.push(version.key());
        }
    }
    // Every kept manifest is read: deleting on partial knowledge could take
    // a chunk that a manifest we failed to read references.
    let referenced: HashSet<ChunkId> = remote
        .runtime
        .block_on(
            futures::stream::iter(keep)
                .map(|version| async move {
                    let object = remote.get(&version.key()).await?;
                    decode_manifest_object(&version.hash, &object)
                        .map_err(|why| remote.error(format!("{}: {why}; gc stops", version.key())))
                })
                .buffer_unordered(remote.options.concurrency)
                .try_collect::<Vec<Manifest>>(),
        )?
        .iter()
        .flat_map(|m| m.chunks.iter().map(|c| c.id))
        .collect();
    plan.referenced_chunks = referenced.len() as u64;
    let mut chunks: Vec<(ChunkId, super::ChunkObject)> = remote
        .runtime
        .block_on(remote.list_chunks())?
        .into_iter()
        .filter(|(id, _)| !referenced.contains(id))
        .collect();
    chunks.sort_unstable_by_key(|(id, _)| *id);
    for (id, object) in chunks {
        if old(object.written) {
            plan.chunks.push(id);
            plan.bytes += object.size;
        } else {
            plan.young_chunks += 1;
        }
    }
    Ok(plan)
}

fn execute(
    remote: &Remote,
    lock: &RemoteLock,
    plan: &RemoteGcPlan,
    report: &mut RemoteGcReport,
) -> Result<()> {
    lock.check_held()?;
    // Superseded manifests first: no chunk goes while a manifest that
    // references it might still be read.
    remote.runtime.block_on(
        futures::stream::iter(&plan.manifests)
            .map(|key| remote.delete(key))
            .buffer_unordered(remote.options.concurrency)
            .try_collect::<Vec<()>>(),
    )?;
    report.deleted_manifests = plan.manifests.len() as u64;
    for batch in plan.chunks.chunks(1000) {
        lock.check_held()?;
        remote.runtime.block_on(
            futures::stream::iter(batch)
                .map(|id| async move { remote.delete(&chunk_key(id)).await })
                .buffer_unordered(remote.options.concurrency)
                .try_collect::<Vec<()>>(),
        )?;
        report.deleted_chunks += batch.len() as u64;
    }
    report.deleted_bytes = plan.bytes;
    Ok(())
}
