//! Building boot images from a VMI file and the blocks a boot read, in the
//! order it read them. Used by `capture` (from a trace) and `record` (from a
//! pass-through mount).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::format::{write_atomically, BootImageWriter, FileHeader};
use crate::id::FileIdentity;
use crate::trace::{blocks_in_access_order, Read};
use crate::{Error, Result};

/// A file to put in a boot image, and where its bytes are read from.
pub struct CaptureSource {
    pub header: FileHeader,
    pub path: PathBuf,
}

impl CaptureSource {
    /// Describes `path` as file `name` of a boot image holding the blocks
    /// `reads` touched, in first-access order.
    pub fn from_reads(path: &Path, name: &str, reads: &[Read], block_size: u32) -> Result<Self> {
        let file_size = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        let header = FileHeader {
            name: name.to_string(),
            file_size,
            identity: FileIdentity::of_file(path)?,
            blocks: blocks_in_access_order(reads, file_size, block_size)?,
        };
        header.validate(block_size)?;
        Ok(CaptureSource {
            header,
            path: path.to_path_buf(),
        })
    }
}

/// Writes a `.yolo` holding `sources`, reading each block from its file.
/// The file must not change while this runs: its identity was taken when
/// the source was described, and is checked again at the end.
pub fn write_boot_image(out: &Path, block_size: u32, sources: &[CaptureSource]) -> Result<()> {
    write_atomically(out, |w| {
        let mut writer = BootImageWriter::new(w, block_size, sources.len() as u32)?;
        let mut buf = vec![0u8; block_size as usize];
        for source in sources {
            let file = File::open(&source.path).map_err(|e| Error::io(&source.path, e))?;
            writer.begin_file(&source.header)?;
            for &id in &source.header.blocks {
                let len = source.header.block_len(block_size, id);
                file.read_exact_at(&mut buf[..len], id * u64::from(block_size))
                    .map_err(|e| Error::io(&source.path, e))?;
                writer.write_data(&buf[..len])?;
            }
            if FileIdentity::of_file(&source.path)? != source.header.identity {
                return Err(Error::Invalid(format!(
                    "{} changed while its boot image was being written",
                    source.path.display()
                )));
            }
        }
        writer.finish()?;
        Ok(())
    })
}
