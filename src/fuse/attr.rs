//! File attributes as the mount shows them: those of the file in the images
//! directory, with every write bit cleared.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use super::inodes::STATUS_INO;

/// Attributes of a regular file or directory; None for anything else
/// (symlinks, devices, sockets are not served).
pub fn attr_of(ino: u64, meta: &std::fs::Metadata) -> Option<FileAttr> {
    let kind = if meta.is_file() {
        FileType::RegularFile
    } else if meta.is_dir() {
        FileType::Directory
    } else {
        return None;
    };
    let time = |secs: i64, nsecs: i64| {
        UNIX_EPOCH
            .checked_add(Duration::new(
                secs.max(0) as u64,
                nsecs.clamp(0, 999_999_999) as u32,
            ))
            .unwrap_or(UNIX_EPOCH)
    };
    Some(FileAttr {
        ino: INodeNo(ino),
        size: meta.size(),
        blocks: meta.blocks(),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind,
        perm: (meta.mode() & 0o7555) as u16,
        nlink: meta.nlink() as u32,
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: 0,
        blksize: 4096,
        flags: 0,
    })
}

/// The virtual status file: size 0, read with direct I/O.
pub fn status_attr() -> FileAttr {
    let now = SystemTime::now();
    FileAttr {
        ino: INodeNo(STATUS_INO),
        size: 0,
        blocks: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0o444,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}
