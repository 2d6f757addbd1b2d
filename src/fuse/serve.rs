//! The serving backend: files come from an [`ImageServer`], which takes
//! boot-image blocks from the store and everything else from the file.

use std::io;
use std::sync::Arc;

use fuser::FopenFlags;
use yolo_store_core::{ImageServer, OpenImage, PageCache};

use super::Backend;

pub struct Serve {
    server: Arc<ImageServer>,
    preload_on_open: bool,
}

impl Serve {
    pub fn new(server: Arc<ImageServer>, preload_on_open: bool) -> Self {
        Serve {
            server,
            preload_on_open,
        }
    }

    /// Checks every boot image against its file in the background, so
    /// that VMs find them trusted; with `preload`, then loads each into the
    /// cache.
    pub fn verify_all(&self, preload: bool) -> yolo_store_core::Result<usize> {
        self.server.verify_all_in_background(preload)
    }
}

impl Backend for Serve {
    type Handle = OpenImage;

    fn open(&self, name: &str) -> yolo_store_core::Result<OpenImage> {
        let image = self.server.open(name)?;
        if self.preload_on_open {
            self.server.preload_once(&image);
        }
        Ok(image)
    }

    fn read(&self, image: &OpenImage, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        self.server.read(image, offset, size as usize)
    }

    /// Page-cache policy is the library's ([`ImageServer::page_cache`]).
    fn open_flags(&self, image: &OpenImage) -> FopenFlags {
        match self.server.page_cache(image) {
            PageCache::Direct => FopenFlags::FOPEN_DIRECT_IO,
            PageCache::Buffered { keep: true } => FopenFlags::FOPEN_KEEP_CACHE,
            PageCache::Buffered { keep: false } => FopenFlags::empty(),
        }
    }

    fn status(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.server.stats()).unwrap_or_default()
    }
}
