//! The server's side of the lazy remote tier (`mount --remote`,
//! `remote/tier.rs`): finding remote boot images and checking them, taking
//! a chunk the store lacks from the remote, and storing a boot image once
//! all of its chunks are here. A child of `serve.rs` (it reaches the
//! server's fields); `serve.rs` calls it from three places: the manifest
//! lookup at open, a chunk missing from the store, and the preload.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::ImageServer;
use crate::files::metadata_in;
use crate::id::ChunkId;
use crate::manifest::Manifest;
use crate::remote::{RemoteTier, Stored};
use crate::store::Store;
use crate::{Error, Result};

/// How often a `--remote` mount looks for boot images pushed since.
pub const REMOTE_REFRESH: Duration = Duration::from_secs(30);

impl ImageServer {
    /// Serves the boot images `tier`'s remote holds and the store does not
    /// (`mount --remote`); [`Self::start_remote`] starts reading it.
    pub fn set_remote(&mut self, tier: RemoteTier) {
        self.remote = Some(Arc::new(tier));
    }

    /// Reads the remote's boot images now and every [`REMOTE_REFRESH`],
    /// on a thread of its own, and checks each new one against its file
    /// (the rule local boot images follow); with `preload`, loads each
    /// once checked. A remote that does not answer is tried again every
    /// [`crate::remote::DOWN_FOR`].
    pub fn start_remote(self: &Arc<Self>, preload: bool) -> Result<()> {
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("yolo-remote".into())
            .spawn(move || loop {
                let Some(server) = weak.upgrade() else { return };
                let loaded = server.remote_round(preload);
                drop(server);
                std::thread::sleep(if loaded {
                    REMOTE_REFRESH
                } else {
                    crate::remote::DOWN_FOR
                });
            })
            .map_err(|source| Error::Spawn {
                what: "remote tier",
                source,
            })?;
        Ok(())
    }

    /// One reading of the remote; false if it failed.
    pub(crate) fn remote_round(self: &Arc<Self>, preload: bool) -> bool {
        let Some(tier) = &self.remote else {
            return false;
        };
        let store = self
            .store
            .catch_up()
            .unwrap_or_else(|_| self.store.current());
        let local: HashSet<String> = match store.names() {
            Ok(names) => names.into_iter().collect(),
            Err(e) => {
                self.warn_once(tier.url(), "reading the store's names: ", e);
                return false;
            }
        };
        let images = &self.images;
        let serve = |name: &str| {
            !local.contains(name) && metadata_in(images, name).is_ok_and(|m| m.is_file())
        };
        match tier.load(&store, serve) {
            Ok(new) => {
                for name in new {
                    match self.verify_boot_image(&name) {
                        Ok(true) if preload => match self.open(&name) {
                            Ok(image) => self.preload_once(&image),
                            Err(e) => eprintln!("yolo-store: {name}: {e}"),
                        },
                        Ok(_) => {}
                        Err(e) => eprintln!("yolo-store: {name}: {e}"),
                    }
                }
                tier.round_done();
                // Boot images complete but not stored yet (another writer
                // held the store when their preload ended).
                for name in tier.names() {
                    self.store_remote(&name);
                }
                true
            }
            Err(e) => {
                self.warn_once(
                    tier.url(),
                    "the remote could not be read (boot images it holds are served from their files until it can): ",
                    e,
                );
                false
            }
        }
    }

    /// The boot image of `name`: the store's, else the remote's (whose
    /// chunks come from the remote tier).
    pub(super) fn manifest_of(&self, store: &Store, name: &str) -> Result<Manifest> {
        match store.manifest(name) {
            Err(Error::UnknownVmi(n)) => self
                .remote
                .as_ref()
                .and_then(|tier| tier.manifest(name))
                .ok_or(Error::UnknownVmi(n)),
            other => other,
        }
    }

    /// Writes remote boot image `name` to the store if all its chunks are
    /// here; true when there is nothing left to do for it.
    pub(super) fn store_remote(&self, name: &str) -> bool {
        matches!(self.store_remote_now(name), Stored::Done | Stored::Local)
    }

    pub(crate) fn store_remote_now(&self, name: &str) -> Stored {
        let Some(tier) = &self.remote else {
            return Stored::Local;
        };
        let stored = tier.store(&self.store.current(), name);
        if stored == Stored::Done {
            // Served from the store from the next open on.
            let _ = self.store.catch_up();
        }
        stored
    }

    /// A chunk the store lacks, from the remote tier (checked there).
    pub(super) fn remote_chunk(&self, id: &ChunkId) -> Result<Arc<[u8]>> {
        // A chunk the remote does not hold either is a chunk failure.
        let tier = self
            .remote
            .as_ref()
            .filter(|tier| tier.has(id))
            .ok_or(Error::MissingChunk { id: *id })?;
        let data = tier.chunk(id)?;
        if !self.cache.contains(id) {
            self.cache.insert(*id, data.clone());
        }
        Ok(data)
    }
}
