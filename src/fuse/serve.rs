//! The serving backend: files come from an [`ImageServer`], which takes
//! boot-image blocks from the store and everything else from the file.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use fuser::FopenFlags;
use yolo_store_core::{FileIdentity, ImageServer, OpenImage, PageCache, ServeStats};

use super::Backend;

pub struct Serve {
    server: Arc<ImageServer>,
    /// Boot images already preloaded, by file name and identity: You Only
    /// Load Once, even when a VM opens its backing file several times.
    preloaded: Mutex<HashMap<String, FileIdentity>>,
    preload_on_open: bool,
    verified_at_start: AtomicBool,
}

impl Serve {
    pub fn new(server: Arc<ImageServer>, preload_on_open: bool) -> Self {
        Serve {
            server,
            preloaded: Mutex::new(HashMap::new()),
            preload_on_open,
            verified_at_start: AtomicBool::new(false),
        }
    }

    /// Starts loading `image`'s boot image into the cache in the background,
    /// unless that boot image was loaded already.
    fn preload_once(&self, image: &OpenImage) {
        let Some(index) = image.boot_image() else {
            return;
        };
        let identity = index.manifest().identity;
        let first = self
            .preloaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(image.name.clone(), identity)
            != Some(identity);
        if first {
            let (server, index) = (self.server.clone(), index.clone());
            std::thread::spawn(move || server.preload(&index));
        }
    }

    /// Hashes, in the background, every file of the images directory that
    /// has a boot image, so that opens by VMs find its identity known; with
    /// `preload`, then loads each boot image into the cache.
    pub fn verify_all(self: &Arc<Self>, preload: bool) -> yolo_store_core::Result<usize> {
        let names = self.server.store().names()?;
        let count = names.len();
        let serve = self.clone();
        std::thread::spawn(move || {
            for name in names {
                let verified = serve.server.verify_identity(&name).and_then(|()| {
                    if preload {
                        serve.preload_once(&serve.server.open(&name)?);
                    }
                    Ok(())
                });
                if let Err(e) = verified {
                    eprintln!("yolo-store: {name}: {e}");
                }
            }
            serve.verified_at_start.store(true, Ordering::Relaxed);
        });
        Ok(count)
    }
}

/// What `.yolo-status` holds: the server's counters, and whether the
/// files' identities checked at mount time are all known yet.
#[derive(Serialize)]
struct Status {
    #[serde(flatten)]
    serve: ServeStats,
    startup_verification_done: bool,
}

impl Backend for Serve {
    type Handle = OpenImage;

    fn open(&self, name: &str) -> yolo_store_core::Result<OpenImage> {
        let image = self.server.open(name)?;
        if self.preload_on_open {
            self.preload_once(&image);
        }
        Ok(image)
    }

    fn read(&self, image: &OpenImage, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        self.server.read(image, offset, size as usize)
    }

    /// The library decides (`ImageServer::page_cache`); this translates.
    fn open_flags(&self, image: &OpenImage) -> FopenFlags {
        match self.server.page_cache(image) {
            PageCache::Direct => FopenFlags::FOPEN_DIRECT_IO,
            PageCache::Buffered { keep: true } => FopenFlags::FOPEN_KEEP_CACHE,
            PageCache::Buffered { keep: false } => FopenFlags::empty(),
        }
    }

    fn status(&self) -> Vec<u8> {
        let status = Status {
            serve: self.server.stats(),
            startup_verification_done: self.verified_at_start.load(Ordering::Relaxed),
        };
        serde_json::to_vec_pretty(&status).unwrap_or_default()
    }
}
