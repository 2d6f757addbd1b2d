//! The serving backend: files come from an [`ImageServer`], which takes
//! boot-image blocks from the store and everything else from the file.

use std::fs::File;
use std::io;
use std::sync::Arc;

use fuser::FopenFlags;
use yolo_store_core::{ImageServer, OpenImage, PageCache, PassthroughOutcome};

use super::{Backend, OpenAs};

pub struct Serve {
    server: Arc<ImageServer>,
    preload_on_open: bool,
    passthrough: bool,
}

impl Serve {
    /// `passthrough`: hand files the server adds nothing to to the kernel.
    pub fn new(server: Arc<ImageServer>, preload_on_open: bool, passthrough: bool) -> Self {
        Serve {
            server,
            preload_on_open,
            passthrough,
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
    fn open_as(&self, image: &OpenImage) -> OpenAs {
        let buffered = |keep| {
            if keep {
                FopenFlags::FOPEN_KEEP_CACHE
            } else {
                FopenFlags::empty()
            }
        };
        match self.server.page_cache(image) {
            PageCache::Direct => OpenAs::Flags(FopenFlags::FOPEN_DIRECT_IO),
            PageCache::Buffered { keep } => OpenAs::Flags(buffered(keep)),
            PageCache::Passthrough { keep } if self.passthrough => OpenAs::Passthrough {
                fallback: buffered(keep),
            },
            PageCache::Passthrough { keep } => OpenAs::Flags(buffered(keep)),
        }
    }

    fn wants_passthrough(&self) -> bool {
        self.passthrough
    }

    fn backing_file<'a>(&self, image: &'a OpenImage) -> Option<&'a File> {
        Some(image.file())
    }

    fn passthrough_outcome(&self, image: &OpenImage, outcome: PassthroughOutcome) {
        self.server.passthrough_outcome(image, outcome);
    }

    fn status(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.server.stats()).unwrap_or_default()
    }
}
