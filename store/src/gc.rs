//! `rm` and `gc`. Removing a boot image only drops its manifest and
//! decrements refcounts; chunks that reach zero stay until `gc`, which first
//! computes a plan (printable, testable) and then executes it.

use rocksdb::WriteBatch;
use serde::Serialize;

use crate::id::ChunkId;
use crate::import::distinct;
use crate::store::{Store, CF_CHUNKS, CF_MANIFESTS, CF_REFS};
use crate::{Error, Result};

/// Removes the named boot images in one atomic write.
pub fn remove(store: &Store, names: &[String]) -> Result<()> {
    let _guard = store.write_lock();
    let mut delta = std::collections::HashMap::<ChunkId, u64>::new();
    let mut batch = WriteBatch::default();
    let manifests_cf = store.cf(CF_MANIFESTS)?;
    for name in names {
        let manifest = store.manifest(name)?;
        for id in distinct(&manifest) {
            *delta.entry(id).or_default() += 1;
        }
        batch.delete_cf(manifests_cf, name.as_bytes());
    }
    let refs_cf = store.cf(CF_REFS)?;
    for (id, minus) in delta {
        let mut info = store.chunk_info(&id)?.ok_or_else(|| {
            Error::CorruptStore(format!(
                "manifest references chunk {id}, which has no refs record"
            ))
        })?;
        info.refs = info.refs.checked_sub(minus).ok_or_else(|| {
            Error::CorruptStore(format!("refcount of chunk {id} would go below zero"))
        })?;
        batch.put_cf(refs_cf, id.as_bytes(), info.encode());
    }
    store.write(batch)
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcPlan {
    /// Chunks no manifest references.
    #[serde(serialize_with = "hex_ids")]
    pub chunks: Vec<ChunkId>,
    pub raw_bytes: u64,
    /// Bytes of chunk data that deleting them frees.
    pub stored_bytes: u64,
}

/// Serializes chunk ids as hex strings (gc plans, local and remote).
pub(crate) fn hex_ids<S: serde::Serializer>(
    ids: &[ChunkId],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(ids.iter().map(ChunkId::to_hex))
}

pub fn plan_gc(store: &Store) -> Result<GcPlan> {
    let mut plan = GcPlan::default();
    for (id, info) in store.chunk_infos()? {
        if info.refs == 0 {
            plan.chunks.push(id);
            plan.raw_bytes += u64::from(info.raw_len);
            plan.stored_bytes += u64::from(info.stored_len);
        }
    }
    Ok(plan)
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub deleted_chunks: u64,
    pub freed_stored_bytes: u64,
    /// Planned chunks that an import revived before gc reached them.
    pub revived_chunks: u64,
    pub disk_before: u64,
    pub disk_after: u64,
}

/// Deletes the plan's chunks that are still unreferenced, then compacts so
/// the space returns to the filesystem. Each chunk's refcount is read again
/// under the write lock: an import that reused it since the plan wins.
pub fn execute_gc(store: &Store, plan: &GcPlan) -> Result<GcReport> {
    let mut report = GcReport {
        disk_before: store.disk_usage()?,
        ..GcReport::default()
    };
    {
        let _guard = store.write_lock();
        let (chunks_cf, refs_cf) = (store.cf(CF_CHUNKS)?, store.cf(CF_REFS)?);
        let mut batch = WriteBatch::default();
        for id in &plan.chunks {
            match store.chunk_info(id)? {
                Some(info) if info.refs == 0 => {
                    batch.delete_cf(chunks_cf, id.as_bytes());
                    batch.delete_cf(refs_cf, id.as_bytes());
                    report.deleted_chunks += 1;
                    report.freed_stored_bytes += u64::from(info.stored_len);
                }
                Some(_) => report.revived_chunks += 1,
                None => {}
            }
        }
        store.write(batch)?;
    }
    store.compact()?;
    report.disk_after = store.disk_usage()?;
    Ok(report)
}
