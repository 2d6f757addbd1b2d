//! Writing the files verbs produce (`.yolo` boot images, traces, sparse
//! extracts) without harming what the output path names:
//!
//! - `-` is standard output (refused on a terminal);
//! - a new or regular file is written to a temporary file beside it, synced,
//!   and renamed over it, so a failure leaves the old file as it was and no
//!   half-written output under the final name;
//! - anything else is refused before a byte is written: a directory, a
//!   device (`/dev/null`), a FIFO or socket (which would block or be
//!   replaced), and a symlink. A symlink is refused rather than written
//!   through, so a link planted where an output goes (`/tmp`) cannot
//!   redirect it, and a rename never replaces the link itself;
//! - the file is created with the mode the caller asks for: 0600 for what
//!   comes out of the store, the source's own permission bits for what is
//!   captured from a VMI, so a private VMI never yields a world-readable
//!   boot image of its blocks.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::error::OutputFault;
use crate::{Error, Result};

/// The output path that means standard output.
pub const STDOUT: &str = "-";

/// Mode of outputs that come out of the store: private to their owner.
pub const PRIVATE_MODE: u32 = 0o600;

/// Mode of an output made from `source`'s bytes: its read and write bits.
pub fn mode_of(source: &File) -> u32 {
    source
        .metadata()
        .map(|m| m.mode() & 0o666)
        .unwrap_or(PRIVATE_MODE)
}

pub fn is_stdout(path: &Path) -> bool {
    path == Path::new(STDOUT)
}

/// Refuses an output path that names something other than a regular file
/// (or nothing yet, or standard output).
pub fn check_output(path: &Path) -> Result<()> {
    if is_stdout(path) {
        return Ok(());
    }
    let refuse = |what: &'static str| {
        Err(OutputFault::NotAFile {
            path: path.to_path_buf(),
            what,
        }
        .into())
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
        Ok(m) if m.file_type().is_symlink() => {
            refuse("a symlink (outputs are not written through links: name its target)")
        }
        Ok(m) if m.is_dir() => refuse("a directory"),
        Ok(m) if !m.is_file() => refuse("a device, FIFO or socket"),
        Ok(_) => Ok(()),
    }
}

/// Writes a file through `write` (which may seek and write at offsets),
/// then renames it over `path`. Standard output is refused: use
/// [`write_stream`] for outputs that are written front to back.
pub fn write_file(path: &Path, mode: u32, write: impl FnOnce(&File) -> Result<()>) -> Result<()> {
    if is_stdout(path) {
        return Err(OutputFault::SparseToStdout.into());
    }
    check_output(path)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| OutputFault::NoFileName(path.to_path_buf()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let file = create_new(&tmp, mode)?;
    let result = (|| {
        write(&file)?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        // Checked again: the path may have changed while we wrote.
        check_output(path)?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes an output front to back: to standard output for `-`, otherwise
/// as [`write_file`] does.
pub fn write_stream(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    if is_stdout(path) {
        let stdout = io::stdout();
        if stdout.is_terminal() {
            return Err(OutputFault::StdoutIsTerminal.into());
        }
        let mut w = BufWriter::with_capacity(1 << 20, stdout.lock());
        write(&mut w)?;
        return w.flush().map_err(|e| Error::io("<standard output>", e));
    }
    write_file(path, mode, |file| {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        write(&mut w)?;
        w.flush().map_err(|e| Error::io(path, e))
    })
}

/// Creates `tmp` exclusively (never through a link someone left there);
/// a leftover of a killed run with our process id is removed first.
fn create_new(tmp: &Path, mode: u32) -> Result<File> {
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(tmp)
    };
    match open() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(tmp).map_err(|e| Error::io(tmp, e))?;
            open().map_err(|e| Error::io(tmp, e))
        }
        other => other.map_err(|e| Error::io(tmp, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn put(path: &Path, bytes: &[u8]) -> Result<()> {
        write_stream(path, PRIVATE_MODE, |w| {
            w.write_all(bytes).map_err(|e| Error::io(path, e))
        })
    }

    #[test]
    fn writes_new_and_regular_files_private() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        put(&out, b"one").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"one");
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        put(&out, b"two").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::write(&out, b"precious").unwrap();
        let failed = write_file(&out, PRIVATE_MODE, |_| {
            Err(Error::Panicked { what: "writer" })
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&out).unwrap(), b"precious");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn links_devices_and_directories_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"kept").unwrap();
        let link = dir.path().join("link");
        symlink(&target, &link).unwrap();
        let refused = |r: Result<()>, what: &str| matches!(r, Err(Error::Output(OutputFault::NotAFile { what: w, .. })) if w.starts_with(what));
        assert!(refused(put(&link, b"x"), "a symlink"));
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"kept");
        assert!(refused(put(dir.path(), b"x"), "a directory"));
        assert!(refused(put(Path::new("/dev/null"), b"x"), "a device"));
        assert!(matches!(
            write_file(Path::new(STDOUT), PRIVATE_MODE, |_| Ok(())),
            Err(Error::Output(OutputFault::SparseToStdout))
        ));
    }
}
