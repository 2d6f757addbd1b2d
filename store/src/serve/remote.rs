//! What `mount --remote` adds to the server (the lazy remote tier,
//! `remote/tier.rs`): reading the remote's boot images now and then, and
//! checking each new one against its file, as local boot images are. The
//! chunk source ([`super::chunks`]) takes a chunk the store lacks from the
//! remote and stores a boot image once all of its chunks are here.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::ImageServer;
use crate::files::metadata_in;

use crate::{Error, Result};

/// How often a `--remote` mount looks for boot images pushed since.
const REMOTE_REFRESH: Duration = Duration::from_secs(30);

impl ImageServer {
    /// Reads the remote's boot images now and every [`REMOTE_REFRESH`],
    /// on a thread of its own, and checks each new one against its file
    /// (the rule local boot images follow); with [`super::Preload::All`], loads
    /// each once checked. A remote that does not answer is tried again every
    /// [`crate::remote::DOWN_FOR`].
    pub fn start_remote(self: &Arc<Self>) -> Result<()> {
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("yolo-remote".into())
            .spawn(move || loop {
                let Some(server) = weak.upgrade() else { return };
                let loaded = server.remote_round();
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
    pub(crate) fn remote_round(&self) -> bool {
        let Some(tier) = self.chunks.remote() else {
            return false;
        };
        let follower = self.chunks.follower();
        let store = follower.catch_up().unwrap_or_else(|_| follower.current());
        let local: HashSet<String> = match store.names() {
            Ok(names) => names.into_iter().collect(),
            Err(e) => {
                self.warned
                    .warn(tier.url(), "reading the store's names: ", e);
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
                    let checked = self.verify_boot_image(&name).and_then(|matches| {
                        if matches {
                            self.preload_if_all(&name)?;
                        }
                        Ok(())
                    });
                    if let Err(e) = checked {
                        eprintln!("yolo-store: {name}: {e}");
                    }
                }
                tier.round_done();
                // Boot images complete but not stored yet (another writer
                // held the store when their preload ended).
                for name in tier.names() {
                    self.chunks.store_remote(&name);
                }
                true
            }
            Err(e) => {
                self.warned.warn(
                    tier.url(),
                    "the remote could not be read (boot images it holds are served from their files until it can): ",
                    e,
                );
                false
            }
        }
    }

    /// Writes remote boot image `name` to the store if all its chunks are
    /// here (the preload does this; tests ask directly).
    #[cfg(test)]
    pub(crate) fn store_remote_now(&self, name: &str) -> crate::remote::Stored {
        self.chunks.store_remote_now(name)
    }
}
