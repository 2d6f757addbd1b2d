//! The serving backend: files come from an [`ImageServer`], which takes
//! boot-image blocks from the store and everything else from the file.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use fuser::FopenFlags;
use yolo_store_core::{FileVersion, ImageServer, OpenImage};

use super::Backend;

pub struct Serve {
    server: Arc<ImageServer>,
    /// Per file name, the version last opened and whether it had a boot
    /// image: the kernel keeps its page cache across opens only while both
    /// are unchanged.
    opened: Mutex<HashMap<String, (FileVersion, bool)>>,
    preload_on_open: bool,
}

impl Serve {
    pub fn new(server: Arc<ImageServer>, preload_on_open: bool) -> Self {
        Serve {
            server,
            opened: Mutex::new(HashMap::new()),
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

    /// Buffered reads through the page cache, kept across opens while the
    /// file is unchanged: a second VM on the same VMI reads its boot blocks
    /// from the kernel without a round trip to us. A file that changed, or
    /// gained or lost its boot image, gets its cached pages dropped (no
    /// FOPEN_KEEP_CACHE on that open).
    fn open_flags(&self, image: &OpenImage) -> FopenFlags {
        let state = (image.version(), image.has_boot_image());
        let previous = self
            .opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(image.name.clone(), state);
        if previous == Some(state) {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        }
    }

    fn status(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.server.stats()).unwrap_or_default()
    }
}
