//! The store: RocksDB on disk, with one column family per kind of record.
//! docs/design.md gives the keys and values byte by byte.
//!
//! - `meta`: `config` -> JSON [`StoreConfig`]; fixed when the store is made.
//! - `packs`: pack id (u64 big-endian, allocated in write order) -> encoded
//!   [`Pack`]: chunks compressed together; BlobDB keeps these values out of
//!   the LSM tree so compaction does not rewrite them.
//! - `refs`: chunk id -> [`ChunkInfo`] (refcount, sizes, pack and offset).
//!   A pack and the refs records of its chunks are written in one batch.
//! - `numbers`: chunk number (u32 big-endian) -> chunk id and length. A
//!   chunk's number is store-local and fixed for its life; manifests name
//!   chunks by it, 4 bytes or less instead of 36.
//! - `manifests`: VMI name -> [`StoredManifest`].
//!
//! Every change that touches refcounts (import, rm, gc) runs under the
//! store's write lock and ends in one synced `WriteBatch`, so a crash leaves
//! the state before or after it, never a manifest without its chunks.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rocksdb::{
    BottommostLevelCompaction, ColumnFamily, CompactOptions, Direction, ErrorKind, IteratorMode,
    ReadOptions, DB,
};

use crate::id::ChunkId;
use crate::manifest::{ChunkRef, Manifest, StoredManifest};
use crate::pack::{decode_pack, Pack};
use crate::{Error, Result};

mod batch;
mod open;
mod schema;
#[cfg(test)]
mod tests;

use batch::shares;
pub(crate) use batch::{Batch, NewPack};
pub(crate) use open::{Access, CommitFiles};
use schema::*;
pub use schema::{ChunkInfo, StoreConfig, Table, STORE_FORMAT};

/// Records of one column family that RocksDB could not read (a damaged
/// SST block): every key after `after` and before `before` (`None`: from
/// the first, to the last).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Gap {
    pub table: Table,
    pub after: Option<Vec<u8>>,
    pub before: Option<Vec<u8>>,
    pub why: String,
}

impl Gap {
    /// The packs from id `low` to `high`, both included.
    pub(crate) fn packs(low: u64, high: u64, why: String) -> Self {
        Gap {
            table: Table::Packs,
            after: low.checked_sub(1).map(|id| pack_key(id).to_vec()),
            before: Some(pack_key(high.saturating_add(1)).to_vec()),
            why,
        }
    }

    fn into_error(self) -> Error {
        Error::CorruptStore(format!(
            "records of {} are unreadable ({}); run `yolo-store verify`",
            self.table, self.why
        ))
    }
}

/// A table file's first and last keys.
pub(crate) type KeyRange = (Vec<u8>, Vec<u8>);

/// Manifests with their VMI names; one that does not decode is an error in
/// place.
pub(crate) type NamedManifests = Vec<(String, Result<Manifest>)>;

/// What [`Store::readable_chunk_infos`] found.
pub(crate) struct RefsScan {
    pub infos: Vec<(ChunkId, ChunkInfo)>,
    /// Records that do not decode: (key in hex, why).
    pub bad: Vec<(String, String)>,
    pub gap: Option<Gap>,
}

/// One record read alone.
pub(crate) enum Readable<T> {
    Found(T),
    Absent,
    /// RocksDB found it damaged (a checksum mismatch in its blob file or
    /// SST block), the disk could not read it, or it does not decode.
    Damaged(String),
}

/// Whether a RocksDB error is about the record read (damaged on disk, or
/// the disk failed to read it) rather than about the database as a whole.
fn damaged(e: &rocksdb::Error) -> bool {
    matches!(e.kind(), ErrorKind::Corruption | ErrorKind::IOError)
}

/// The first key after `key`.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// A `numbers` key as reports show it.
pub(crate) fn number_key_text(number: u32) -> String {
    hex(&number_key(number))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Read options for pack values whose chunks the reader checks against
/// their BLAKE3 ids (serving, gc, extract): RocksDB's CRC of the same bytes
/// would add nothing, and it cost 7% of the mount's CPU in a cold boot
/// replay. `verify` keeps it, to name the damage RocksDB sees.
fn content_checked() -> ReadOptions {
    let mut options = ReadOptions::default();
    options.set_verify_checksums(false);
    options
}

pub struct Store {
    db: DB,
    path: PathBuf,
    config: StoreConfig,
    write_lock: Mutex<()>,
    next_pack: AtomicU64,
    next_number: AtomicU64,
    packs: Mutex<lru::LruCache<u64, Arc<Pack>>>,
    /// A writer's hold on the one-writer lock ([`lock_writer`]).
    _writer: Option<fs::File>,
}

impl Store {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| Error::CorruptStore(format!("column family {name} is missing")))
    }

    /// Serialises every change to refcounts; readers never take it.
    pub(crate) fn write_lock(&self) -> MutexGuard<'_, ()> {
        self.write_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn manifest(&self, name: &str) -> Result<Manifest> {
        let stored = match self.db.get_cf(self.cf(CF_MANIFESTS)?, name.as_bytes())? {
            Some(bytes) => StoredManifest::decode(&bytes)?,
            None => return Err(Error::UnknownVmi(name.to_string())),
        };
        let mut numbers = stored.numbers.clone();
        numbers.sort_unstable();
        numbers.dedup();
        let keys: Vec<[u8; 4]> = numbers.iter().map(|&n| number_key(n)).collect();
        let found = self
            .db
            .batched_multi_get_cf(self.cf(CF_NUMBERS)?, keys.iter(), true);
        let mut chunks = HashMap::with_capacity(numbers.len());
        for (n, value) in numbers.iter().zip(found) {
            if let Some(chunk) = value?.as_deref().and_then(decode_number_record) {
                chunks.insert(*n, chunk);
            }
        }
        stored.resolve(|n| chunks.get(&n).copied())
    }

    /// Every `numbers` record RocksDB can read, and the range it could not
    /// (a damaged SST block), if any. A record that does not decode is left
    /// out: the manifests that name it fail to resolve, and say which.
    fn chunk_numbers(&self) -> Result<(HashMap<u32, ChunkRef>, Option<Gap>)> {
        let mut out = HashMap::new();
        let gap = self.scan(Table::Numbers, |key, value| {
            if let (Ok(key), Some(chunk)) = (<[u8; 4]>::try_from(key), decode_number_record(value))
            {
                out.insert(u32::from_be_bytes(key), chunk);
            }
        })?;
        Ok((out, gap))
    }

    /// Every `numbers` record RocksDB can read, as chunk id -> number
    /// (`verify`, `repair`), and the range it could not read, if any.
    pub(crate) fn numbers(&self) -> Result<(HashMap<ChunkId, u32>, Option<Gap>)> {
        let (numbers, gap) = self.chunk_numbers()?;
        Ok((numbers.into_iter().map(|(n, c)| (c.id, n)).collect(), gap))
    }

    /// Names of every VMI with a boot image, sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_MANIFESTS)?, IteratorMode::Start)
        {
            let (key, _) = item?;
            names.push(String::from_utf8_lossy(&key).into_owned());
        }
        Ok(names)
    }

    /// Every manifest, with its name; a manifest that does not decode is
    /// returned as an error in place so `verify` can name it. Records that
    /// RocksDB cannot read are an error: see [`Store::readable_manifests`].
    pub fn manifests(&self) -> Result<Vec<(String, Result<Manifest>)>> {
        let (manifests, gap) = self.readable_manifests()?;
        match gap {
            Some(gap) => Err(gap.into_error()),
            None => Ok(manifests),
        }
    }

    /// Every manifest in name order, one at a time: for answers that need
    /// each manifest once and never two together (`ls`, `stats`), so they
    /// hold one manifest in memory, not the whole store's. Records that
    /// RocksDB cannot read are an error, after the readable ones.
    pub fn each_manifest(&self, mut each: impl FnMut(&str, Result<Manifest>)) -> Result<()> {
        let (numbers, gap) = self.chunk_numbers()?;
        if let Some(gap) = gap {
            return Err(gap.into_error());
        }
        let gap = self.scan(Table::Manifests, |key, value| {
            each(&String::from_utf8_lossy(key), resolve(value, &numbers))
        })?;
        match gap {
            Some(gap) => Err(gap.into_error()),
            None => Ok(()),
        }
    }

    /// Every manifest RocksDB can read, and the range of names it could
    /// not read (a damaged SST block), if any.
    /// Manifests that name a chunk number whose record did not read are
    /// errors in place (`verify` reports unreadable `numbers` records on
    /// their own).
    pub(crate) fn readable_manifests(&self) -> Result<(NamedManifests, Option<Gap>)> {
        let (numbers, _) = self.chunk_numbers()?;
        let mut out = Vec::new();
        let gap = self.scan(Table::Manifests, |key, value| {
            out.push((
                String::from_utf8_lossy(key).into_owned(),
                resolve(value, &numbers),
            ))
        })?;
        Ok((out, gap))
    }

    pub fn chunk_info(&self, id: &ChunkId) -> Result<Option<ChunkInfo>> {
        self.db
            .get_cf(self.cf(CF_REFS)?, id.as_bytes())?
            .map(|v| ChunkInfo::decode(&v))
            .transpose()
    }

    /// Every `refs` record. Records that RocksDB cannot read, or that do
    /// not decode, are an error: see [`Store::readable_chunk_infos`].
    pub fn chunk_infos(&self) -> Result<Vec<(ChunkId, ChunkInfo)>> {
        let scan = self.readable_chunk_infos()?;
        if let Some(gap) = scan.gap {
            return Err(gap.into_error());
        }
        if let Some((key, why)) = scan.bad.into_iter().next() {
            return Err(Error::CorruptStore(format!("refs record {key}: {why}")));
        }
        Ok(scan.infos)
    }

    /// Every `refs` record RocksDB can read; those that do not decode and
    /// the range it could not read are returned beside them (`verify`
    /// names them, `repair` works around them).
    pub(crate) fn readable_chunk_infos(&self) -> Result<RefsScan> {
        let (mut infos, mut bad) = (Vec::new(), Vec::new());
        let gap = self.scan(Table::Refs, |key, value| {
            let Some(id) = ChunkId::from_slice(key) else {
                bad.push((hex(key), format!("a {}-byte key", key.len())));
                return;
            };
            match ChunkInfo::decode(value) {
                Ok(info) => infos.push((id, info)),
                Err(e) => bad.push((id.to_hex(), e.to_string())),
            }
        })?;
        Ok(RefsScan { infos, bad, gap })
    }

    /// Chunk `id`'s refs record, read alone: inside a range that
    /// [`Store::readable_chunk_infos`] could not read, a newer version may
    /// still be found (RocksDB stops at the newest).
    pub(crate) fn chunk_info_of(&self, id: &ChunkId) -> Result<Readable<ChunkInfo>> {
        match self.db.get_cf(self.cf(CF_REFS)?, id.as_bytes()) {
            Ok(Some(v)) => Ok(match ChunkInfo::decode(&v) {
                Ok(info) => Readable::Found(info),
                Err(e) => Readable::Damaged(e.to_string()),
            }),
            Ok(None) => Ok(Readable::Absent),
            Err(e) if damaged(&e) => Ok(Readable::Damaged(e.into_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads column family `cf` in key order, giving `each` every record
    /// RocksDB can read. A damaged SST block stops an iterator for good,
    /// so past one the rest is read backwards from the end, and the keys
    /// in between are returned as the [`Gap`] nothing could read.
    fn scan(&self, table: Table, each: impl FnMut(&[u8], &[u8])) -> Result<Option<Gap>> {
        self.scan_range(table, None, each)
    }

    /// [`Store::scan`], of the keys of `range` only (all if `None`).
    fn scan_range(
        &self,
        table: Table,
        range: Option<&KeyRange>,
        mut each: impl FnMut(&[u8], &[u8]),
    ) -> Result<Option<Gap>> {
        let cf = self.cf(table.name())?;
        let bounded = || {
            let mut opts = ReadOptions::default();
            if let Some((first, last)) = range {
                opts.set_iterate_lower_bound(first.clone());
                opts.set_iterate_upper_bound(successor(last));
            }
            opts
        };
        let mut forward = self.db.raw_iterator_cf_opt(cf, bounded());
        forward.seek_to_first();
        let mut after: Option<Vec<u8>> = None;
        while let (Some(key), Some(value)) = (forward.key(), forward.value()) {
            each(key, value);
            after = Some(key.to_vec());
            forward.next();
        }
        let why = match forward.status() {
            Ok(()) => return Ok(None),
            Err(e) if damaged(&e) => e.into_string(),
            Err(e) => return Err(e.into()),
        };
        let mut backward = self.db.raw_iterator_cf_opt(cf, bounded());
        backward.seek_to_last();
        let mut before: Option<Vec<u8>> = None;
        while let (Some(key), Some(value)) = (backward.key(), backward.value()) {
            if after.as_deref().is_some_and(|after| key <= after) {
                // Read back to where the forward pass stopped without
                // meeting the damage again: nothing is missing.
                return Ok(None);
            }
            each(key, value);
            before = Some(key.to_vec());
            backward.prev();
        }
        match backward.status() {
            Ok(()) => Ok(None),
            Err(e) if damaged(&e) => Ok(Some(Gap {
                table,
                after,
                before,
                why,
            })),
            Err(e) => Err(e.into()),
        }
    }

    /// The refs records of those of `ids` the store holds.
    pub(crate) fn chunk_infos_of(
        &self,
        mut ids: Vec<ChunkId>,
    ) -> Result<HashMap<ChunkId, ChunkInfo>> {
        // Sorted, so RocksDB can look them up in key order.
        ids.sort_unstable();
        ids.dedup();
        let cf = self.cf(CF_REFS)?;
        let mut infos = HashMap::with_capacity(ids.len());
        let (Some(first), Some(last)) = (ids.first(), ids.last()) else {
            return Ok(infos);
        };
        // A point lookup costs a few microseconds; stepping an iterator over a
        // record, a tenth of that. When the ids are a large share of all refs
        // records (re-importing a VMI into a store that holds few others), one
        // pass over the key range beats a MultiGet.
        let records = self
            .db
            .property_int_value_cf(cf, "rocksdb.estimate-num-keys")?
            .unwrap_or(u64::MAX);
        if (ids.len() as u64).saturating_mul(4) >= records {
            let mut wanted = ids.iter().peekable();
            let from = IteratorMode::From(first.as_bytes(), Direction::Forward);
            for item in self.db.iterator_cf(cf, from) {
                let (key, value) = item?;
                if key.as_ref() > last.as_bytes().as_slice() {
                    break;
                }
                while wanted
                    .next_if(|id| id.as_bytes().as_slice() < key.as_ref())
                    .is_some()
                {}
                if let Some(id) = wanted.next_if(|id| id.as_bytes().as_slice() == key.as_ref()) {
                    infos.insert(*id, ChunkInfo::decode(&value)?);
                }
            }
            return Ok(infos);
        }
        let found = self
            .db
            .batched_multi_get_cf(cf, ids.iter().map(|id| id.as_bytes()), true);
        for (id, value) in ids.iter().zip(found) {
            if let Some(value) = value? {
                infos.insert(*id, ChunkInfo::decode(&value)?);
            }
        }
        Ok(infos)
    }

    /// A chunk's raw bytes, checked against its id. The last few decoded
    /// packs are kept here: the offline readers (export, extract, push)
    /// read chunks in pack order, so each pack is decoded once.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let info = self.info_of(id)?;
        let cached = lock(&self.packs).get(&info.pack).cloned();
        let pack = match cached {
            Some(pack) => pack,
            None => {
                let pack = Arc::new(self.decode_pack_of(id, &info)?);
                lock(&self.packs).put(info.pack, pack.clone());
                pack
            }
        };
        Ok(pack.checked(id, info.offset).map(<[u8]>::to_vec)?)
    }

    /// Chunk `id`'s refs record and its pack, decoded but not yet checked
    /// (see [`Pack::checked`]) and not kept: the mount keeps the chunks in
    /// its own cache, the one copy it holds.
    pub(crate) fn pack_of(&self, id: &ChunkId) -> Result<(ChunkInfo, Pack)> {
        let info = self.info_of(id)?;
        let pack = self.decode_pack_of(id, &info)?;
        Ok((info, pack))
    }

    fn info_of(&self, id: &ChunkId) -> Result<ChunkInfo> {
        self.chunk_info(id)?.ok_or(Error::MissingChunk { id: *id })
    }

    fn decode_pack_of(&self, id: &ChunkId, info: &ChunkInfo) -> Result<Pack> {
        let stored = self
            .db
            .get_pinned_cf_opt(self.cf(CF_PACKS)?, pack_key(info.pack), &content_checked())?
            .ok_or(Error::MissingChunk { id: *id })?;
        decode_pack(&stored, self.config.chunking.max_len()).map_err(|why| Error::CorruptChunk {
            id: *id,
            why: format!("pack {}: {why}", info.pack),
        })
    }

    /// The stored (still encoded) values of packs `ids`, in one RocksDB
    /// MultiGet: it sorts the blob reads by file and offset, which a loop
    /// of gets cannot.
    pub(crate) fn read_encoded_packs(&self, ids: &[u64]) -> Result<Vec<Option<Vec<u8>>>> {
        self.multi_get_packs(ids, &content_checked())?
            .into_iter()
            .map(|value| Ok(value?.map(|v| v.to_vec())))
            .collect()
    }

    /// Like [`Store::read_encoded_packs`], but a pack RocksDB finds damaged
    /// is returned as such, in place, and the others are still read.
    pub(crate) fn read_packs_each(&self, ids: &[u64]) -> Result<Vec<Readable<Vec<u8>>>> {
        self.multi_get_packs(ids, &ReadOptions::default())?
            .into_iter()
            .map(|value| match value {
                Ok(Some(v)) => Ok(Readable::Found(v.to_vec())),
                Ok(None) => Ok(Readable::Absent),
                Err(e) if damaged(&e) => Ok(Readable::Damaged(e.into_string())),
                Err(e) => Err(e.into()),
            })
            .collect()
    }

    fn multi_get_packs(
        &self,
        ids: &[u64],
        options: &ReadOptions,
    ) -> Result<Vec<std::result::Result<Option<rocksdb::DBPinnableSlice<'_>>, rocksdb::Error>>>
    {
        let cf = self.cf(CF_PACKS)?;
        let keys: Vec<[u8; 8]> = ids.iter().map(|id| pack_key(*id)).collect();
        Ok(self
            .db
            .batched_multi_get_cf_opt(cf, keys.iter(), false, options))
    }

    /// The refs record, with refcount `refs`, of the chunk that starts at
    /// raw `offset` of pack `pack`: for a chunk whose own record is lost
    /// but whose bytes `verify` found intact there. `None` if the pack no
    /// longer reads or has no chunk there.
    pub(crate) fn locate(
        &self,
        pack: u64,
        offset: u32,
        refs: u64,
        number: u32,
    ) -> Result<Option<ChunkInfo>> {
        let Some(value) = self.read_encoded_packs(&[pack])?.pop().flatten() else {
            return Ok(None);
        };
        let Ok(decoded) = decode_pack(&value, self.config.chunking.max_len()) else {
            return Ok(None);
        };
        let lens: Vec<u64> = decoded.chunks().map(|c| c.len() as u64).collect();
        let mut at = 0u64;
        for (len, share) in lens.iter().zip(shares(value.len() as u64, &lens)) {
            if at == u64::from(offset) {
                return Ok(Some(ChunkInfo {
                    refs,
                    raw_len: *len as u32,
                    stored_len: share,
                    pack,
                    offset,
                    number,
                }));
            }
            at += len;
        }
        Ok(None)
    }

    /// Every pack id ever given out is below this.
    pub(crate) fn pack_ids_end(&self) -> u64 {
        self.next_pack.load(Ordering::Relaxed)
    }

    /// The key ranges (first, last) of the table files of the gap's column
    /// family that may hold keys in it, for [`Store::drop_tables`]; `None`
    /// if one is in level 0, where RocksDB cannot drop a file alone.
    pub(crate) fn tables_holding(&self, gap: &Gap) -> Result<Option<Vec<KeyRange>>> {
        let mut out = Vec::new();
        for file in self.db.live_files()? {
            let (Some(first), Some(last)) = (file.start_key, file.end_key) else {
                continue;
            };
            let overlaps = gap.after.as_ref().is_none_or(|after| last > *after)
                && gap.before.as_ref().is_none_or(|before| first < *before);
            if file.column_family_name != gap.table.name() || !overlaps {
                continue;
            }
            if file.level == 0 {
                return Ok(None);
            }
            out.push((first, last));
        }
        Ok(Some(out))
    }

    /// If some records of `table` in `range` do not read (a damaged block of a
    /// table file: a damaged blob whose key is deleted is not read), writes
    /// back every one that does over a deletion of the range, in one synced
    /// batch, then drops the table files inside the range. True if it did.
    pub(crate) fn rewrite_unreadable_range(&self, table: Table, range: &KeyRange) -> Result<bool> {
        let mut batch = self.batch();
        batch.delete_range(table, range)?;
        let handle = self.cf(table.name())?;
        let gap = self.scan_range(table, Some(range), |key, value| {
            batch.inner.put_cf(handle, key, value);
        })?;
        if gap.is_none() {
            return Ok(false);
        }
        self.write(batch)?;
        self.drop_tables(table, range)?;
        Ok(true)
    }

    /// Drops the table files of `table` whose keys all lie from `first` to
    /// `last`, so a damaged block in one stops failing every scan and
    /// compaction. The caller has first written back, over a deletion of
    /// the range, every record of the range that could still be read.
    pub(crate) fn drop_tables(&self, table: Table, (first, last): &KeyRange) -> Result<()> {
        self.db
            .delete_file_in_range_cf(self.cf(table.name())?, first, last)?;
        Ok(())
    }

    /// Testing only: overwrites chunk `id`'s refcount, to plant the
    /// disagreement with the manifests that `gc` must refuse and
    /// `verify --repair` must mend.
    #[doc(hidden)]
    pub fn set_refcount(&self, id: &ChunkId, refs: u64) -> Result<()> {
        let info = self
            .chunk_info(id)?
            .ok_or(Error::MissingChunk { id: *id })?;
        let mut batch = self.batch();
        batch.put_refs(id, &ChunkInfo { refs, ..info })?;
        self.write(batch)
    }

    /// Testing only: the table files (SSTs) of column family `cf`, to plant
    /// damage in them.
    #[doc(hidden)]
    pub fn table_files(&self, cf: &str) -> Result<Vec<PathBuf>> {
        Ok(self
            .db
            .live_files()?
            .into_iter()
            .filter(|f| f.column_family_name == cf)
            .map(|f| self.path.join(f.name.trim_start_matches('/')))
            .collect())
    }

    /// Testing only: inverts chunk `id`'s bytes inside its pack, bypassing
    /// every check, to plant the corruption (a chunk whose bytes no longer
    /// hash to its id) that `verify` and the mount must catch.
    #[cfg(any(test, feature = "testing"))]
    pub fn corrupt_chunk(&self, id: &ChunkId) -> Result<()> {
        let (info, pack) = self.pack_of(id)?;
        let mut chunks: Vec<Vec<u8>> = pack.chunks().map(<[u8]>::to_vec).collect();
        for (chunk, (cid, _, _)) in chunks.iter_mut().zip(pack.identified()) {
            if cid == *id {
                chunk.iter_mut().for_each(|b| *b = !*b);
            }
        }
        let input: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let (value, _) = crate::pack::encode_pack(&input, self.config.zstd_level);
        lock(&self.packs).pop(&info.pack);
        let mut batch = self.batch();
        batch
            .inner
            .put_cf(self.cf(CF_PACKS)?, pack_key(info.pack), value);
        self.write(batch)
    }

    /// Bytes of table files (SSTs) per column family, in name order, and
    /// of blob files (the packs' values): where the store directory goes.
    pub fn table_bytes(&self) -> Result<Vec<(String, u64)>> {
        let mut by_cf: std::collections::BTreeMap<String, u64> =
            [CF_META, CF_PACKS, CF_REFS, CF_NUMBERS, CF_MANIFESTS]
                .iter()
                .map(|cf| (cf.to_string(), 0))
                .collect();
        for file in self.db.live_files()? {
            *by_cf.entry(file.column_family_name).or_default() += file.size as u64;
        }
        let mut blobs = 0;
        for entry in fs::read_dir(&self.path).map_err(|e| Error::io(&self.path, e))? {
            let entry = entry.map_err(|e| Error::io(&self.path, e))?;
            if entry.path().extension().is_some_and(|e| e == "blob") {
                blobs += entry.metadata().map_or(0, |m| m.len());
            }
        }
        let mut out: Vec<(String, u64)> = by_cf.into_iter().collect();
        out.push(("blob files".into(), blobs));
        Ok(out)
    }

    /// Bytes the store's directory takes on disk.
    pub fn disk_usage(&self) -> Result<u64> {
        let mut total = 0;
        for entry in fs::read_dir(&self.path).map_err(|e| Error::io(&self.path, e))? {
            let entry = entry.map_err(|e| Error::io(&self.path, e))?;
            if let Ok(meta) = entry.metadata() {
                if meta.is_file() {
                    total += meta.len();
                }
            }
        }
        Ok(total)
    }

    /// After an import: merges what it left in the small column families
    /// and, once they are many, the `packs` index files (docs/design.md,
    /// *On disk*). Import writes each new chunk's refs record twice (count
    /// 0 with its pack, then its count with the manifest), so until
    /// compaction `refs` holds both; and each import's flush leaves a small
    /// `packs` index file that RocksDB moves down the levels without ever
    /// merging (pack ids only grow, so files never overlap).
    pub(crate) fn settle(&self) -> Result<()> {
        /// Table files of `packs` or `numbers` tolerated before they are
        /// merged into one.
        const TABLES: usize = 16;
        for name in [CF_REFS, CF_NUMBERS, CF_MANIFESTS] {
            self.db.flush_cf(self.cf(name)?)?;
        }
        // `refs` and `manifests` are merged once what the latest imports
        // left in level 0 is a quarter of the column family: each merge
        // rewrites it whole, so merging after every import would make an
        // import's cost grow with the store; this way each byte is
        // rewritten a few times at most, and stale copies stay under a
        // quarter.
        let files = self.db.live_files()?;
        for name in [CF_REFS, CF_MANIFESTS] {
            let (mut fresh, mut all) = (0, 0);
            for f in files.iter().filter(|f| f.column_family_name == name) {
                all += f.size;
                if f.level == 0 {
                    fresh += f.size;
                }
            }
            if fresh > 0 && fresh * 4 >= all {
                self.db
                    .compact_range_cf(self.cf(name)?, None::<&[u8]>, None::<&[u8]>);
            }
        }
        // Keys that only grow (pack ids, chunk numbers) never overlap, so
        // compaction moves their files down whole; merging them takes a
        // forced compaction of the last level.
        let mut force = CompactOptions::default();
        force.set_bottommost_level_compaction(BottommostLevelCompaction::ForceOptimized);
        let tables = |name: &str| {
            files
                .iter()
                .filter(|f| f.column_family_name == name)
                .count()
        };
        if tables(CF_NUMBERS) > TABLES {
            let numbers = self.cf(CF_NUMBERS)?;
            self.db
                .compact_range_cf_opt(numbers, None::<&[u8]>, None::<&[u8]>, &force);
        }
        if tables(CF_PACKS) > TABLES {
            // Index entries only: blob GC off, so no pack is rewritten.
            let packs = self.cf(CF_PACKS)?;
            self.db
                .set_options_cf(packs, &[("enable_blob_garbage_collection", "false")])?;
            self.db
                .compact_range_cf_opt(packs, None::<&[u8]>, None::<&[u8]>, &force);
            self.db
                .set_options_cf(packs, &[("enable_blob_garbage_collection", "true")])?;
        }
        Ok(())
    }

    /// Flushes memtables and compacts, so deleted chunks give their space
    /// back: blob files are rewritten without the dead values.
    pub(crate) fn compact(&self) -> Result<()> {
        let chunks = self.cf(CF_PACKS)?;
        self.db
            .set_options_cf(chunks, &[("blob_garbage_collection_age_cutoff", "1.0")])?;
        for name in [CF_PACKS, CF_REFS, CF_NUMBERS, CF_MANIFESTS] {
            let cf = self.cf(name)?;
            self.db.flush_cf(cf)?;
            self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
        self.db
            .set_options_cf(chunks, &[("blob_garbage_collection_age_cutoff", "0.25")])?;
        Ok(())
    }
}

/// A mutex's guard; a panic elsewhere while holding it leaves data that is
/// still consistent here (counters, caches), so poisoning is ignored.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A stored manifest, its chunk numbers resolved through `numbers`.
fn resolve(value: &[u8], numbers: &HashMap<u32, ChunkRef>) -> Result<Manifest> {
    StoredManifest::decode(value)?.resolve(|n| numbers.get(&n).copied())
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        Error::Db(e)
    }
}
