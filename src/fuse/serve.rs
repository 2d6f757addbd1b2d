//! The serving backend: files come from an [`ImageServer`], which takes
//! boot-image blocks from the store and everything else from the file. All
//! policy (preloads, page cache, passthrough) is the library's; this only
//! translates its decisions into FUSE open flags.

use std::fs::File;
use std::io;
use std::sync::Arc;

use fuser::FopenFlags;
use yolo_store_core::{ImageServer, OpenImage, PageCache, PassthroughOutcome};

use super::{Backend, OpenAs};

pub struct Serve {
    server: Arc<ImageServer>,
}

impl Serve {
    pub fn new(server: Arc<ImageServer>) -> Self {
        Serve { server }
    }
}

impl Backend for Serve {
    type Handle = OpenImage;

    fn open(&self, name: &str) -> yolo_store_core::Result<OpenImage> {
        self.server.open(name)
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
            PageCache::Passthrough { keep } => OpenAs::Passthrough {
                fallback: buffered(keep),
            },
        }
    }

    fn wants_passthrough(&self) -> bool {
        self.server.wants_passthrough()
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
