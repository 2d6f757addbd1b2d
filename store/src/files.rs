//! Reaching files on a host that may be hostile: the images directory is
//! walked one component at a time with `openat(O_NOFOLLOW)`, so a directory
//! replaced by a symlink is never followed, and every file is checked with
//! `fstat` on the descriptor that will be read (opened `O_NONBLOCK`, so a
//! FIFO cannot block the open).

use std::ffi::CString;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::FileFault;
use crate::{Error, Result};

/// The images directory of a mount, canonical, refused unless it is a
/// directory (a regular file would mount an empty filesystem).
pub fn images_dir(path: &Path) -> Result<PathBuf> {
    let images = path.canonicalize().map_err(|e| Error::io(path, e))?;
    let meta = std::fs::metadata(&images).map_err(|e| Error::io(&images, e))?;
    if !meta.is_dir() {
        return Err(FileFault::NotADirectory(path.to_path_buf()).into());
    }
    Ok(images)
}

/// Opens `path` for reading only if it is a regular file: a FIFO, device or
/// socket is refused at once instead of blocking or reading forever.
pub fn open_regular(path: &Path) -> Result<File> {
    // O_NONBLOCK changes nothing for reads of a regular file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    require_regular(file, path)
}

fn require_regular(file: File, path: &Path) -> Result<File> {
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(FileFault::NotRegular(path.to_path_buf()).into());
    }
    Ok(file)
}

/// The components of a relative path inside the images directory.
fn components(rel: &str) -> impl Iterator<Item = &str> {
    rel.split('/').filter(|c| !c.is_empty())
}

fn openat(dir: &OwnedFd, name: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
    if name == "." || name == ".." {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::ENOENT))?;
    // SAFETY: `dir` is an open descriptor and `c` a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_root(root: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::ENOENT))?;
    // SAFETY: `c` is a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as in `openat`.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens directory `rel` under `root` without following any symlink on
/// the way (ELOOP or ENOTDIR if one is there).
fn open_dir(root: &Path, rel: &str) -> io::Result<OwnedFd> {
    let mut dir = open_root(root)?;
    for name in components(rel) {
        dir = openat(&dir, name, libc::O_RDONLY | libc::O_DIRECTORY)?;
    }
    Ok(dir)
}

/// `rel` split into its parent directory, opened without following links,
/// and its last component.
fn open_parent<'a>(root: &Path, rel: &'a str) -> io::Result<(OwnedFd, Option<&'a str>)> {
    match rel.trim_end_matches('/').rsplit_once('/') {
        Some((parent, name)) => Ok((open_dir(root, parent)?, Some(name))),
        None if rel.is_empty() => Ok((open_root(root)?, None)),
        None => Ok((open_root(root)?, Some(rel))),
    }
}

/// The metadata of `rel` itself (a symlink is reported as a symlink, and a
/// symlink on the way is an error): `fstat` of an `O_PATH` descriptor.
pub fn metadata_in(root: &Path, rel: &str) -> io::Result<Metadata> {
    let fd = match open_parent(root, rel)? {
        (dir, Some(name)) => openat(&dir, name, libc::O_PATH)?,
        (dir, None) => dir,
    };
    File::from(fd).metadata()
}

/// What a directory entry is, as the mount shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
}

/// The regular files and directories in directory `rel` (names that are
/// not UTF-8, symlinks and special files are left out), sorted by name.
pub fn list_dir_in(root: &Path, rel: &str) -> io::Result<Vec<(String, EntryKind)>> {
    let dir = open_dir(root, rel)?;
    // Read the directory we hold open, not a path that could be swapped.
    let listing = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
    let mut entries: Vec<(String, EntryKind)> = listing
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            // The entry's own type (d_type or lstat): links are not followed.
            let kind = entry.file_type().ok()?;
            if kind.is_file() {
                Some((name, EntryKind::File))
            } else if kind.is_dir() {
                Some((name, EntryKind::Dir))
            } else {
                None
            }
        })
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

/// Opens regular file `rel` under `root` for reading, following no symlink
/// and never blocking on a FIFO.
pub fn open_file_in(root: &Path, rel: &str) -> Result<File> {
    let path = root.join(rel);
    let fd = match open_parent(root, rel).map_err(|e| Error::io(&path, e))? {
        (dir, Some(name)) => {
            openat(&dir, name, libc::O_RDONLY | libc::O_NONBLOCK).map_err(|e| {
                match e.raw_os_error() {
                    Some(libc::ELOOP) => FileFault::Symlink(rel.to_string()).into(),
                    _ => Error::io(&path, e),
                }
            })?
        }
        (_, None) => {
            return Err(FileFault::ImagesDirectory.into());
        }
    };
    require_regular(File::from(fd), &path)
}

/// Opens VMI file `name` of the images directory `images` (canonical):
/// a valid VMI name, resolving to nothing outside the directory (`..`,
/// absolute paths, symlinks anywhere on the path) and to nothing but a
/// regular file, without blocking on a FIFO. Serving, recording and
/// learning open files only through here.
pub(crate) fn open_image_file(images: &Path, name: &str) -> Result<(File, PathBuf)> {
    crate::name::validate_name(name)?;
    let file = open_file_in(images, name)?;
    Ok((file, images.join(name)))
}

/// A path that reads the very file `file` is open on (Linux's
/// `/proc/self/fd`), for APIs that take a path (BLAKE3's mmap hashing).
pub fn fd_path(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("d/f"), b"data").unwrap();
        std::fs::write(root.join("top"), b"top").unwrap();
        dir
    }

    #[test]
    fn a_directory_replaced_by_a_symlink_is_never_followed() {
        let dir = tree();
        let root = dir.path();
        assert_eq!(list_dir_in(root, "d").unwrap().len(), 1);
        std::fs::remove_dir_all(root.join("d")).unwrap();
        symlink("/etc", root.join("d")).unwrap();
        assert!(list_dir_in(root, "d").is_err());
        assert!(metadata_in(root, "d/passwd").is_err());
        assert!(open_file_in(root, "d/passwd").is_err());
        // The link itself is seen as a link, never as /etc.
        assert!(metadata_in(root, "d").unwrap().file_type().is_symlink());
        let root_listing = list_dir_in(root, "").unwrap();
        assert_eq!(root_listing, vec![("top".to_string(), EntryKind::File)]);
    }

    #[test]
    fn fifos_and_devices_are_refused_without_blocking() {
        let dir = tree();
        let fifo = dir.path().join("fifo");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(open_file_in(dir.path(), "fifo").is_err());
        assert!(open_regular(&fifo).is_err());
        assert!(open_regular(Path::new("/dev/zero")).is_err());
        assert!(open_regular(&dir.path().join("top")).is_ok());
        assert!(list_dir_in(dir.path(), "")
            .unwrap()
            .iter()
            .all(|(n, _)| n != "fifo"));
    }

    #[test]
    fn images_must_be_a_directory() {
        let dir = tree();
        assert!(images_dir(dir.path()).is_ok());
        assert!(images_dir(&dir.path().join("top")).is_err());
    }
}
