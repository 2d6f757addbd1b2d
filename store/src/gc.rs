//! `rm` and `gc`. Removing a boot image only drops its manifest and
//! decrements refcounts; chunks that reach zero stay until `gc`, which first
//! computes a plan (printable, testable) and then executes it.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::error::{Disagreement, GcRefusal};
use crate::id::ChunkId;
use crate::pack::decode_pack;
use crate::refcount::ManifestChanges;
use crate::store::{ChunkInfo, Store};
use crate::verify::chunk_users;
use crate::{Error, Result};

/// Removes the named boot images in one atomic write; a name given twice
/// is removed once.
pub fn remove(store: &Store, names: &[String]) -> Result<()> {
    let _guard = store.write_lock();
    let mut changes = ManifestChanges::default();
    for name in names {
        changes.delete(name);
    }
    store.write(changes.batch(store, &mut HashMap::new())?)
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcPlan {
    /// Chunks no manifest references.
    pub chunks: Vec<ChunkId>,
    pub raw_bytes: u64,
    /// The deleted chunks' share of their packs' stored bytes: about what
    /// deleting them frees (packs that keep other chunks are rewritten and
    /// recompressed, so the exact figure is known after; see [`GcReport`]).
    pub stored_bytes: u64,
}

pub fn plan_gc(store: &Store) -> Result<GcPlan> {
    let infos = store.chunk_infos()?;
    refcounts_agree(store, &infos)?;
    let mut plan = GcPlan::default();
    for (id, info) in infos {
        if info.refs == 0 {
            plan.chunks.push(id);
            plan.raw_bytes += u64::from(info.raw_len);
            plan.stored_bytes += u64::from(info.stored_len);
        }
    }
    Ok(plan)
}

/// gc deletes what the refcounts call garbage, so it trusts them only when
/// they agree with the manifests: a chunk in use whose count says 0 would
/// be lost.
fn refcounts_agree(store: &Store, infos: &[(ChunkId, ChunkInfo)]) -> Result<()> {
    let mut manifests = store.manifests()?;
    if let Some(at) = manifests.iter().position(|(_, m)| m.is_err()) {
        if let (name, Err(e)) = manifests.swap_remove(at) {
            return Err(Error::GcRefused(GcRefusal::UnreadableManifest {
                name,
                why: Box::new(e),
            }));
        }
    }
    // Every manifest read (the first that did not is refused above).
    let good: Vec<_> = manifests
        .iter()
        .filter_map(|(name, m)| m.as_ref().ok().map(|m| (name.as_str(), m)))
        .collect();
    let users = chunk_users(good);
    let mut wrong = infos.iter().filter_map(|(id, info)| {
        let actual = users.get(id).map_or(0, |u| u.len() as u64);
        (info.refs != actual).then_some(Disagreement::Count {
            id: *id,
            recorded: info.refs,
            actual,
        })
    });
    let known: HashSet<&ChunkId> = infos.iter().map(|(id, _)| id).collect();
    let mut missing = users
        .keys()
        .filter(|id| !known.contains(id))
        .map(|id| Disagreement::NoRecord(*id));
    let first = wrong.next().or_else(|| missing.next());
    if let Some(first) = first {
        let more = wrong.count() + missing.count();
        return Err(Error::GcRefused(GcRefusal::RefcountsDisagree {
            first,
            more,
        }));
    }
    Ok(())
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub deleted_chunks: u64,
    /// Bytes of packs deleted, less the bytes of the packs that replaced
    /// them with their live chunks.
    pub freed_stored_bytes: u64,
    /// Packs that held a deleted chunk, and the packs their live chunks
    /// were rewritten into.
    pub packs_rewritten: u64,
    pub packs_written: u64,
    /// Packs that held a deleted chunk but did not read back whole: they
    /// are left as they are (`verify` names them) rather than copy a corrupt
    /// chunk into a new pack.
    pub packs_unreadable: u64,
    /// Planned chunks that an import revived before gc reached them.
    pub revived_chunks: u64,
    pub disk_before: u64,
    pub disk_after: u64,
}

/// Packs rewritten per synced batch: bounds the memory gc needs.
const PACKS_PER_BATCH: usize = 64;

/// Deletes the plan's chunks that are still unreferenced, then compacts so
/// the space returns to the filesystem. Each chunk's refcount is read again
/// under the write lock: an import that reused it since the plan wins.
/// A pack that held a deleted chunk is rewritten with the chunks it still
/// holds (same refcounts, new pack) and deleted, in the same batch that
/// deletes the dead chunks' refs records.
pub fn execute_gc(store: &Store, plan: &GcPlan) -> Result<GcReport> {
    let mut report = GcReport {
        disk_before: store.disk_usage()?,
        ..GcReport::default()
    };
    {
        let _guard = store.write_lock();
        // Every refs record, read once under the lock: the planned chunks'
        // refcounts again, and where the chunks that stay are.
        let infos: HashMap<ChunkId, ChunkInfo> = store.chunk_infos()?.into_iter().collect();
        let mut dead: BTreeMap<u64, Vec<ChunkId>> = BTreeMap::new();
        for id in &plan.chunks {
            match infos.get(id) {
                Some(info) if info.refs == 0 => dead.entry(info.pack).or_default().push(*id),
                Some(_) => report.revived_chunks += 1,
                None => {}
            }
        }
        // How many live chunks each pack holds, so a pack that cannot be
        // rewritten is still deleted when nothing else lives in it.
        let dead_ids: HashSet<ChunkId> = dead.values().flatten().copied().collect();
        let mut live_in: HashMap<u64, u64> = HashMap::new();
        for (id, info) in &infos {
            if !dead_ids.contains(id) {
                *live_in.entry(info.pack).or_default() += 1;
            }
        }
        let packs: Vec<(u64, Vec<ChunkId>)> = dead.into_iter().collect();
        for window in packs.chunks(PACKS_PER_BATCH) {
            collect_packs(store, window, &infos, &live_in, &mut report)?;
        }
    }
    store.compact()?;
    report.disk_after = store.disk_usage()?;
    Ok(report)
}

/// One synced batch: deletes the `dead` chunks of each pack, and rewrites
/// the pack's other chunks into new packs.
fn collect_packs(
    store: &Store,
    dead: &[(u64, Vec<ChunkId>)],
    infos: &HashMap<ChunkId, ChunkInfo>,
    live_in: &HashMap<u64, u64>,
    report: &mut GcReport,
) -> Result<()> {
    let pack_ids: Vec<u64> = dead.iter().map(|(pack, _)| *pack).collect();
    let values = store.read_encoded_packs(&pack_ids)?;
    let mut batch = store.batch();
    let mut keep: Vec<(ChunkId, Vec<u8>, u64)> = Vec::new();
    let mut freed = 0u64;
    for ((pack_id, dead_ids), value) in dead.iter().zip(values) {
        for id in dead_ids {
            batch.delete_refs(id)?;
            if let Some(info) = infos.get(id) {
                batch.delete_number(info.number)?;
            }
            report.deleted_chunks += 1;
        }
        let Some(value) = value else { continue };
        if live_in.get(pack_id).copied().unwrap_or(0) == 0 {
            batch.delete_pack(*pack_id)?;
            report.packs_rewritten += 1;
            freed += value.len() as u64;
            continue;
        }
        let Ok(pack) = decode_pack(&value, store.config().chunking.max_len()) else {
            report.packs_unreadable += 1;
            continue;
        };
        let dead_ids: HashSet<&ChunkId> = dead_ids.iter().collect();
        // A chunk stays if its refs record still places it here (repair may
        // have moved it to another pack). A chunk that should stay but whose
        // bytes no longer hash to its id is not found: then the pack is left
        // for `verify --repair` rather than rewritten without it.
        let mut live = Vec::new();
        for (id, offset, raw) in pack.identified() {
            if dead_ids.contains(&id) {
                continue;
            }
            if let Some(info) = infos.get(&id) {
                if info.pack == *pack_id && info.offset == offset {
                    live.push((id, raw.to_vec(), info.refs));
                }
            }
        }
        if (live.len() as u64) < live_in.get(pack_id).copied().unwrap_or(0) {
            report.packs_unreadable += 1;
            continue;
        }
        batch.delete_pack(*pack_id)?;
        report.packs_rewritten += 1;
        freed += value.len() as u64;
        keep.extend(live);
    }
    let keep_refs: Vec<(ChunkId, &[u8], u64)> = keep
        .iter()
        .map(|(id, raw, refs)| (*id, &raw[..], *refs))
        .collect();
    // Moved chunks keep their numbers: manifests name them by it.
    let numbers: HashMap<ChunkId, u32> = keep
        .iter()
        .filter_map(|(id, _, _)| Some((*id, infos.get(id)?.number)))
        .collect();
    let new_packs = store.build_packs(&keep_refs, &numbers)?;
    for pack in &new_packs {
        freed = freed.saturating_sub(pack.value.len() as u64);
    }
    report.packs_written += new_packs.len() as u64;
    report.freed_stored_bytes += freed;
    batch.put_packs(&new_packs)?;
    store.write(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::tests::{image, stream};
    use crate::import::{import, ImportOptions};

    #[test]
    fn gc_rewrites_packs_around_the_chunks_others_still_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(&dir.path().join("s"), None).unwrap();
        // `b` shares every other block of `a`, so every pack of `a` holds
        // chunks that must survive its removal.
        let a = image(600, 1);
        let mut b = image(600, 2);
        for block in (0..600).step_by(2) {
            let r = block * 4096..(block + 1) * 4096;
            b.files[0].data[r.clone()].copy_from_slice(&a.files[0].data[r]);
        }
        import(&store, &a, &ImportOptions::default()).unwrap();
        import(&store, &b, &ImportOptions::default()).unwrap();
        let before = stream(&store, "vmi2");
        remove(&store, &["vmi1".to_string()]).unwrap();
        let plan = plan_gc(&store).unwrap();
        assert_eq!(plan.chunks.len(), 300);
        let report = execute_gc(&store, &plan).unwrap();
        assert_eq!(report.deleted_chunks, 300);
        assert!(report.packs_rewritten >= 9, "{report:?}");
        assert!(report.packs_written >= 4, "{report:?}");
        assert!(report.freed_stored_bytes > 0, "{report:?}");
        assert!(stream(&store, "vmi2") == before);
        let verified = crate::verify::verify(&store).unwrap();
        assert!(verified.is_clean(), "{:?}", verified.problems);
        assert_eq!(verified.chunks, 600);
        // Nothing left to collect, and a second gc changes nothing.
        assert!(plan_gc(&store).unwrap().chunks.is_empty());
    }

    #[test]
    fn gc_refuses_refcounts_that_disagree_naming_the_first_and_counting_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(&dir.path().join("s"), None).unwrap();
        import(&store, &image(600, 1), &ImportOptions::default()).unwrap();
        let chunks = store.manifest("vmi1").unwrap().distinct_chunks();
        for chunk in &chunks[..3] {
            store.set_refcount(&chunk.id, 0).unwrap();
        }
        let err = plan_gc(&store).unwrap_err();
        let Error::GcRefused(GcRefusal::RefcountsDisagree {
            first:
                Disagreement::Count {
                    id,
                    recorded: 0,
                    actual: 1,
                },
            more: 2,
        }) = err
        else {
            panic!("{err}");
        };
        assert!(chunks[..3].iter().any(|c| c.id == id));
        let text = err.to_string();
        assert!(text.contains(&format!(
            "chunk {id}: 0 recorded, 1 manifest(s) use it, and 2 more"
        )));
        assert!(
            text.starts_with("gc refused: the refcounts disagree"),
            "{text}"
        );
    }
}
