//! Opening a store: creating it, the one-writer lock, and read-only views
//! that are whole commits.

use std::ffi::OsString;
use std::fs;
use std::num::NonZeroUsize;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use rocksdb::{IteratorMode, Options, WriteOptions, DB};

use crate::chunking::{Chunking, FASTCDC_VERSION};
use crate::error::StoreFault;
use crate::{Error, Result};

use super::*;

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

/// How long a read-only open keeps trying for a view that no commit tore.
/// Flushes come seconds apart even in a long import and an open takes
/// milliseconds, so one retry is the rule; a long wait means a writer
/// compacting throughout. A mount then keeps its previous view and tries
/// again at the next open; a verb would rather wait than fail.
const FOLLOW_BUDGET: Duration = Duration::from_secs(2);
const READ_ONLY_BUDGET: Duration = Duration::from_secs(60);

/// Opens the store read-only as it stood at one moment. RocksDB reads the
/// MANIFEST first and the write-ahead logs last. An import writes its packs
/// and `numbers` records without the WAL, flushes them (a MANIFEST edit),
/// then logs its manifests: an open that read the MANIFEST before that flush
/// and the logs after that batch saw manifests naming chunk numbers it had
/// no record of (CI's one EIO at open; `store/tests/follower.rs`). So the
/// open is made again, after a short pause, until the MANIFEST stayed the
/// same throughout: the logs then continue the MANIFEST read, as a crash of
/// the writer would leave them, and every commit is whole or absent. An
/// open that fails while the MANIFEST changed is made again too: compaction
/// may delete a table file between the MANIFEST's read and the file's open.
fn open_untorn(path: &Path, opts: &Options, budget: Duration) -> Result<DB> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let before = CommitFiles::of(path, false)?;
        let opened = DB::open_cf_descriptors_read_only(opts, path, cf_descriptors(), false);
        if CommitFiles::of(path, false)? == before {
            return Ok(opened?);
        }
        if started.elapsed() >= budget {
            return Err(Error::KeptChanging(path.to_path_buf()));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
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
            Access::ReadOnly => open_untorn(path, &opts, READ_ONLY_BUDGET)?,
            Access::Follow => {
                opts.set_max_open_files(-1);
                open_untorn(path, &opts, FOLLOW_BUDGET)?
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
}

/// What a store of another format is told.
pub(super) fn unsupported_format(path: &Path, format: u32) -> Error {
    Error::StoreConfig {
        path: path.to_path_buf(),
        fault: StoreFault::UnsupportedFormat(format),
    }
}

/// A store of format 2 or older has no `numbers` column family, and
/// RocksDB refuses to open it with ours before its config can be read: so
/// its format is read through its own column families, only to refuse it
/// with the reason.
pub(super) fn refuse_older_format(path: &Path) -> Result<()> {
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

/// Makes `path` a directory (mode 0700) if it is nothing yet; refuses
/// anything but a directory. An existing directory keeps its mode.
pub(super) fn prepare_store_dir(path: &Path) -> Result<()> {
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

pub(super) fn is_store(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path.join("CURRENT")) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// A directory that is to become a store must be empty: RocksDB's files
/// among someone else's would be a mess no verb could clean up. RocksDB's
/// own files of a creation that stopped early are not someone else's.
pub(super) fn refuse_foreign_files(path: &Path) -> Result<()> {
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
pub(super) fn finish_creation(path: &Path, config: StoreConfig) -> Result<()> {
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

pub(super) fn require_store(path: &Path) -> Result<()> {
    if path.join("CURRENT").exists() {
        return Ok(());
    }
    Err(Error::StoreConfig {
        path: path.to_path_buf(),
        fault: StoreFault::NoStore,
    })
}

/// The one-writer lock: an exclusive `flock` of the store directory, held
/// by a writer for as long as it has the store open, and while a store is
/// made. Taken without waiting: a held lock is [`Error::Busy`], which the
/// CLI waits on. (RocksDB's own `LOCK` would say the same, but only in its
/// message text.)
pub(super) fn lock_writer(path: &Path) -> Result<fs::File> {
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
