//! The store: RocksDB on disk, with one column family per kind of record.
//! docs/design.md gives the keys and values byte by byte.
//!
//! - `meta`: `config` -> JSON [`StoreConfig`]; fixed when the store is made.
//! - `packs`: pack id (u64 big-endian, allocated in write order) -> encoded
//!   [`Pack`]: chunks compressed together; BlobDB keeps these values out of
//!   the LSM tree so compaction does not rewrite them.
//! - `refs`: chunk id -> [`ChunkInfo`] (refcount, sizes, pack and offset).
//!   A pack and the refs records of its chunks are written in one batch.
//! - `manifests`: VMI name -> encoded [`Manifest`].
//!
//! Every change that touches refcounts (import, rm, gc) runs under the
//! store's write lock and ends in one synced `WriteBatch`, so a crash leaves
//! the state before or after it, never a manifest without its chunks.

use std::fs;
use std::num::NonZeroUsize;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, FlushOptions,
    IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

use crate::chunking::{Chunking, FASTCDC_VERSION};
use crate::id::ChunkId;
use crate::manifest::Manifest;
use crate::pack::{decode_pack, encode_pack, Pack};
use crate::{Error, Result};

pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_PACKS: &str = "packs";
pub(crate) const CF_REFS: &str = "refs";
pub(crate) const CF_MANIFESTS: &str = "manifests";
const CONFIG_KEY: &[u8] = b"config";
/// `meta` key of the next pack id (u64 LE). Kept, not derived from the last
/// pack, so an id is never reused after gc deletes the newest pack: a mount
/// may still hold the old pack under that id.
const NEXT_PACK_KEY: &[u8] = b"next_pack";
/// Decoded packs `read_chunk` keeps, so reading a boot image's chunks in
/// order decodes each pack once.
const PACK_CACHE: usize = 16;
/// Subdirectory of the store where each secondary (mount) keeps its logs.
const SECONDARY_DIR: &str = "secondaries";
pub const STORE_FORMAT: u32 = 2;

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
/// stored bytes, and where it is: pack id and raw offset in the pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    pub refs: u64,
    pub raw_len: u32,
    pub stored_len: u32,
    pub pack: u64,
    pub offset: u32,
}

const INFO_LEN: usize = 28;

impl ChunkInfo {
    pub(crate) fn encode(&self) -> [u8; INFO_LEN] {
        let mut out = [0u8; INFO_LEN];
        out[..8].copy_from_slice(&self.refs.to_le_bytes());
        out[8..12].copy_from_slice(&self.raw_len.to_le_bytes());
        out[12..16].copy_from_slice(&self.stored_len.to_le_bytes());
        out[16..24].copy_from_slice(&self.pack.to_le_bytes());
        out[24..].copy_from_slice(&self.offset.to_le_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != INFO_LEN {
            return Err(Error::CorruptStore(format!(
                "refs record of {} bytes",
                bytes.len()
            )));
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
        Ok(ChunkInfo {
            refs: u64_at(0),
            raw_len: u32_at(8),
            stored_len: u32_at(12),
            pack: u64_at(16),
            offset: u32_at(24),
        })
    }
}

/// A pack ready to be written: its id, its value and the refs records of
/// its chunks (with the refcounts the caller gave).
pub(crate) struct NewPack {
    pub id: u64,
    pub value: Vec<u8>,
    pub chunks: Vec<(ChunkId, ChunkInfo)>,
}

pub(crate) fn pack_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

pub struct Store {
    db: DB,
    path: PathBuf,
    config: StoreConfig,
    write_lock: Mutex<()>,
    next_pack: AtomicU64,
    packs: Mutex<lru::LruCache<u64, Arc<Pack>>>,
    /// Where a secondary instance keeps its own logs; removed on drop.
    secondary_dir: Option<PathBuf>,
}

/// How a process holds the store. RocksDB lets one process write; a mount
/// follows the writer as a secondary, so `import`, `rm` and `gc` run as
/// ordinary commands beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Write,
    ReadOnly,
    Secondary,
}

impl Store {
    /// Opens the store at `path`, creating it with `config` if it does not
    /// exist. An existing store keeps its own config; asking for a different
    /// one is an error rather than a silent mix.
    pub fn open_or_create(path: &Path, config: Option<StoreConfig>) -> Result<Self> {
        if path.join("CURRENT").exists() {
            let store = Self::open_with(path, Access::Write)?;
            if let Some(wanted) = config {
                if wanted != store.config {
                    return Err(Error::StoreConfig {
                        path: path.to_path_buf(),
                        why: format!(
                            "it was created with chunking {} and zstd level {}; a store's settings cannot change",
                            store.config.chunking, store.config.zstd_level
                        ),
                    });
                }
            }
            return Ok(store);
        }
        let config = config.unwrap_or_default();
        config.chunking.validate()?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| Error::io(path, e))?;
        // A pre-existing empty directory keeps its mode unless we tighten it.
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(path, e))?;
        let db = DB::open_cf_descriptors(&db_options(true), path, cf_descriptors())?;
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        let json = serde_json::to_vec(&config).map_err(|e| Error::Invalid(e.to_string()))?;
        let meta = db
            .cf_handle(CF_META)
            .ok_or_else(|| Error::CorruptStore("no meta".into()))?;
        db.put_cf_opt(meta, CONFIG_KEY, json, &opts)?;
        drop(db);
        Self::open_with(path, Access::Write)
    }

    /// Opens an existing store for reading and writing. Only one process can
    /// do this at a time (RocksDB's lock).
    pub fn open(path: &Path) -> Result<Self> {
        require_store(path)?;
        Self::open_with(path, Access::Write)
    }

    /// Opens an existing store read-only: works while another process (a
    /// mount) holds it for writing, and sees the state as of this call.
    pub fn open_read_only(path: &Path) -> Result<Self> {
        require_store(path)?;
        Self::open_with(path, Access::ReadOnly)
    }

    /// Opens an existing store as a RocksDB secondary: it never takes the
    /// writer's lock, and [`Store::catch_up`] brings it up to date with what
    /// writers have committed since. This is how a mount follows imports,
    /// removals and gc without unmounting.
    pub fn open_secondary(path: &Path) -> Result<Self> {
        require_store(path)?;
        Self::open_with(path, Access::Secondary)
    }

    /// For a secondary: replays what writers committed since the last call.
    /// A no-op for the other kinds of access.
    pub fn catch_up(&self) -> Result<()> {
        if self.secondary_dir.is_some() {
            self.db.try_catch_up_with_primary()?;
        }
        Ok(())
    }

    fn open_with(path: &Path, access: Access) -> Result<Self> {
        let mut opts = db_options(false);
        let mut secondary_dir = None;
        let db = match access {
            Access::Write => DB::open_cf_descriptors(&opts, path, cf_descriptors())
                .map_err(|e| busy_or(path, e))?,
            Access::ReadOnly => {
                DB::open_cf_descriptors_read_only(&opts, path, cf_descriptors(), false)?
            }
            Access::Secondary => {
                // Keep every table file open once seen, so a file the writer
                // deletes (compaction, gc) stays readable until we catch up.
                opts.set_max_open_files(-1);
                remove_dead_secondaries(&path.join(SECONDARY_DIR));
                let dir = path
                    .join(SECONDARY_DIR)
                    .join(std::process::id().to_string());
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .map_err(|e| Error::io(&dir, e))?;
                let db = DB::open_cf_descriptors_as_secondary(&opts, path, &dir, cf_descriptors())?;
                secondary_dir = Some(dir);
                db
            }
        };
        let meta = db
            .cf_handle(CF_META)
            .ok_or_else(|| Error::CorruptStore("no meta column family".into()))?;
        let raw = db
            .get_cf(meta, CONFIG_KEY)?
            .ok_or_else(|| Error::CorruptStore("no config record".into()))?;
        let config: StoreConfig = serde_json::from_slice(&raw)
            .map_err(|e| Error::CorruptStore(format!("config: {e}")))?;
        if config.format != STORE_FORMAT {
            return Err(Error::StoreConfig {
                path: path.to_path_buf(),
                why: format!(
                    "store format {} is not supported (this build: {STORE_FORMAT}); import the boot images (.yolo) into a new store",
                    config.format
                ),
            });
        }
        if matches!(config.chunking, Chunking::Fastcdc { .. })
            && config.fastcdc_version != FASTCDC_VERSION
        {
            return Err(Error::StoreConfig {
                path: path.to_path_buf(),
                why: format!(
                    "it was chunked with fastcdc {} but this build has {FASTCDC_VERSION}; boundaries could differ",
                    config.fastcdc_version
                ),
            });
        }
        let next_pack =
            match db.get_cf(meta, NEXT_PACK_KEY)? {
                Some(v) => u64::from_le_bytes(v.as_slice().try_into().map_err(|_| {
                    Error::CorruptStore(format!("next pack id of {} bytes", v.len()))
                })?),
                None => 1,
            };
        Ok(Store {
            db,
            path: path.to_path_buf(),
            config,
            write_lock: Mutex::new(()),
            next_pack: AtomicU64::new(next_pack),
            packs: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(PACK_CACHE).unwrap_or(NonZeroUsize::MIN),
            )),
            secondary_dir,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    pub(crate) fn cf(&self, name: &str) -> Result<&ColumnFamily> {
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
    /// given, compressed on every core, with fresh pack ids. The caller
    /// holds the write lock and writes them with [`Store::put_packs`].
    pub(crate) fn build_packs(&self, chunks: &[(ChunkId, &[u8], u64)]) -> Vec<NewPack> {
        use rayon::prelude::*;
        let runs = crate::pack::runs(chunks, crate::pack::PACK_BYTES, |(_, raw, _)| raw.len());
        let first = self
            .next_pack
            .fetch_add(runs.len() as u64, Ordering::Relaxed);
        let level = self.config.zstd_level;
        runs.into_par_iter()
            .enumerate()
            .map(|(i, run)| {
                let run = &chunks[run];
                let input: Vec<&[u8]> = run.iter().map(|(_, raw, _)| *raw).collect();
                let (value, offsets) = encode_pack(&input, level);
                let raw_total: u64 = run.iter().map(|(_, raw, _)| raw.len() as u64).sum();
                let id = first + i as u64;
                // Each chunk's share of the stored bytes, so sums of
                // `stored_len` (stats, gc plans) add up to the packs' sizes.
                let mut shares = Vec::with_capacity(run.len());
                let mut given = 0u64;
                let mut raw_so_far = 0u64;
                for (_, raw, _) in run {
                    raw_so_far += raw.len() as u64;
                    let upto = (value.len() as u64 * raw_so_far)
                        .checked_div(raw_total)
                        .unwrap_or(0);
                    shares.push((upto - given) as u32);
                    given = upto;
                }
                if let Some(last) = shares.last_mut() {
                    *last += (value.len() as u64 - given) as u32;
                }
                let chunks = run
                    .iter()
                    .zip(offsets)
                    .zip(shares)
                    .map(|(((cid, raw, refs), offset), share)| {
                        let info = ChunkInfo {
                            refs: *refs,
                            raw_len: raw.len() as u32,
                            stored_len: share,
                            pack: id,
                            offset,
                        };
                        (*cid, info)
                    })
                    .collect();
                NewPack { id, value, chunks }
            })
            .collect()
    }

    /// Adds `packs`, their chunks' refs records and the next pack id to
    /// `batch`.
    pub(crate) fn put_packs(&self, batch: &mut WriteBatch, packs: &[NewPack]) -> Result<()> {
        let (packs_cf, refs_cf) = (self.cf(CF_PACKS)?, self.cf(CF_REFS)?);
        for pack in packs {
            batch.put_cf(packs_cf, pack_key(pack.id), &pack.value);
            for (id, info) in &pack.chunks {
                batch.put_cf(refs_cf, id.as_bytes(), info.encode());
            }
        }
        let next = self.next_pack.load(Ordering::Relaxed);
        batch.put_cf(self.cf(CF_META)?, NEXT_PACK_KEY, next.to_le_bytes());
        Ok(())
    }

    /// Writes new packs and their refs records (refcount 0) without the
    /// WAL: pack values go to disk once (blob files at flush) instead of
    /// twice (WAL, then blob file), and a reopen has no large WAL to replay.
    /// They are durable only after [`Store::flush_chunks`]; a crash before
    /// loses them, a crash after leaves garbage that `gc` collects. Callers
    /// write what references them afterwards, with [`Store::write`].
    pub(crate) fn write_unreferenced_chunks(&self, batch: WriteBatch) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.disable_wal(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    /// Flushes the `packs`, `refs` and `meta` column families atomically
    /// (with `atomic_flush`, a pack is never durable without its chunks'
    /// refs records, nor without the next pack id past it).
    pub(crate) fn flush_chunks(&self) -> Result<()> {
        let mut flush = FlushOptions::default();
        flush.set_wait(true);
        self.db.flush_cfs_opt(
            &[self.cf(CF_PACKS)?, self.cf(CF_REFS)?, self.cf(CF_META)?],
            &flush,
        )?;
        Ok(())
    }

    pub(crate) fn write(&self, batch: WriteBatch) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    pub fn manifest(&self, name: &str) -> Result<Manifest> {
        match self.db.get_cf(self.cf(CF_MANIFESTS)?, name.as_bytes())? {
            Some(bytes) => Manifest::decode(&bytes),
            None => Err(Error::UnknownVmi(name.to_string())),
        }
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
    /// returned as an error in place so `verify` can name it.
    pub fn manifests(&self) -> Result<Vec<(String, Result<Manifest>)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_MANIFESTS)?, IteratorMode::Start)
        {
            let (key, value) = item?;
            out.push((
                String::from_utf8_lossy(&key).into_owned(),
                Manifest::decode(&value),
            ));
        }
        Ok(out)
    }

    pub fn chunk_info(&self, id: &ChunkId) -> Result<Option<ChunkInfo>> {
        self.db
            .get_cf(self.cf(CF_REFS)?, id.as_bytes())?
            .map(|v| ChunkInfo::decode(&v))
            .transpose()
    }

    /// Every `refs` record.
    pub fn chunk_infos(&self) -> Result<Vec<(ChunkId, ChunkInfo)>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_REFS)?, IteratorMode::Start) {
            let (key, value) = item?;
            let id = ChunkId::from_slice(&key)
                .ok_or_else(|| Error::CorruptStore(format!("refs key of {} bytes", key.len())))?;
            out.push((id, ChunkInfo::decode(&value)?));
        }
        Ok(out)
    }

    /// A chunk's raw bytes, checked against its id.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let (info, pack) = self.pack_of(id)?;
        pack.checked(id, info.offset)
            .map(<[u8]>::to_vec)
            .map_err(|why| Error::CorruptChunk { id: *id, why })
    }

    /// Chunk `id`'s refs record and its decoded pack (not yet checked:
    /// see [`Pack::checked`]). Recently read packs are kept decoded.
    pub(crate) fn pack_of(&self, id: &ChunkId) -> Result<(ChunkInfo, Arc<Pack>)> {
        let info = self
            .chunk_info(id)?
            .ok_or(Error::MissingChunk { id: *id })?;
        let cached = lock(&self.packs).get(&info.pack).cloned();
        if let Some(pack) = cached {
            return Ok((info, pack));
        }
        let stored = self
            .db
            .get_pinned_cf(self.cf(CF_PACKS)?, pack_key(info.pack))?
            .ok_or(Error::MissingChunk { id: *id })?;
        let pack = Arc::new(decode_pack(&stored).map_err(|why| Error::CorruptChunk {
            id: *id,
            why: format!("pack {}: {why}", info.pack),
        })?);
        lock(&self.packs).put(info.pack, pack.clone());
        Ok((info, pack))
    }

    /// The stored (still encoded) values of packs `ids`, in one RocksDB
    /// MultiGet: it sorts the blob reads by file and offset, which a loop
    /// of gets cannot.
    pub(crate) fn read_encoded_packs(&self, ids: &[u64]) -> Result<Vec<Option<Vec<u8>>>> {
        let cf = self.cf(CF_PACKS)?;
        let keys: Vec<[u8; 8]> = ids.iter().map(|id| pack_key(*id)).collect();
        self.db
            .batched_multi_get_cf(cf, keys.iter(), false)
            .into_iter()
            .map(|value| Ok(value?.map(|v| v.to_vec())))
            .collect()
    }

    /// Testing only: inverts chunk `id`'s bytes inside its pack, bypassing
    /// every check, to plant the corruption (a chunk whose bytes no longer
    /// hash to its id) that `verify` and the mount must catch.
    #[doc(hidden)]
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
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_PACKS)?, pack_key(info.pack), value);
        self.write(batch)
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

    /// Flushes memtables and compacts, so deleted chunks give their space
    /// back: blob files are rewritten without the dead values.
    pub(crate) fn compact(&self) -> Result<()> {
        let chunks = self.cf(CF_PACKS)?;
        self.db
            .set_options_cf(chunks, &[("blob_garbage_collection_age_cutoff", "1.0")])?;
        for name in [CF_PACKS, CF_REFS, CF_MANIFESTS] {
            let cf = self.cf(name)?;
            self.db.flush_cf(cf)?;
            self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
        self.db
            .set_options_cf(chunks, &[("blob_garbage_collection_age_cutoff", "0.25")])?;
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some(dir) = &self.secondary_dir {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Removes the logs of secondaries (mounts) whose process is gone: a mount
/// killed with SIGKILL, or one that failed to start, never ran its `Drop`.
fn remove_dead_secondaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::pid_t>().ok())
            .filter(|&pid| pid > 0)
        else {
            continue;
        };
        // SAFETY: signal 0 only asks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn require_store(path: &Path) -> Result<()> {
    if path.join("CURRENT").exists() {
        return Ok(());
    }
    Err(Error::StoreConfig {
        path: path.to_path_buf(),
        why: "no store here (import something first, or pass --store)".into(),
    })
}

/// RocksDB reports a held `LOCK` file as an I/O error; name it for what it
/// is, so a caller can wait for the other writer instead of failing.
impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        Error::Db(e.into_string())
    }
}

fn busy_or(path: &Path, e: rocksdb::Error) -> Error {
    let msg = e.to_string();
    if msg.contains("LOCK")
        && (msg.contains("Resource temporarily unavailable") || msg.contains("lock hold"))
    {
        Error::Busy(path.to_path_buf())
    } else {
        Error::from(e)
    }
}

fn db_options(create: bool) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(create);
    opts.create_missing_column_families(create);
    opts.set_compression_type(DBCompressionType::None);
    opts.increase_parallelism(2);
    opts.set_keep_log_file_num(4);
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
        ColumnFamilyDescriptor::new(CF_MANIFESTS, plain()),
    ]
}
