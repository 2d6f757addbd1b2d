//! The recording backend: a pass-through of the images directory whose
//! [`Recorder`] logs every read, for `yolo-store record`.

use std::io;
use std::sync::Arc;

use fuser::FopenFlags;
use serde::Serialize;
use yolo_store_core::{RecordedFile, Recorder};

use super::{Backend, OpenAs};

pub struct Record(pub Arc<Recorder>);

#[derive(Serialize)]
struct FileSummary {
    name: String,
    reads: u64,
    bytes: u64,
}

impl Backend for Record {
    type Handle = RecordedFile;

    fn open(&self, name: &str) -> yolo_store_core::Result<RecordedFile> {
        self.0.open(name)
    }

    fn read(&self, file: &RecordedFile, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        self.0.read(file, offset, size as usize)
    }

    /// Direct I/O: every read the VM makes reaches us as the VM made it.
    /// Through the page cache, read-ahead would record blocks the boot never
    /// asked for, and cached pages would hide reads from a second open.
    fn open_as(&self, _file: &RecordedFile) -> OpenAs {
        OpenAs::Flags(FopenFlags::FOPEN_DIRECT_IO)
    }

    fn status(&self) -> Vec<u8> {
        let files: Vec<FileSummary> = self
            .0
            .summary()
            .into_iter()
            .map(|(name, reads, bytes)| FileSummary { name, reads, bytes })
            .collect();
        serde_json::to_vec_pretty(&files).unwrap_or_default()
    }
}
