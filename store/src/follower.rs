//! A read-only view of a store that follows its writers: how a mount sees
//! what `import`, `rm` and `gc` commit while it serves, without ever
//! writing the store or taking the writer's lock.
//!
//! Each catch-up that finds the store changed opens it read-only again.
//! RocksDB's own follower, the secondary instance, is not used: its
//! recovery takes a blob file that gc dropped while an older one stays for
//! a missing file, and falls back to a version from before it, so a mount
//! opened after such a gc saw none of the VMIs (`tests/follower.rs`).
//! A read-only open just applies the writer's MANIFEST as it stands, and
//! is made again if the MANIFEST changed while it ran (`Store::open_with`:
//! a view of the MANIFEST before an import's flush and of the logs after
//! its manifests named chunks it did not have).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::error::Result;
use crate::store::{Access, CommitFiles, Store};

pub struct Follower {
    path: PathBuf,
    /// The store as of the last catch-up; readers clone the `Arc`, so a
    /// reopen never waits for a read in flight, nor it for the reopen.
    current: RwLock<Arc<Store>>,
    /// What the store's files looked like when `current` was opened.
    /// Held while reopening, so one catch-up reopens and the others wait.
    seen: Mutex<CommitFiles>,
}

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
fn open_fresh(path: &Path) -> Result<(Store, CommitFiles)> {
    let before = fingerprint(path)?;
    Ok((Store::open_with(path, Access::Follow)?, before))
}

/// The store's commit files, write-ahead logs included.
fn fingerprint(path: &Path) -> Result<CommitFiles> {
    CommitFiles::of(path, true)
}
