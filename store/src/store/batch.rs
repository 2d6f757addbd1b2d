//! Writing the store: packs built from chunks, and the typed batches every
//! change goes through.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use rocksdb::{FlushOptions, WriteBatch, WriteOptions};

use crate::id::ChunkId;
use crate::manifest::{Manifest, StoredManifest};
use crate::pack::encode_pack;
use crate::{Error, Result};

use super::*;

/// A pack ready to be written: its id, its value and the refs records of
/// its chunks (with the refcounts the caller gave).
pub(crate) struct NewPack {
    pub id: u64,
    pub value: Vec<u8>,
    pub chunks: Vec<(ChunkId, ChunkInfo)>,
}

/// Each chunk's share of its pack's `stored` bytes, in proportion to its
/// raw length, so that sums of `stored_len` (stats, gc plans) add up to the
/// packs' sizes.
pub(super) fn shares(stored: u64, raw_lens: &[u64]) -> Vec<u32> {
    let raw_total: u64 = raw_lens.iter().sum();
    let mut shares = Vec::with_capacity(raw_lens.len());
    let (mut given, mut raw_so_far) = (0u64, 0u64);
    for len in raw_lens {
        raw_so_far += len;
        let upto = (stored * raw_so_far).checked_div(raw_total).unwrap_or(0);
        shares.push((upto - given) as u32);
        given = upto;
    }
    if let Some(last) = shares.last_mut() {
        *last += (stored - given) as u32;
    }
    shares
}

/// Changes that [`Store::write`] makes atomically: how operations change
/// the store, in typed records. Column families and keys stay in this
/// module.
pub(crate) struct Batch<'a> {
    pub(super) store: &'a Store,
    pub(super) inner: WriteBatch,
}

impl Batch<'_> {
    pub fn put_refs(&mut self, id: &ChunkId, info: &ChunkInfo) -> Result<()> {
        self.inner
            .put_cf(self.store.cf(CF_REFS)?, id.as_bytes(), info.encode());
        Ok(())
    }

    pub fn delete_refs(&mut self, id: &ChunkId) -> Result<()> {
        self.inner.delete_cf(self.store.cf(CF_REFS)?, id.as_bytes());
        Ok(())
    }

    /// Drops chunk number `number`: only for a chunk no manifest uses
    /// (`gc`), since a manifest naming it would no longer decode.
    pub fn delete_number(&mut self, number: u32) -> Result<()> {
        self.inner
            .delete_cf(self.store.cf(CF_NUMBERS)?, number_key(number));
        Ok(())
    }

    /// (Re)writes the `numbers` record of a chunk whose refs record says
    /// `info` (repair, when that record was lost).
    pub fn put_number(&mut self, id: &ChunkId, info: &ChunkInfo) -> Result<()> {
        self.inner.put_cf(
            self.store.cf(CF_NUMBERS)?,
            number_key(info.number),
            encode_number_record(id, info.raw_len),
        );
        Ok(())
    }

    pub fn delete_pack(&mut self, id: u64) -> Result<()> {
        self.inner.delete_cf(self.store.cf(CF_PACKS)?, pack_key(id));
        Ok(())
    }

    /// Puts `manifest` under `name`, its chunks named by the numbers in
    /// `infos` (which must hold the refs record of every chunk it uses).
    pub fn put_manifest(
        &mut self,
        name: &str,
        manifest: &Manifest,
        infos: &HashMap<ChunkId, ChunkInfo>,
    ) -> Result<()> {
        let stored = StoredManifest::of(manifest, |id| infos.get(id).map(|i| i.number))
            .map_err(|id| Error::MissingChunk { id })?;
        self.inner.put_cf(
            self.store.cf(CF_MANIFESTS)?,
            name.as_bytes(),
            stored.encode(),
        );
        Ok(())
    }

    pub fn delete_manifest(&mut self, name: &str) -> Result<()> {
        self.inner
            .delete_cf(self.store.cf(CF_MANIFESTS)?, name.as_bytes());
        Ok(())
    }

    /// Adds `packs`, their chunks' refs and numbers records, and the next
    /// pack id and chunk number.
    pub fn put_packs(&mut self, packs: &[NewPack]) -> Result<()> {
        let (packs_cf, refs_cf) = (self.store.cf(CF_PACKS)?, self.store.cf(CF_REFS)?);
        let numbers_cf = self.store.cf(CF_NUMBERS)?;
        for pack in packs {
            self.inner.put_cf(packs_cf, pack_key(pack.id), &pack.value);
            for (id, info) in &pack.chunks {
                self.inner.put_cf(refs_cf, id.as_bytes(), info.encode());
                self.inner.put_cf(
                    numbers_cf,
                    number_key(info.number),
                    encode_number_record(id, info.raw_len),
                );
            }
        }
        let meta = self.store.cf(CF_META)?;
        let next = self.store.next_pack.load(Ordering::Relaxed);
        self.inner.put_cf(meta, NEXT_PACK_KEY, next.to_le_bytes());
        let next = self.store.next_number.load(Ordering::Relaxed);
        self.inner.put_cf(meta, NEXT_NUMBER_KEY, next.to_le_bytes());
        Ok(())
    }

    /// Deletes every key of `table` from `first` to `last`, both included.
    pub fn delete_range(&mut self, table: Table, (first, last): &KeyRange) -> Result<()> {
        // The end of a range deletion is exclusive: the key right after.
        self.inner
            .delete_range_cf(self.store.cf(table.name())?, first, &successor(last));
        Ok(())
    }
}

impl Store {
    /// Builds packs of `chunks` (id, raw bytes, refcount), in the order
    /// given, compressed on every core, with fresh pack ids. A chunk keeps
    /// its number in `numbers` (gc and repair move chunks that manifests
    /// name); the others get fresh numbers in the order given, so a boot
    /// image's new chunks are numbered in runs. The caller holds the write
    /// lock and writes them with [`Batch::put_packs`].
    pub(crate) fn build_packs(
        &self,
        chunks: &[(ChunkId, &[u8], u64)],
        numbers: &HashMap<ChunkId, u32>,
    ) -> Result<Vec<NewPack>> {
        use rayon::prelude::*;
        let fresh = chunks
            .iter()
            .filter(|(id, _, _)| !numbers.contains_key(id))
            .count() as u64;
        let mut next = self.next_number.fetch_add(fresh, Ordering::Relaxed);
        if next.saturating_add(fresh) > u64::from(u32::MAX) + 1 {
            return Err(Error::NumbersExhausted);
        }
        let chunk_numbers: Vec<u32> = chunks
            .iter()
            .map(|(id, _, _)| match numbers.get(id) {
                Some(&n) => n,
                None => {
                    next += 1;
                    (next - 1) as u32
                }
            })
            .collect();
        let runs = crate::pack::runs(chunks, crate::pack::PACK_BYTES, |(_, raw, _)| raw.len());
        let first = self
            .next_pack
            .fetch_add(runs.len() as u64, Ordering::Relaxed);
        let level = self.config.zstd_level;
        Ok(runs
            .into_par_iter()
            .enumerate()
            .map(|(i, run)| {
                let numbers = &chunk_numbers[run.clone()];
                let run = &chunks[run];
                let input: Vec<&[u8]> = run.iter().map(|(_, raw, _)| *raw).collect();
                let (value, offsets) = encode_pack(&input, level);
                let id = first + i as u64;
                let lens: Vec<u64> = run.iter().map(|(_, raw, _)| raw.len() as u64).collect();
                let shares = shares(value.len() as u64, &lens);
                let chunks = run
                    .iter()
                    .zip(offsets)
                    .zip(shares)
                    .zip(numbers)
                    .map(|((((cid, raw, refs), offset), share), &number)| {
                        let info = ChunkInfo {
                            refs: *refs,
                            raw_len: raw.len() as u32,
                            stored_len: share,
                            pack: id,
                            offset,
                            number,
                        };
                        (*cid, info)
                    })
                    .collect();
                NewPack { id, value, chunks }
            })
            .collect())
    }

    /// An empty batch of changes for [`Store::write`].
    pub(crate) fn batch(&self) -> Batch<'_> {
        self.batch_with_capacity(0)
    }

    /// A batch that will hold about `bytes`: growing a large one copies it.
    pub(crate) fn batch_with_capacity(&self, bytes: usize) -> Batch<'_> {
        Batch {
            store: self,
            inner: WriteBatch::with_capacity_bytes(bytes),
        }
    }

    /// Writes new packs and their refs records (refcount 0) without the
    /// WAL: pack values go to disk once (blob files at flush) instead of
    /// twice (WAL, then blob file), and a reopen has no large WAL to replay.
    /// They are durable only after [`Store::flush_chunks`]; a crash before
    /// loses them, a crash after leaves garbage that `gc` collects. Callers
    /// write what references them afterwards, with [`Store::write`].
    pub(crate) fn write_unreferenced_chunks(&self, batch: Batch) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.disable_wal(true);
        self.db.write_opt(batch.inner, &opts)?;
        Ok(())
    }

    /// Flushes the `packs`, `refs`, `numbers` and `meta` column families
    /// atomically (with `atomic_flush`, a pack is never durable without
    /// its chunks' refs and numbers records, nor without the next pack id
    /// and chunk number past them).
    pub(crate) fn flush_chunks(&self) -> Result<()> {
        let mut flush = FlushOptions::default();
        flush.set_wait(true);
        self.db.flush_cfs_opt(
            &[
                self.cf(CF_PACKS)?,
                self.cf(CF_REFS)?,
                self.cf(CF_NUMBERS)?,
                self.cf(CF_META)?,
            ],
            &flush,
        )?;
        Ok(())
    }

    /// Writes `batch` atomically and synced.
    pub(crate) fn write(&self, batch: Batch) -> Result<()> {
        self.write_raw(batch.inner)
    }

    pub(super) fn write_raw(&self, batch: WriteBatch) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }
}
