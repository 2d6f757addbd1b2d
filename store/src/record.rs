//! Recording boot images from real reads: a pass-through of the images
//! directory that logs every read of every file in arrival order. When
//! recording ends, one `.yolo` per file that was read is written, its blocks
//! in first-access order and its identity taken from the file.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::capture::{write_boot_image, CaptureSource};
use crate::files::images_dir;
use crate::files::open_image_file;
use crate::output::{mode_of, write_stream};
use crate::trace::{write_trace, Read};
use crate::{Error, Result};

pub struct Recorder {
    images: PathBuf,
    /// Reads per file name, in arrival order.
    reads: Mutex<HashMap<String, Vec<Read>>>,
}

pub struct RecordedFile {
    name: String,
    file: File,
}

impl Recorder {
    pub fn new(images: &Path) -> Result<Self> {
        let images = images_dir(images)?;
        Ok(Recorder {
            images,
            reads: Mutex::new(HashMap::new()),
        })
    }

    pub fn images_dir(&self) -> &Path {
        &self.images
    }

    pub fn open(&self, name: &str) -> Result<RecordedFile> {
        let (file, _) = open_image_file(&self.images, name)?;
        Ok(RecordedFile {
            name: name.to_string(),
            file,
        })
    }

    /// Reads from the file and logs the bytes actually returned.
    pub fn read(&self, f: &RecordedFile, offset: u64, size: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; size];
        let mut got = 0;
        while got < size {
            match f.file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(got);
        if got > 0 {
            let mut reads = self.reads.lock().unwrap_or_else(|p| p.into_inner());
            reads.entry(f.name.clone()).or_default().push(Read {
                offset,
                length: got as u64,
            });
        }
        Ok(buf)
    }

    /// Reads logged so far: (file name, number of reads, bytes read).
    pub fn summary(&self) -> Vec<(String, u64, u64)> {
        let reads = self.reads.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = reads
            .iter()
            .map(|(name, r)| {
                (
                    name.clone(),
                    r.len() as u64,
                    r.iter().map(|r| r.length).sum(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// Writes `OUTDIR/NAME.yolo` for every file that was read, and beside it
    /// `OUTDIR/NAME.trace`: the reads themselves, in arrival order, so the
    /// boot's I/O can be replayed and `capture` can rebuild the boot image.
    pub fn write_boot_images(&self, outdir: &Path, block_size: u32) -> Result<Vec<PathBuf>> {
        let reads = std::mem::take(&mut *self.reads.lock().unwrap_or_else(|p| p.into_inner()));
        let mut written = Vec::new();
        let mut names: Vec<_> = reads.keys().cloned().collect();
        names.sort();
        for name in names {
            let (file, path) = open_image_file(&self.images, &name)?;
            let mode = mode_of(&file);
            let source = CaptureSource::from_reads(file, &path, &name, &reads[&name], block_size)?;
            let out = outdir.join(format!("{name}.yolo"));
            if let Some(parent) = out.parent() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            write_boot_image(&out, block_size, std::slice::from_ref(&source))?;
            let trace = outdir.join(format!("{name}.trace"));
            write_stream(&trace, mode, |w| {
                write_trace(
                    w,
                    &format!("reads of {name}, in arrival order"),
                    &reads[&name],
                )
                .map_err(|e| Error::io(&trace, e))
            })?;
            written.push(out);
        }
        Ok(written)
    }
}
