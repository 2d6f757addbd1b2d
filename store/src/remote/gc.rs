//! Remote gc: drops the chunks no manifest references, under the remote's
//! exclusive lock and only in packs older than a grace period; a push that
//! does not hold a lock (one whose lock lapsed) still has that long to
//! publish its manifest. A pack with no live chunk is deleted; a pack whose
//! live share is low is repacked (its live chunks, checked, into a new
//! pack), the manifests that referenced it are re-encoded, and the index is
//! rewritten as one object. Superseded manifest versions older than the
//! grace period go too. Plan first, then execute (`--dry-run` stops between).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use serde::Serialize;

use super::layout::{self, Index, PackDesc, PackId};
use super::lock::{LockKind, RemoteLock};
use super::{current_versions, ManifestVersion, ObjectDefect, Remote, RemoteFault};
use crate::codec::decode_chunk;
use crate::id::ChunkId;
use crate::manifest::Manifest;
use crate::{Error, Result};

/// A pack is repacked when less than this share of its bytes is live.
const REPACK_SHARE: f64 = 0.5;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RemoteGcPlan {
    pub grace_secs: u64,
    /// Chunks some kept manifest references.
    pub referenced_chunks: u64,
    /// Unreferenced chunks in packs older than the grace period: dropped,
    /// by deleting or repacking their packs.
    pub chunks: Vec<ChunkId>,
    pub bytes: u64,
    /// Unreferenced chunks kept because their pack is younger than the
    /// grace period, or mostly live (not worth a repack).
    pub young_chunks: u64,
    pub kept_dead_chunks: u64,
    /// Packs to delete (no live chunk, or listed by no index), by key.
    pub delete_packs: Vec<String>,
    /// Packs to repack, by key.
    pub repack_packs: Vec<String>,
    /// Superseded manifest versions older than the grace period: to delete.
    pub manifests: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RemoteGcReport {
    pub plan: RemoteGcPlan,
    pub deleted_chunks: u64,
    pub deleted_bytes: u64,
    pub deleted_manifests: u64,
    pub deleted_packs: u64,
    pub repacked_packs: u64,
    /// Manifests re-encoded because a pack they referenced was repacked.
    pub rewritten_manifests: u64,
}

/// What the plan needs again to execute.
struct Known {
    index: Index,
    /// Every kept manifest, with its key, whether it is a name's current
    /// version, and the packs it references.
    manifests: Vec<(ManifestVersion, bool, Manifest, HashSet<PackId>)>,
    /// Packs to repack, with the positions still live.
    repack: Vec<(PackId, Vec<u32>)>,
    delete: Vec<PackId>,
}

/// Computes the plan under the exclusive lock and, unless `dry_run`,
/// executes it under the same lock.
pub fn remote_gc(remote: &Remote, grace: Duration, dry_run: bool) -> Result<RemoteGcReport> {
    let lock = remote.lock(LockKind::Gc)?;
    let (plan, known) = plan(remote, &lock, grace)?;
    let mut report = RemoteGcReport::default();
    if !dry_run {
        execute(remote, &lock, &plan, known, &mut report)?;
    }
    report.plan = plan;
    drop(lock);
    Ok(report)
}

fn plan(remote: &Remote, lock: &RemoteLock, grace: Duration) -> Result<(RemoteGcPlan, Known)> {
    let now = lock.taken_at;
    let old = |written| now.duration_since(written).unwrap_or_default() > grace;
    let mut plan = RemoteGcPlan {
        grace_secs: grace.as_secs(),
        ..RemoteGcPlan::default()
    };
    let max_raw = remote.config()?.map_or(u32::MAX, |c| c.chunking.max_len());
    let (index, _, _) = remote
        .runtime
        .block_on(remote.load_index(None, max_raw, true))?;
    let versions = remote.runtime.block_on(remote.list_manifests())?;
    let current = current_versions(&versions);
    let mut keep: Vec<(ManifestVersion, bool)> = Vec::new();
    for version in versions {
        let is_current = current.get(&version.name).map(|v| v.hash) == Some(version.hash);
        if is_current || !old(version.written) {
            keep.push((version, is_current));
        } else {
            plan.manifests.push(version.key());
        }
    }
    // Every kept manifest is read: deleting on partial knowledge could take
    // a chunk that a manifest we failed to read references.
    let index_ref = &index;
    let decoded: Vec<(ManifestVersion, bool, Manifest, Vec<layout::Place>)> =
        remote.runtime.block_on(
            futures::stream::iter(keep)
                .map(|(version, is_current)| async move {
                    let object = remote.get(&version.key()).await?;
                    let (m, places) = layout::decode_manifest(&version.hash, &object, index_ref)
                        .map_err(|e| {
                            remote.error(RemoteFault::GcStops {
                                key: version.key(),
                                defect: e.into(),
                            })
                        })?;
                    Ok::<_, Error>((version, is_current, m, places))
                })
                .buffer_unordered(remote.options.concurrency)
                .try_collect(),
        )?;
    let mut live: HashMap<PackId, HashSet<u32>> = HashMap::new();
    let mut referenced: HashSet<ChunkId> = HashSet::new();
    // Packs a superseded version references are not repacked: re-encoding
    // that version would make it the newest of its name.
    let mut pinned: HashSet<PackId> = HashSet::new();
    let mut manifests = Vec::new();
    for (version, is_current, manifest, places) in decoded {
        let packs: HashSet<PackId> = places.iter().map(|(p, _)| *p).collect();
        for &(pack, pos) in &places {
            live.entry(pack).or_default().insert(pos);
        }
        if !is_current {
            pinned.extend(packs.iter().copied());
        }
        referenced.extend(manifest.chunks.iter().map(|c| c.id));
        manifests.push((version, is_current, manifest, packs));
    }
    plan.referenced_chunks = referenced.len() as u64;

    let listed = remote.runtime.block_on(remote.list_packs())?;
    let mut known = Known {
        index,
        manifests,
        repack: Vec::new(),
        delete: Vec::new(),
    };
    let mut packs: Vec<&PackDesc> = known.index.packs.values().collect();
    packs.sort_by_key(|p| p.id);
    for desc in packs {
        let Some(&(written, _)) = listed.get(&desc.id) else {
            continue; // listed by an index, gone from the remote: nothing to free
        };
        let live_here = live.get(&desc.id);
        let (mut live_bytes, mut dead) = (0u64, Vec::new());
        for (pos, e) in desc.entries.iter().enumerate() {
            if live_here.is_some_and(|l| l.contains(&(pos as u32))) {
                live_bytes += u64::from(e.stored_len);
            } else {
                dead.push((e.id, e.stored_len));
            }
        }
        if dead.is_empty() {
            continue;
        }
        let dead_bytes: u64 = dead.iter().map(|(_, s)| u64::from(*s)).sum();
        let worth = (live_bytes as f64) < REPACK_SHARE * desc.len() as f64;
        if !old(written) {
            plan.young_chunks += dead.len() as u64;
        } else if live_bytes == 0 {
            known.delete.push(desc.id);
            plan.delete_packs.push(desc.id.key());
        } else if worth && !pinned.contains(&desc.id) {
            let mut positions: Vec<u32> = live_here.into_iter().flatten().copied().collect();
            positions.sort_unstable();
            known.repack.push((desc.id, positions));
            plan.repack_packs.push(desc.id.key());
        } else {
            plan.kept_dead_chunks += dead.len() as u64;
            continue;
        }
        if old(written) {
            plan.bytes += dead_bytes;
            plan.chunks.extend(dead.iter().map(|(id, _)| *id));
        }
    }
    // Packs no index lists: left by a killed push once they are old.
    let mut orphans: Vec<(&PackId, &(std::time::SystemTime, u64))> = listed
        .iter()
        .filter(|(id, _)| !known.index.packs.contains_key(id))
        .collect();
    orphans.sort_by_key(|(id, _)| **id);
    for (id, &(written, size)) in orphans {
        if old(written) {
            known.delete.push(*id);
            plan.delete_packs.push(id.key());
            plan.bytes += size;
        }
    }
    plan.chunks.sort_unstable();
    Ok((plan, known))
}

fn execute(
    remote: &Remote,
    lock: &RemoteLock,
    plan: &RemoteGcPlan,
    known: Known,
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
    if known.delete.is_empty() && known.repack.is_empty() {
        return Ok(());
    }
    let Known {
        index,
        manifests,
        repack,
        delete,
    } = known;

    // 1. New packs with the live chunks of the repacked ones, each chunk
    //    checked on the way: gc must not copy a corrupt chunk forward.
    let mut new_packs: Vec<PackDesc> = Vec::new();
    for (old, positions) in &repack {
        lock.check_held()?;
        let desc = &index.packs[old];
        let bytes = remote.runtime.block_on(async {
            remote
                .objects
                .get_range(&remote.path(&old.key()), 0..desc.len())
                .await
                .map_err(|source| {
                    remote.error(RemoteFault::RequestOn {
                        key: old.key(),
                        source,
                    })
                })
        })?;
        if bytes.len() as u64 != desc.len() {
            return Err(remote.error(RemoteFault::GcStops {
                key: old.key(),
                defect: ObjectDefect::ShorterThanIndex,
            }));
        }
        let offsets = desc.offsets();
        let mut packed = Vec::new();
        let mut entries = Vec::new();
        for &pos in positions {
            let e = desc.entries[pos as usize];
            let at = offsets[pos as usize] as usize;
            let value = &bytes[at..at + e.stored_len as usize];
            decode_chunk(&e.id, value, e.raw_len).map_err(|e| {
                remote.error(RemoteFault::GcStops {
                    key: old.key(),
                    defect: ObjectDefect::Format(e),
                })
            })?;
            packed.extend_from_slice(value);
            entries.push(e);
        }
        let id = PackId::of(&packed);
        remote
            .runtime
            .block_on(remote.put_create(&id.key(), bytes::Bytes::from(packed).into()))?;
        new_packs.push(PackDesc { id, entries });
        report.repacked_packs += 1;
    }

    // 2. One index object for everything that stays, written before the
    //    old ones go, so the merged index always lists every live pack.
    let gone: HashSet<PackId> = delete
        .iter()
        .copied()
        .chain(repack.iter().map(|(id, _)| *id))
        .collect();
    let mut survivors: Vec<PackDesc> = index
        .packs
        .values()
        .filter(|p| !gone.contains(&p.id))
        .cloned()
        .collect();
    survivors.sort_by_key(|p| p.id);
    survivors.extend(new_packs);
    let object = layout::encode_index(&survivors);
    let new_key = format!("index/{}", PackId::of(&object).to_hex());
    lock.check_held()?;
    remote
        .runtime
        .block_on(remote.put_create(&new_key, object.into()))?;
    let mut fresh = Index::default();
    for pack in survivors {
        fresh.add(pack);
    }

    // 3. Manifests that referenced a repacked pack, re-encoded in place
    //    (same name, same hash: only where their chunks are changed).
    let repacked: HashSet<PackId> = repack.iter().map(|(id, _)| *id).collect();
    for (version, _, manifest, packs) in &manifests {
        if packs.is_disjoint(&repacked) {
            continue;
        }
        let object = layout::encode_manifest(manifest, &fresh).map_err(|id| {
            remote.error(RemoteFault::GcStops {
                key: version.key(),
                defect: ObjectDefect::LostInRepack(id),
            })
        })?;
        lock.check_held()?;
        remote
            .runtime
            .block_on(remote.put_overwrite(&version.key(), object.into()))?;
        report.rewritten_manifests += 1;
    }

    // 4. The old index objects, then the packs nothing lists any more.
    lock.check_held()?;
    remote.runtime.block_on(
        futures::stream::iter(index.objects.iter().filter(|k| **k != new_key))
            .map(|key| remote.delete(key))
            .buffer_unordered(remote.options.concurrency)
            .try_collect::<Vec<()>>(),
    )?;
    for batch in gone.iter().collect::<Vec<_>>().chunks(1000) {
        lock.check_held()?;
        remote.runtime.block_on(
            futures::stream::iter(batch.iter())
                .map(|id| async move { remote.delete(&id.key()).await })
                .buffer_unordered(remote.options.concurrency)
                .try_collect::<Vec<()>>(),
        )?;
    }
    report.deleted_packs = delete.len() as u64;
    report.deleted_chunks = plan.chunks.len() as u64;
    report.deleted_bytes = plan.bytes;
    Ok(())
}
