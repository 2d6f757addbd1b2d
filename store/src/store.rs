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
use std::ffi::OsString;
use std::fs;
use std::num::NonZeroUsize;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, ColumnFamily, ColumnFamilyDescriptor,
    CompactOptions, DBCompressionType, Direction, ErrorKind, FlushOptions, IteratorMode, LogLevel,
    Options, ReadOptions, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

use crate::chunking::{Chunking, FASTCDC_VERSION};
use crate::error::StoreFault;
use crate::id::ChunkId;
use crate::manifest::{varint, ChunkRef, Manifest, StoredManifest};
use crate::pack::{decode_pack, encode_pack, Pack};
use crate::{Error, Result};

// The column families: their names are the schema's, private to this
// module; operations name a table by [`Table`].
const CF_META: &str = Table::Meta.name();
const CF_PACKS: &str = Table::Packs.name();
const CF_REFS: &str = Table::Refs.name();
const CF_MANIFESTS: &str = Table::Manifests.name();
const CF_NUMBERS: &str = Table::Numbers.name();

/// The store's tables (RocksDB column families), as verify, repair and
/// their reports name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    Meta,
    Packs,
    Refs,
    Numbers,
    Manifests,
}

impl Table {
    const fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Packs => "packs",
            Table::Refs => "refs",
            Table::Numbers => "numbers",
            Table::Manifests => "manifests",
        }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
const CONFIG_KEY: &[u8] = b"config";
/// `meta` key of the next pack id (u64 LE). Kept, not derived from the last
/// pack, so an id is never reused after gc deletes the newest pack: a mount
/// may still hold the old pack under that id.
const NEXT_PACK_KEY: &[u8] = b"next_pack";
/// Decoded packs `read_chunk` keeps, so reading a boot image's chunks in
/// order decodes each pack once (the mount does not use them).
const PACK_CACHE: usize = 16;
/// `meta` key of the next chunk number (u64 LE), kept like `next_pack`.
const NEXT_NUMBER_KEY: &[u8] = b"next_number";
/// 3: chunk numbers, compact refs records and manifests (docs/design.md,
/// *Versioning*).
pub const STORE_FORMAT: u32 = 3;

/// What a store was created with. Never changes afterwards: the chunking
/// decides chunk ids, so mixing two would stop deduplication silently.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    pub format: u32,
    pub chunking: Chunking,
    pub zstd_level: i32,
    pub fastcdc_version: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            format: STORE_FORMAT,
            chunking: Chunking::default(),
            zstd_level: 3,
            fastcdc_version: FASTCDC_VERSION.to_string(),
        }
    }
}

/// The `refs` record of a chunk: how many manifests reference it (0 means
/// garbage that `gc` may collect), its raw size, its share of its pack's
/// stored bytes, where it is (pack id and raw offset in the pack), and the
/// number manifests name it by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    pub refs: u64,
    pub raw_len: u32,
    pub stored_len: u32,
    pub pack: u64,
    pub offset: u32,
    pub number: u32,
}

impl ChunkInfo {
    /// Six varints: refs, raw_len, stored_len, pack, offset, number (about
    /// 12 bytes, against 28 fixed).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        for n in [
            self.refs,
            self.raw_len.into(),
            self.stored_len.into(),
            self.pack,
            self.offset.into(),
            self.number.into(),
        ] {
            varint(&mut out, n);
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = || Error::CorruptStore(format!("refs record {} does not decode", hex(bytes)));
        let mut at = 0;
        let mut fields = [0u64; 6];
        for field in &mut fields {
            *field = read_varint(bytes, &mut at).ok_or_else(bad)?;
        }
        if at != bytes.len() {
            return Err(bad());
        }
        let small = |n: u64| u32::try_from(n).map_err(|_| bad());
        Ok(ChunkInfo {
            refs: fields[0],
            raw_len: small(fields[1])?,
            stored_len: small(fields[2])?,
            pack: fields[3],
            offset: small(fields[4])?,
            number: small(fields[5])?,
        })
    }
}

/// The varint at `*at` of `bytes`, moving `*at` past it.
fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        n |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// A `numbers` record: the chunk's id, then its length as a varint.
fn encode_number_record(id: &ChunkId, raw_len: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(36);
    out.extend_from_slice(id.as_bytes());
    varint(&mut out, raw_len.into());
    out
}

fn decode_number_record(bytes: &[u8]) -> Option<ChunkRef> {
    let id = ChunkId::from_slice(bytes.get(..32)?)?;
    let mut at = 32;
    let len = u32::try_from(read_varint(bytes, &mut at)?).ok()?;
    (at == bytes.len()).then_some(ChunkRef { id, len })
}

fn number_key(number: u32) -> [u8; 4] {
    number.to_be_bytes()
}

/// A pack ready to be written: its id, its value and the refs records of
/// its chunks (with the refcounts the caller gave).
pub(crate) struct NewPack {
    pub id: u64,
    pub value: Vec<u8>,
    pub chunks: Vec<(ChunkId, ChunkInfo)>,
}

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

/// Each chunk's share of its pack's `stored` bytes, in proportion to its
/// raw length, so that sums of `stored_len` (stats, gc plans) add up to the
/// packs' sizes.
fn shares(stored: u64, raw_lens: &[u64]) -> Vec<u32> {
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

/// Changes that [`Store::write`] makes atomically: how operations change
/// the store, in typed records. Column families and keys stay in this
/// module.
pub(crate) struct Batch<'a> {
    store: &'a Store,
    inner: WriteBatch,
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

/// Read options for pack values whose chunks the reader checks against
/// their BLAKE3 ids (serving, gc, extract): RocksDB's CRC of the same bytes
/// would add nothing, and it cost 7% of the mount's CPU in a cold boot
/// replay. `verify` keeps it, to name the damage RocksDB sees.
fn content_checked() -> ReadOptions {
    let mut options = ReadOptions::default();
    options.set_verify_checksums(false);
    options
}

fn pack_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
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

/// What a writer's commits change in the store directory, by name, length
/// and modification time: CURRENT and the MANIFEST (each flush, compaction
/// and writer open) and, with `logs`, the write-ahead logs (each synced
/// batch appends).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CommitFiles(Vec<(OsString, u64, Option<SystemTime>)>);

impl CommitFiles {
    pub(crate) fn of(path: &Path, logs: bool) -> Result<Self> {
        let mut files = Vec::new();
        for entry in fs::read_dir(path).map_err(|e| Error::io(path, e))? {
            let entry = entry.map_err(|e| Error::io(path, e))?;
            let name = entry.file_name();
            let text = name.to_string_lossy();
            if text == "CURRENT"
                || text.starts_with("MANIFEST-")
                || (logs && text.ends_with(".log"))
            {
                // A file deleted since the listing is a change all the same.
                let (len, modified) = match entry.metadata() {
                    Ok(m) => (m.len(), m.modified().ok()),
                    Err(_) => (u64::MAX, None),
                };
                files.push((name, len, modified));
            }
        }
        files.sort();
        Ok(CommitFiles(files))
    }
}

/// Opens made again, at most, when a writer changes the MANIFEST during
/// each: flushes come seconds apart even in a long import, an open takes
/// milliseconds.
const UNTORN_ATTEMPTS: usize = 100;

/// Opens the store read-only as it stood at one moment. RocksDB reads the
/// MANIFEST first and the write-ahead logs last. An import writes its packs
/// and `numbers` records without the WAL, flushes them (a MANIFEST edit),
/// then logs its manifests: an open that read the MANIFEST before that flush
/// and the logs after that batch saw manifests naming chunk numbers it had
/// no record of (CI's one EIO at open; `store/tests/follower.rs`). So the
/// open is made again until the MANIFEST stayed the same throughout: the
/// logs then continue the MANIFEST read, as a crash of the writer would
/// leave them, and every commit is whole or absent. An open that fails
/// while the MANIFEST changed is made again too: compaction may delete a
/// table file between the MANIFEST's read and the file's open.
fn open_untorn(path: &Path, opts: &Options) -> Result<DB> {
    for _ in 0..UNTORN_ATTEMPTS {
        let before = CommitFiles::of(path, false)?;
        let opened = DB::open_cf_descriptors_read_only(opts, path, cf_descriptors(), false);
        if CommitFiles::of(path, false)? == before {
            return Ok(opened?);
        }
    }
    Err(Error::Busy(path.to_path_buf()))
}

/// How a process holds the store. RocksDB lets one process write; a mount
/// follows the writers through read-only opens ([`crate::Follower`]), so
/// `import`, `rm` and `gc` run as ordinary commands beside it.
pub(crate) enum Access {
    /// With the one-writer lock if the caller holds it already.
    Write(Option<fs::File>),
    ReadOnly,
    /// Read-only, every table file opened at once: one the writer deletes
    /// later (compaction, gc) stays readable until the follower reopens.
    Follow,
}

impl Store {
    /// Opens the store at `path`, creating it with `config` if it does not
    /// exist. An existing store keeps its own config; asking for a different
    /// one is an error rather than a silent mix.
    ///
    /// `path` must be a store, an empty directory or nothing: a directory
    /// that holds other files is refused, never written into, and an
    /// existing directory keeps its mode. Creation happens under the
    /// one-writer lock, so two first imports do not race (the second is
    /// told the store is busy, waits, then opens what the first made), and
    /// a creation that stopped before the config record was written is
    /// finished by the next one.
    pub fn open_or_create(path: &Path, config: Option<StoreConfig>) -> Result<Self> {
        if let Some(config) = &config {
            config.chunking.validate()?;
        }
        prepare_store_dir(path)?;
        let writer = lock_writer(path)?;
        let held = || writer.try_clone().map_err(|e| Error::io(path, e));
        let opened = match is_store(path)? {
            true => Self::open_with(path, Access::Write(Some(held()?))),
            false => {
                refuse_foreign_files(path)?;
                Err(Error::UnfinishedStore(path.to_path_buf()))
            }
        };
        let store = match opened {
            Err(Error::UnfinishedStore(_)) => {
                finish_creation(path, config.clone().unwrap_or_default())?;
                Self::open_with(path, Access::Write(Some(held()?)))?
            }
            other => other?,
        };
        if let Some(wanted) = config {
            if wanted != store.config {
                return Err(Error::StoreConfig {
                    path: path.to_path_buf(),
                    fault: StoreFault::SettingsDiffer {
                        chunking: store.config.chunking,
                        zstd_level: store.config.zstd_level,
                    },
                });
            }
        }
        Ok(store)
    }

    /// Opens an existing store for reading and writing. Only one can at a
    /// time: another gets [`Error::Busy`].
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, Access::Write(None))
    }

    /// Opens an existing store read-only: works while another process (a
    /// mount) holds it for writing, and sees the state as of this call.
    pub fn open_read_only(path: &Path) -> Result<Self> {
        Self::open_with(path, Access::ReadOnly)
    }

    pub(crate) fn open_with(path: &Path, access: Access) -> Result<Self> {
        const WRITER_OPEN_FILES: i32 = 512;
        require_store(path)?;
        refuse_older_format(path)?;
        let mut opts = db_options(false);
        let mut writer = None;
        let db = match access {
            Access::Write(held) => {
                writer = Some(match held {
                    Some(lock) => lock,
                    None => lock_writer(path)?,
                });
                // Table files are opened as reads need them, not all at
                // open: each import adds a few, and opening a store of a
                // thousand imports' files cost more CPU than importing a
                // small VMI (docs/benchmarks.md, *Fleet*). Only readers
                // beside a writer need every file open from the start
                // (the writer may delete one); the writer is the one that
                // deletes.
                opts.set_max_open_files(WRITER_OPEN_FILES);
                DB::open_cf_descriptors(&opts, path, cf_descriptors())?
            }
            Access::ReadOnly => open_untorn(path, &opts)?,
            Access::Follow => {
                opts.set_max_open_files(-1);
                open_untorn(path, &opts)?
            }
        };
        let meta = db
            .cf_handle(CF_META)
            .ok_or_else(|| Error::CorruptStore("no meta column family".into()))?;
        let raw = db
            .get_cf(meta, CONFIG_KEY)?
            .ok_or_else(|| Error::UnfinishedStore(path.to_path_buf()))?;
        let config: StoreConfig = serde_json::from_slice(&raw)
            .map_err(|e| Error::CorruptStore(format!("config: {e}")))?;
        if config.format != STORE_FORMAT {
            return Err(unsupported_format(path, config.format));
        }
        if matches!(config.chunking, Chunking::Fastcdc { .. })
            && config.fastcdc_version != FASTCDC_VERSION
        {
            return Err(Error::StoreConfig {
                path: path.to_path_buf(),
                fault: StoreFault::FastcdcVersion {
                    found: config.fastcdc_version.clone(),
                },
            });
        }
        let counter = |key: &[u8], first: u64| -> Result<u64> {
            match db.get_cf(meta, key)? {
                Some(v) => Ok(u64::from_le_bytes(v.as_slice().try_into().map_err(
                    |_| Error::CorruptStore(format!("meta record of {} bytes", v.len())),
                )?)),
                None => Ok(first),
            }
        };
        let next_pack = counter(NEXT_PACK_KEY, 1)?;
        let next_number = counter(NEXT_NUMBER_KEY, 0)?;
        Ok(Store {
            db,
            path: path.to_path_buf(),
            config,
            write_lock: Mutex::new(()),
            next_pack: AtomicU64::new(next_pack),
            next_number: AtomicU64::new(next_number),
            packs: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(PACK_CACHE).unwrap_or(NonZeroUsize::MIN),
            )),
            _writer: writer,
        })
    }

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

    fn write_raw(&self, batch: WriteBatch) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
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
        let (value, _) = encode_pack(&input, self.config.zstd_level);
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

/// What a store of another format is told.
fn unsupported_format(path: &Path, format: u32) -> Error {
    Error::StoreConfig {
        path: path.to_path_buf(),
        fault: StoreFault::UnsupportedFormat(format),
    }
}

/// A store of format 2 or older has no `numbers` column family, and
/// RocksDB refuses to open it with ours before its config can be read: so
/// its format is read through its own column families, only to refuse it
/// with the reason.
fn refuse_older_format(path: &Path) -> Result<()> {
    let Ok(existing) = DB::list_cf(&Options::default(), path) else {
        return Ok(()); // RocksDB's own error comes from the real open
    };
    if existing.iter().any(|cf| cf == CF_NUMBERS) || !existing.iter().any(|cf| cf == CF_META) {
        return Ok(());
    }
    let db = DB::open_cf_for_read_only(&Options::default(), path, &existing, false)?;
    let meta = db
        .cf_handle(CF_META)
        .ok_or_else(|| Error::CorruptStore("no meta column family".into()))?;
    let format = db
        .get_cf(meta, CONFIG_KEY)?
        .and_then(|raw| serde_json::from_slice::<serde_json::Value>(&raw).ok())
        .and_then(|config| config.get("format")?.as_u64())
        .unwrap_or(0);
    Err(unsupported_format(path, format as u32))
}

/// A stored manifest, its chunk numbers resolved through `numbers`.
fn resolve(value: &[u8], numbers: &HashMap<u32, ChunkRef>) -> Result<Manifest> {
    StoredManifest::decode(value)?.resolve(|n| numbers.get(&n).copied())
}

/// Makes `path` a directory (mode 0700) if it is nothing yet; refuses
/// anything but a directory. An existing directory keeps its mode.
fn prepare_store_dir(path: &Path) -> Result<()> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(Error::StoreConfig {
            path: path.to_path_buf(),
            fault: StoreFault::NotADirectory,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| Error::io(path, e)),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn is_store(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path.join("CURRENT")) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// A directory that is to become a store must be empty: RocksDB's files
/// among someone else's would be a mess no verb could clean up. RocksDB's
/// own files of a creation that stopped early are not someone else's.
fn refuse_foreign_files(path: &Path) -> Result<()> {
    let rocksdb_file = |name: &str| {
        name == "LOCK"
            || name == "IDENTITY"
            || name.starts_with("LOG")
            || name.starts_with("MANIFEST-")
            || name.starts_with("OPTIONS-")
            || name.ends_with(".log")
            || name.ends_with(".dbtmp")
    };
    for entry in fs::read_dir(path).map_err(|e| Error::io(path, e))? {
        let entry = entry.map_err(|e| Error::io(path, e))?;
        let name = entry.file_name();
        if !rocksdb_file(&name.to_string_lossy()) {
            return Err(Error::StoreConfig {
                path: path.to_path_buf(),
                fault: StoreFault::OtherFiles { first: name },
            });
        }
    }
    Ok(())
}

/// Creates the database in `path` and writes its config, or writes the
/// config of a database whose creation stopped before it: only if it holds
/// nothing else, so no data is ever re-labelled with another chunking.
fn finish_creation(path: &Path, config: StoreConfig) -> Result<()> {
    let db = DB::open_cf_descriptors(&db_options(true), path, cf_descriptors())?;
    let meta = db
        .cf_handle(CF_META)
        .ok_or_else(|| Error::CorruptStore("no meta".into()))?;
    if db.get_cf(meta, CONFIG_KEY)?.is_some() {
        return Ok(());
    }
    for name in [CF_PACKS, CF_REFS, CF_NUMBERS, CF_MANIFESTS] {
        let cf = db
            .cf_handle(name)
            .ok_or_else(|| Error::CorruptStore(format!("no {name} column family")))?;
        if db.iterator_cf(cf, IteratorMode::Start).next().is_some() {
            return Err(Error::CorruptStore(format!(
                "{}: no config record, but {name} records: not a store this build can finish",
                path.display()
            )));
        }
    }
    let json = serde_json::to_vec(&config).map_err(Error::ConfigEncoding)?;
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.put_cf_opt(meta, CONFIG_KEY, json, &opts)?;
    Ok(())
}

fn require_store(path: &Path) -> Result<()> {
    if path.join("CURRENT").exists() {
        return Ok(());
    }
    Err(Error::StoreConfig {
        path: path.to_path_buf(),
        fault: StoreFault::NoStore,
    })
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        Error::Db(e)
    }
}

/// The one-writer lock: an exclusive `flock` of the store directory, held
/// by a writer for as long as it has the store open, and while a store is
/// made. Taken without waiting: a held lock is [`Error::Busy`], which the
/// CLI waits on. (RocksDB's own `LOCK` would say the same, but only in its
/// message text.)
fn lock_writer(path: &Path) -> Result<fs::File> {
    let dir = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: flock on a descriptor we own; released when the last
    // descriptor of this open file closes.
    let locked = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&dir),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if locked != 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.kind() {
            std::io::ErrorKind::WouldBlock => Error::Busy(path.to_path_buf()),
            _ => Error::io(path, e),
        });
    }
    Ok(dir)
}

fn db_options(create: bool) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(create);
    opts.create_missing_column_families(create);
    opts.set_compression_type(DBCompressionType::None);
    opts.increase_parallelism(2);
    // The info log is for debugging a writer: warnings and errors only (an
    // import at info level wrote 250 KB, 1% of a small store), the last two
    // runs' kept.
    opts.set_log_level(LogLevel::Warn);
    opts.set_keep_log_file_num(1);
    // Packs and their chunks' refs records are flushed together or not at
    // all (see `flush_chunks`).
    opts.set_atomic_flush(true);
    opts
}

fn cf_descriptors() -> Vec<ColumnFamilyDescriptor> {
    let plain = || {
        let mut o = Options::default();
        o.set_compression_type(DBCompressionType::None);
        o
    };
    let mut packs = plain();
    // Packs are already zstd-compressed: keep them in blob files, compress
    // nothing twice, and let compaction drop dead blobs.
    packs.set_enable_blob_files(true);
    packs.set_min_blob_size(0);
    packs.set_blob_file_size(256 << 20);
    packs.set_blob_compression_type(DBCompressionType::None);
    packs.set_enable_blob_gc(true);
    packs.set_blob_gc_age_cutoff(0.25);
    // Every import asks `refs` whether each of its chunks exists, most of
    // them absent on a first import: a bloom filter answers those without
    // reading a data block.
    let mut refs = plain();
    let mut table = BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    refs.set_block_based_table_factory(&table);
    vec![
        ColumnFamilyDescriptor::new(CF_META, plain()),
        ColumnFamilyDescriptor::new(CF_PACKS, packs),
        ColumnFamilyDescriptor::new(CF_REFS, refs),
        ColumnFamilyDescriptor::new(CF_NUMBERS, plain()),
        ColumnFamilyDescriptor::new(CF_MANIFESTS, plain()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Table files of `store` this process has open.
    fn open_tables(store: &Path) -> usize {
        fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| {
                target.parent() == Some(store) && target.extension() == Some("sst".as_ref())
            })
            .count()
    }

    #[test]
    fn a_writer_opens_table_files_as_reads_need_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        Store::open_or_create(&path, None).unwrap();
        // One flush per process, as a thousand imports leave the store.
        for id in 0..48u64 {
            let store = Store::open(&path).unwrap();
            let packs = store.cf(CF_PACKS).unwrap();
            store.db.put_cf(packs, pack_key(id), b"pack").unwrap();
            store.flush_chunks().unwrap();
        }
        let tables = fs::read_dir(&path)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("sst".as_ref()))
            .count();
        assert!(tables >= 40, "only {tables} table files");
        let path = path.canonicalize().unwrap();
        let store = Store::open(&path).unwrap();
        // Before, the writer opened all of them (RocksDB's default); now
        // RocksDB preloads a few (16) and opens the rest when read.
        assert!(
            open_tables(&path) < tables / 2,
            "{} of {tables} open",
            open_tables(&path)
        );
        drop(store);
        // Readers beside a writer still open every one at start.
        let _reader = Store::open_read_only(&path).unwrap();
        assert_eq!(open_tables(&path), tables);
    }

    #[test]
    fn a_creation_that_stopped_before_its_config_is_finished_by_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        // What a crash between creating the database and writing its
        // config leaves.
        drop(DB::open_cf_descriptors(&db_options(true), &path, cf_descriptors()).unwrap());
        assert!(matches!(Store::open(&path), Err(Error::UnfinishedStore(_))));
        let store = Store::open_or_create(&path, None).unwrap();
        assert_eq!(store.config(), &StoreConfig::default());
    }

    #[test]
    fn a_store_of_format_2_is_refused_with_what_to_do_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        // Format 2's column families and config, as that build made them.
        {
            let db = DB::open_cf_descriptors(
                &db_options(true),
                &path,
                ["meta", "packs", "refs", "manifests"]
                    .map(|name| ColumnFamilyDescriptor::new(name, Options::default())),
            )
            .unwrap();
            let config = br#"{"format":2,"chunking":{"kind":"fixed","size":4096},"zstd_level":3,"fastcdc_version":"3.2.1"}"#;
            db.put_cf(db.cf_handle("meta").unwrap(), CONFIG_KEY, config)
                .unwrap();
        }
        let files = |p: &Path| {
            let mut names: Vec<_> = fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .filter(|n| !n.to_string_lossy().starts_with("LOG"))
                .collect();
            names.sort();
            names
        };
        let before = files(&path);
        for opened in [
            Store::open(&path).err().unwrap(),
            Store::open_read_only(&path).err().unwrap(),
            Store::open_or_create(&path, None).err().unwrap(),
        ] {
            assert!(
                matches!(
                    opened,
                    Error::StoreConfig {
                        fault: StoreFault::UnsupportedFormat(2),
                        ..
                    }
                ),
                "{opened}"
            );
            let why = opened.to_string();
            assert!(why.contains("store format 2 is not supported"), "{why}");
            assert!(why.contains("export") && why.contains("new store"), "{why}");
        }
        // Nothing was added to it (no `numbers` column family).
        assert_eq!(files(&path), before);
        let cfs = DB::list_cf(&Options::default(), &path).unwrap();
        assert!(!cfs.iter().any(|cf| cf == CF_NUMBERS), "{cfs:?}");
    }

    #[test]
    fn a_directory_that_holds_other_files_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("home");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("notes.txt"), b"mine").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o1777)).unwrap();
        let err = Store::open_or_create(&path, None).err().unwrap();
        assert!(
            matches!(&err, Error::StoreConfig { fault: StoreFault::OtherFiles { first }, .. }
                if first == "notes.txt"),
            "{err}"
        );
        assert!(err.to_string().contains("other files"), "{err}");
        let names: Vec<_> = fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["notes.txt"]);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o1777
        );
        // Through a symlink, the same.
        std::os::unix::fs::symlink(&path, dir.path().join("link")).unwrap();
        assert!(Store::open_or_create(&dir.path().join("link"), None).is_err());
        assert_eq!(fs::read_dir(&path).unwrap().count(), 1);
    }

    #[test]
    fn an_empty_directory_becomes_a_store_and_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        fs::create_dir(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o750)).unwrap();
        Store::open_or_create(&path, None).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o750
        );
        // A new one is made private.
        let new = dir.path().join("new");
        Store::open_or_create(&new, None).unwrap();
        assert_eq!(
            fs::metadata(&new).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        // A file is not a store.
        let file = dir.path().join("file");
        fs::write(&file, b"x").unwrap();
        let err = Store::open_or_create(&file, None).err().unwrap();
        assert!(
            matches!(
                err,
                Error::StoreConfig {
                    fault: StoreFault::NotADirectory,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    #[test]
    fn creators_at_once_wait_for_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        // In one process RocksDB reports the held lock as "lock hold by
        // current process": every thread either opens it or is told it is
        // busy, never a raw lock error; none finds a half-made store.
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| Store::open_or_create(&path, None).map(drop)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for result in results {
            assert!(matches!(result, Ok(()) | Err(Error::Busy(_))), "{result:?}");
        }
        Store::open(&path).unwrap();
    }
}
