//! Remote locks: `push` and `pull` share the remote, `gc` holds it alone.
//! A lock is an object `locks/<kind>-<id>`. A taker writes its lock first
//! and lists the others second; with the read-after-write consistency of
//! S3 and radosgw, of two takers that overlap at least one sees the other,
//! so a gc and a push never both go ahead. A holder rewrites its lock every
//! `REFRESH`; a lock not rewritten for `TTL` belongs to a dead process and
//! is ignored and removed, as is at once a lock whose process, on this
//! host, has exited. Ages are measured on the server's clock:
//! against the Last-Modified of the taker's own fresh lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::{ObjectStoreExt, PutPayload};

use super::{Remote, RemoteFault};
use crate::Result;

pub(super) const TTL: Duration = Duration::from_secs(600);
const REFRESH: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LockKind {
    Push,
    Pull,
    Gc,
}

impl LockKind {
    fn as_str(self) -> &'static str {
        match self {
            LockKind::Push => "push",
            LockKind::Pull => "pull",
            LockKind::Gc => "gc",
        }
    }
}

pub(super) struct RemoteLock<'a> {
    remote: &'a Remote,
    key: String,
    /// The server's time when the lock was taken.
    pub(super) taken_at: SystemTime,
    /// Seconds since UNIX_EPOCH (local clock) of the last successful write.
    last_written: Arc<AtomicU64>,
    refresher: tokio::task::JoinHandle<()>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Remote {
    /// Takes a lock of `kind`, or fails naming who holds a conflicting one.
    pub(super) fn lock(&self, kind: LockKind) -> Result<RemoteLock<'_>> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let pid = std::process::id();
        let seed = format!("{host} {pid} {:?}", SystemTime::now());
        let id = &blake3::hash(seed.as_bytes()).to_hex()[..16];
        let key = format!("locks/{}-{id}", kind.as_str());
        let body = serde_json::json!({
            "kind": kind.as_str(), "host": host, "pid": pid, "taken": unix_now(),
        })
        .to_string();
        let payload = PutPayload::from(body.into_bytes());

        let taken_at = self.runtime.block_on(async {
            self.put_overwrite(&key, payload.clone()).await?;
            let mine = self
                .objects
                .head(&self.path(&key))
                .await
                .map_err(|e| self.error(RemoteFault::Request(e)))?;
            let now: SystemTime = mine.last_modified.into();
            let mut conflicts = Vec::new();
            for (other, meta) in self.list("locks/").await? {
                if other == key {
                    continue;
                }
                let age = now
                    .duration_since(meta.last_modified.into())
                    .unwrap_or_default();
                let conflicting = kind == LockKind::Gc || other.starts_with("locks/gc-");
                if !conflicting {
                    continue;
                }
                if age > TTL || self.holder_is_dead_here(&other, &host).await {
                    self.delete(&other).await?;
                    continue;
                }
                conflicts.push(other);
            }
            if !conflicts.is_empty() {
                self.delete(&key).await?;
                return Err(self.error(RemoteFault::Locked {
                    holders: conflicts,
                    ttl_min: TTL.as_secs() / 60,
                }));
            }
            Ok(now)
        })?;

        let last_written = Arc::new(AtomicU64::new(unix_now()));
        let (objects, path, written) =
            (self.objects.clone(), self.path(&key), last_written.clone());
        let refresher = self.runtime.spawn(async move {
            loop {
                tokio::time::sleep(REFRESH).await;
                if objects.put(&path, payload.clone()).await.is_ok() {
                    written.store(unix_now(), Ordering::Relaxed);
                }
            }
        });
        Ok(RemoteLock {
            remote: self,
            key,
            taken_at,
            last_written,
            refresher,
        })
    }
}

impl Remote {
    /// True when lock `key` was taken on this host by a process that has
    /// exited (killed, say): it is stale at once, without waiting for TTL.
    async fn holder_is_dead_here(&self, key: &str, host: &str) -> bool {
        let Ok(Some(body)) = self.get_if_exists(key).await else {
            return false;
        };
        let Ok(lock) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return false;
        };
        let same_host = !host.is_empty() && lock["host"].as_str() == Some(host);
        match lock["pid"].as_u64() {
            Some(pid) if same_host => !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            _ => false,
        }
    }
}

impl RemoteLock<'_> {
    /// Fails if the lock may have lapsed (not rewritten for half its TTL):
    /// checked before every step another node's gc must not interleave with.
    pub(super) fn check_held(&self) -> Result<()> {
        let since = unix_now().saturating_sub(self.last_written.load(Ordering::Relaxed));
        if Duration::from_secs(since) > TTL / 2 {
            return Err(self.remote.error(RemoteFault::LockLost {
                key: self.key.clone(),
                secs: since,
            }));
        }
        Ok(())
    }
}

impl Drop for RemoteLock<'_> {
    fn drop(&mut self) {
        self.refresher.abort();
        // Best effort: a lock left behind only delays gc until its TTL.
        let _ = self.remote.runtime.block_on(self.remote.delete(&self.key));
    }
}
