//! Building boot images from a VMI file and the blocks a boot read, in the
//! order it read them. Used by `capture` (from a trace) and `record` (from a
//! pass-through mount).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::FileFault;
use crate::files::fd_path;
use crate::format::{validate_block_size, BootImageWriter, FileHeader};
use crate::id::FileIdentity;
use crate::output::{mode_of, write_stream};
use crate::trace::{blocks_in_access_order, Read};
use crate::{Error, Result};

/// A file to put in a boot image, and the open file its bytes are read
/// from.
pub struct CaptureSource {
    pub header: FileHeader,
    pub path: PathBuf,
    file: File,
}

impl CaptureSource {
    /// Describes `file` (opened from `path`, a regular file: see
    /// `open_regular`) as file `name` of a boot image holding the blocks
    /// `reads` touched, in first-access order. The reads are checked before
    /// the file is hashed: a bad trace costs nothing on a large VMI.
    pub fn from_reads(
        file: File,
        path: &Path,
        name: &str,
        reads: &[Read],
        block_size: u32,
    ) -> Result<Self> {
        validate_block_size(block_size)?;
        let file_size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let blocks = blocks_in_access_order(reads, file_size, block_size)?;
        let header = FileHeader {
            name: name.to_string(),
            file_size,
            identity: identity_of(&file, path)?,
            blocks,
        };
        header.validate(block_size)?;
        Ok(CaptureSource {
            header,
            path: path.to_path_buf(),
            file,
        })
    }
}

/// The identity of an open file: hashed through its descriptor, so it is
/// the file that was opened (and checked) that gets hashed.
pub(crate) fn identity_of(file: &File, path: &Path) -> Result<FileIdentity> {
    FileIdentity::of_file(&fd_path(file)).map_err(|e| match Error::from(e) {
        Error::Io { source, .. } => Error::io(path, source),
        other => other,
    })
}

/// Writes a `.yolo` holding `sources` to `out` (`-` for standard output),
/// reading each block from its file, with the first source's permission
/// bits. The files must not change while this runs: their identity was
/// taken when the sources were described, and is checked again at the end.
pub fn write_boot_image(out: &Path, block_size: u32, sources: &[CaptureSource]) -> Result<()> {
    let mode = sources
        .first()
        .map(|s| mode_of(&s.file))
        .unwrap_or(crate::output::PRIVATE_MODE);
    write_stream(out, mode, |w| {
        let mut writer = BootImageWriter::new(w, block_size, sources.len() as u32)?;
        let mut buf = vec![0u8; block_size as usize];
        for source in sources {
            writer.begin_file(&source.header)?;
            for &id in &source.header.blocks {
                let len = source.header.block_len(block_size, id);
                source
                    .file
                    .read_exact_at(&mut buf[..len], id * u64::from(block_size))
                    .map_err(|e| Error::io(&source.path, e))?;
                writer.write_data(&buf[..len])?;
            }
            if identity_of(&source.file, &source.path)? != source.header.identity {
                return Err(FileFault::Changed(source.path.clone()).into());
            }
        }
        writer.finish()?;
        Ok(())
    })
}
