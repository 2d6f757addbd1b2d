//! A read-only view of a store that follows its writers: how a mount sees
//! what `import`, `rm` and `gc` commit while it serves, without ever
//! writing the store or taking the writer's lock.
//!
//! Each catch-up that finds the store changed opens it read-only again.
//! RocksDB's own follower, the secondary instance, is not used: its
//! recovery takes a blob file that gc dropped while an older one stays for
//! a missing file, and falls back to a version from before it, so a mount
//! opened after such a gc saw none of the VMIs (`tests/follower.rs`).
//! A read-only open just applies the writer's MANIFEST as it stands.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::store::{Access, Store};

/// How many times a catch-up opens the store again when an open fails:
/// a writer's compaction may delete a file between the MANIFEST read and
/// the file's open.
const OPEN_ATTEMPTS: usize = 3;

pub struct Follower {
    path: PathBuf,
    /// The store as of the last catch-up; readers clone the `Arc`, so a
    /// reopen never waits for a read in flight, nor it for the reopen.
    current: RwLock<Arc<Store>>,
    /// What the store's files looked like when `current` was opened.
    /// Held while reopening, so one catch-up reopens and the others wait.
    seen: Mutex<Fingerprint>,
}

/// What every commit of a writer changes: the write-ahead logs (each
/// synced batch appends), the MANIFEST (each flush, compaction and writer
/// open) and CURRENT, by name, length and modification time.
#[derive(Debug, PartialEq, Eq)]
struct Fingerprint(Vec<(OsString, u64, Option<SystemTime>)>);

impl Follower {
    /// Opens an existing store to follow it.
    pub fn open(path: &Path) -> Result<Self> {
        let (store, seen) = open_fresh(path)?;
        Ok(Follower {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(store)),
            seen: Mutex::new(seen),
        })
    }

    /// The store as of the last catch-up.
    pub fn current(&self) -> Arc<Store> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The store as writers have left it: opened again if anything was
    /// committed since the last catch-up, else the one already open. On an
    /// error the previous view stays current.
    pub fn catch_up(&self) -> Result<Arc<Store>> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if fingerprint(&self.path)? != *seen {
            let (store, now) = open_fresh(&self.path)?;
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(store);
            *seen = now;
        }
        Ok(self.current())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Opens the store read-only, with the fingerprint taken just before: a
/// commit during the open changes the files again, so the next catch-up
/// reopens rather than miss it.
fn open_fresh(path: &Path) -> Result<(Store, Fingerprint)> {
    let mut attempt = 0;
    loop {
        let before = fingerprint(path)?;
        match Store::open_with(path, Access::Follow) {
            Ok(store) => return Ok((store, before)),
            Err(Error::Db(_)) if attempt + 1 < OPEN_ATTEMPTS => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

fn fingerprint(path: &Path) -> Result<Fingerprint> {
    let mut files = Vec::new();
    for entry in fs::read_dir(path).map_err(|e| Error::io(path, e))? {
        let entry = entry.map_err(|e| Error::io(path, e))?;
        let name = entry.file_name();
        let text = name.to_string_lossy();
        if text == "CURRENT" || text.starts_with("MANIFEST-") || text.ends_with(".log") {
            // A file deleted since the listing is a change all the same.
            let (len, modified) = match entry.metadata() {
                Ok(m) => (m.len(), m.modified().ok()),
                Err(_) => (u64::MAX, None),
            };
            files.push((name, len, modified));
        }
    }
    files.sort();
    Ok(Fingerprint(files))
}
