//! Refcounts. A chunk's refcount is the number of manifests that reference
//! it; a manifest that uses a chunk twice counts once. Every change to the
//! set of manifests (import, rm, pull) goes through [`ManifestChanges`], so
//! this rule is written once: the change of each name is taken once, from
//! the manifest the store holds to the one it will hold.

use std::collections::{BTreeMap, HashMap};

use crate::id::ChunkId;
use crate::manifest::Manifest;
use crate::store::{Batch, ChunkInfo, Store};
use crate::{Error, Result};

/// How each chunk's refcount changes when one name's manifest goes from
/// `old` to `new` (`None`: no manifest), added into `into`.
pub(crate) fn delta(
    old: Option<&Manifest>,
    new: Option<&Manifest>,
    into: &mut HashMap<ChunkId, i64>,
) {
    // The same chunks again (a re-import): nothing changes.
    if let (Some(old), Some(new)) = (old, new) {
        if old.chunks == new.chunks {
            return;
        }
    }
    for chunk in new.iter().flat_map(|m| m.distinct_chunks()) {
        *into.entry(chunk.id).or_default() += 1;
    }
    for chunk in old.iter().flat_map(|m| m.distinct_chunks()) {
        *into.entry(chunk.id).or_default() -= 1;
    }
}

/// A set of manifest puts and deletes, applied with their refcount changes
/// in one batch. A name given twice is changed once: the last change wins.
#[derive(Default)]
pub(crate) struct ManifestChanges {
    by_name: BTreeMap<String, Option<Manifest>>,
}

impl ManifestChanges {
    pub fn put(&mut self, name: &str, manifest: Manifest) {
        self.by_name.insert(name.to_string(), Some(manifest));
    }

    pub fn delete(&mut self, name: &str) {
        self.by_name.insert(name.to_string(), None);
    }

    /// The batch that makes the changes: manifests and refs records
    /// together. Deleting a name the store does not have is an error.
    /// `known` holds refs records the caller has read or written (newer
    /// than the store's, e.g. chunks written in this batch's run); the rest
    /// are read here, and `known` is updated with the new counts. The
    /// caller holds the write lock until the batch is written.
    pub fn batch<'s>(
        &self,
        store: &'s Store,
        known: &mut HashMap<ChunkId, ChunkInfo>,
    ) -> Result<Batch<'s>> {
        let mut change: HashMap<ChunkId, i64> = HashMap::new();
        let mut batch = store.batch();
        for (name, new) in &self.by_name {
            let old = match store.manifest(name) {
                Ok(old) => Some(old),
                Err(Error::UnknownVmi(_)) if new.is_some() => None,
                Err(e) => return Err(e),
            };
            delta(old.as_ref(), new.as_ref(), &mut change);
            if new.is_none() {
                batch.delete_manifest(name)?;
            }
        }
        // A stored manifest names its chunks by number: every chunk of a
        // new one needs its refs record, not only those whose count moves.
        let unknown: Vec<ChunkId> = self
            .by_name
            .values()
            .flatten()
            .flat_map(|m| m.chunks.iter().map(|c| c.id))
            .filter(|id| !known.contains_key(id))
            .collect();
        if !unknown.is_empty() {
            known.extend(store.chunk_infos_of(unknown)?);
        }
        for (name, new) in &self.by_name {
            if let Some(manifest) = new {
                batch.put_manifest(name, manifest, known)?;
            }
        }
        for (id, change) in change {
            if change == 0 {
                continue;
            }
            let mut info = match known.get(&id) {
                Some(info) => *info,
                None => store.chunk_info(&id)?.ok_or_else(|| {
                    Error::CorruptStore(format!("chunk {id} is referenced but has no refs record"))
                })?,
            };
            info.refs = info.refs.checked_add_signed(change).ok_or_else(|| {
                Error::CorruptStore(format!("refcount of chunk {id} would go below zero"))
            })?;
            batch.put_refs(&id, &info)?;
            known.insert(id, info);
        }
        Ok(batch)
    }
}
