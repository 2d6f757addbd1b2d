//! The FUSE adapter: exposes the regular files and directories of an images
//! directory, read-only, and hands every open and read of a file to a
//! [`Backend`] (serving from the store, or recording). It translates FUSE
//! calls into library calls and errors into errnos, nothing more.

mod attr;
mod inodes;
mod passthrough;
mod record;
mod serve;
mod session;
mod takeover;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fuser::{
    BackingId, Errno, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

pub use inodes::STATUS_FILE;
pub use record::Record;
pub use serve::Serve;
pub use session::{check_mount_paths, run_mount, MountOptions};
pub use takeover::{serve_handed_over, supervise, ServerProcess};

use attr::{attr_of, status_attr};
use inodes::{Inodes, STATUS_INO};
use passthrough::{Granted, IoModes, Opened, Wanted};
use yolo_store_core::{list_dir_in, metadata_in, EntryKind, FileVersion, PassthroughOutcome};

/// How long the kernel may cache names and attributes: VMIs do not change
/// under a running VM, and a second is short enough for an operator.
const TTL: Duration = Duration::from_secs(1);

/// The extended attribute that names the file a mount serves under a path:
/// its [`FileVersion`] in the images directory (`DEV INO SIZE MTIME_NS
/// CTIME_NS`). `handoff` checks with it that the plain file it switches a
/// VM to is the very file the VM was reading through the mount.
pub const SOURCE_XATTR: &str = "user.yolo-store.source";

/// What a mount does with files: serve them, or record their reads.
pub trait Backend: Send + Sync + 'static {
    type Handle: Send + Sync + 'static;
    fn open(&self, name: &str) -> yolo_store_core::Result<Self::Handle>;
    fn read(&self, handle: &Self::Handle, offset: u64, size: u32) -> io::Result<Vec<u8>>;
    /// Kernel page-cache behaviour for a freshly opened file.
    fn open_as(&self, handle: &Self::Handle) -> OpenAs;
    /// The body of the virtual `.yolo-status` file (JSON).
    fn status(&self) -> Vec<u8>;
    /// Whether to ask the kernel for FUSE passthrough at init.
    fn wants_passthrough(&self) -> bool {
        false
    }
    /// The file the kernel reads for a passthrough open of `handle`.
    fn backing_file<'a>(&self, _handle: &'a Self::Handle) -> Option<&'a File> {
        None
    }
    /// What became of an open that could have been passed through.
    fn passthrough_outcome(&self, _handle: &Self::Handle, _outcome: PassthroughOutcome) {}
}

/// How a backend wants an open answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenAs {
    /// Reads reach the daemon, with these flags.
    Flags(FopenFlags),
    /// The kernel may read the file itself; where it cannot, `fallback`.
    Passthrough { fallback: FopenFlags },
}

/// FUSE passthrough for this mount, as settled at init.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Passthrough {
    /// Not asked for (the record backend, a mount without `--passthrough`).
    Off,
    /// Granted: opens may be passed through.
    Granted,
    /// Asked for, and the kernel did not offer it.
    NotOffered,
}

enum Handle<H> {
    /// How it was opened, for the kernel's rules at release.
    File(Arc<H>, Opened),
    Status(Arc<Vec<u8>>),
}

// By hand: a derive would require `H: Clone`, but only the Arcs are cloned.
impl<H> Clone for Handle<H> {
    fn clone(&self) -> Self {
        match self {
            Handle::File(h, opened) => Handle::File(h.clone(), *opened),
            Handle::Status(s) => Handle::Status(s.clone()),
        }
    }
}

pub struct ImagesFs<B: Backend> {
    backend: Arc<B>,
    root: PathBuf,
    inodes: Inodes,
    handles: RwLock<HashMap<u64, Handle<B::Handle>>>,
    next_fh: AtomicU64,
    /// Which server of the mount this is (0 for the first): the high half
    /// of every file handle it gives out, so a handle from an earlier
    /// server is never mistaken for one of ours.
    generation: u64,
    /// Set under a supervisor: who serves, for the status file.
    process: Option<ServerProcess>,
    max_readahead: u32,
    passthrough: Passthrough,
    io_modes: IoModes<BackingId>,
}

impl<B: Backend> ImagesFs<B> {
    pub fn new(backend: Arc<B>, root: PathBuf, max_readahead: u32) -> Self {
        Self::resumed(backend, root, max_readahead, Inodes::default(), 0, None)
    }

    /// A server taking over a mount: the inode table its predecessors
    /// logged, and its place in the line of servers.
    fn resumed(
        backend: Arc<B>,
        root: PathBuf,
        max_readahead: u32,
        inodes: Inodes,
        generation: u32,
        process: Option<ServerProcess>,
    ) -> Self {
        let generation = u64::from(generation);
        ImagesFs {
            backend,
            root,
            inodes,
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new((generation << 32) | 1),
            generation,
            process,
            max_readahead,
            passthrough: Passthrough::Off,
            io_modes: IoModes::default(),
        }
    }

    /// Answers an open of `ino` as the backend wants it and the kernel's
    /// passthrough rules allow (`passthrough.rs`).
    fn reply_open(&self, ino: u64, rel: &str, handle: B::Handle, reply: ReplyOpen) {
        let (wanted, flags) = match self.backend.open_as(&handle) {
            OpenAs::Passthrough { fallback } => (Wanted::Passthrough, fallback),
            OpenAs::Flags(f) if f.contains(FopenFlags::FOPEN_DIRECT_IO) => (Wanted::Direct, f),
            OpenAs::Flags(f) => (Wanted::Buffered, f),
        };
        let granted = match (self.passthrough, self.backend.backing_file(&handle)) {
            (Passthrough::Granted, Some(file)) => {
                let id = match file.metadata() {
                    Ok(meta) => (meta.dev(), meta.ino()),
                    Err(e) => return reply.error(Errno::from(e)),
                };
                self.io_modes
                    .open(ino, id, wanted, || reply.open_backing(file))
            }
            // No open of this mount is passed through: nothing to track.
            (Passthrough::NotOffered, _) if wanted == Wanted::Passthrough => {
                let why = "the kernel did not offer FUSE_PASSTHROUGH at init".to_string();
                self.backend
                    .passthrough_outcome(&handle, PassthroughOutcome::Refused(why));
                Granted::Untracked
            }
            _ => Granted::Untracked,
        };
        let opened = granted.opened();
        match granted {
            Granted::Passthrough { backing, held } => {
                let outcome = if held {
                    PassthroughOutcome::Held
                } else {
                    PassthroughOutcome::Opened
                };
                self.backend.passthrough_outcome(&handle, outcome);
                let fh = self.add_handle(Handle::File(Arc::new(handle), opened));
                // Passthrough takes no page-cache flags (the kernel refuses
                // KEEP_CACHE with it).
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing);
            }
            Granted::Buffered { refused } => {
                if let Some(why) = refused {
                    self.backend
                        .passthrough_outcome(&handle, PassthroughOutcome::Refused(why));
                }
                let fh = self.add_handle(Handle::File(Arc::new(handle), opened));
                reply.opened(FileHandle(fh), flags);
            }
            Granted::Untracked => {
                let fh = self.add_handle(Handle::File(Arc::new(handle), opened));
                reply.opened(FileHandle(fh), flags);
            }
            Granted::Busy => {
                eprintln!(
                    "yolo-store: open {rel}: the file was replaced while the old one is still \
                     open by passthrough; the kernel allows no other open until it is closed"
                );
                reply.error(Errno::EBUSY);
            }
        }
    }

    fn add_handle(&self, handle: Handle<B::Handle>) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, handle);
        fh
    }

    /// Opens inode `ino`: on the kernel's open, or again for a handle an
    /// earlier server of this mount gave out.
    fn open_handle(&self, ino: u64) -> Result<(Handle<B::Handle>, FopenFlags), Errno> {
        if ino == STATUS_INO {
            // A snapshot per open, read with direct I/O so its size (0 in
            // getattr) does not matter.
            let mut body = self.backend.status();
            if let Some(process) = &self.process {
                body = process.add_to_status(body);
            }
            return Ok((Handle::Status(Arc::new(body)), FopenFlags::FOPEN_DIRECT_IO));
        }
        let rel = self.inodes.path(ino).ok_or(Errno::ENOENT)?;
        match self.backend.open(&rel) {
            Ok(handle) => {
                // Only for a handle of an earlier server, whose kernel open
                // stays as it was: untracked here, never passed through.
                let flags = match self.backend.open_as(&handle) {
                    OpenAs::Flags(f) | OpenAs::Passthrough { fallback: f } => f,
                };
                Ok((Handle::File(Arc::new(handle), Opened::Untracked), flags))
            }
            Err(e) => {
                eprintln!("yolo-store: open {rel}: {e}");
                Err(errno_of(&e))
            }
        }
    }

    /// The handle `fh` names. One that an earlier server gave out (the
    /// kernel keeps handles across a takeover) is opened again from its
    /// inode, once, and kept under the same number until its release.
    fn handle(&self, ino: u64, fh: u64) -> Result<Handle<B::Handle>, Errno> {
        if let Some(handle) = self
            .handles
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
        {
            return Ok(handle.clone());
        }
        if fh >> 32 >= self.generation {
            return Err(Errno::EBADF);
        }
        let (handle, _) = self.open_handle(ino)?;
        let mut handles = self.handles.write().unwrap_or_else(|p| p.into_inner());
        // Two reads of one old handle can race here: the first one kept wins.
        Ok(handles.entry(fh).or_insert(handle).clone())
    }

    /// The attributes of `rel` (relative path), if it is something we serve.
    /// No symlink is followed, on the way or at the end.
    fn stat(&self, ino: u64, rel: &str) -> Result<fuser::FileAttr, Errno> {
        let meta = metadata_in(&self.root, rel).map_err(Errno::from)?;
        attr_of(ino, &meta).ok_or(Errno::ENOENT)
    }
}

impl<B: Backend> fuser::Filesystem for ImagesFs<B> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        self.passthrough =
            configure_init(config, self.max_readahead, self.backend.wants_passthrough());
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        if parent.0 == INodeNo::ROOT.0 && name == STATUS_FILE {
            return reply.entry(&TTL, &status_attr(), Generation(0));
        }
        let Some(rel) = self.inodes.child_path(parent.0, name) else {
            return reply.error(Errno::ENOENT);
        };
        let ino = match self.inodes.ino_of(&rel) {
            Ok(ino) => ino,
            Err(e) => {
                eprintln!("yolo-store: logging the inode of {rel}: {e}");
                return reply.error(Errno::EIO);
            }
        };
        match self.stat(ino, &rel) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino.0 == STATUS_INO {
            return reply.attr(&TTL, &status_attr());
        }
        let Some(rel) = self.inodes.path(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        match self.stat(ino.0, &rel) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        if ino.0 == STATUS_INO {
            return match self.open_handle(ino.0) {
                Ok((handle, flags)) => reply.opened(FileHandle(self.add_handle(handle)), flags),
                Err(e) => reply.error(e),
            };
        }
        let Some(rel) = self.inodes.path(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        match self.backend.open(&rel) {
            Ok(handle) => self.reply_open(ino.0, &rel, handle, reply),
            Err(e) => {
                eprintln!("yolo-store: open {rel}: {e}");
                reply.error(errno_of(&e));
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let handle = match self.handle(ino.0, fh.0) {
            Ok(handle) => handle,
            Err(e) => return reply.error(e),
        };
        match handle {
            Handle::File(h, _) => match self.backend.read(&h, offset, size) {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(Errno::from(e)),
            },
            Handle::Status(body) => {
                let start = (offset as usize).min(body.len());
                let end = (start + size as usize).min(body.len());
                reply.data(&body[start..end]);
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let handle = self
            .handles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        if let Some(Handle::File(handle, opened)) = handle {
            self.io_modes.release(ino.0, opened);
            if opened == Opened::Passthrough {
                self.backend
                    .passthrough_outcome(&handle, PassthroughOutcome::Closed);
            }
        }
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(rel) = self.inodes.path(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let parent = match self.inodes.parent_ino(ino.0) {
            Ok(parent) => parent,
            Err(e) => return reply.error(Errno::from(e)),
        };
        let mut entries: Vec<(u64, FileType, String)> = vec![
            (ino.0, FileType::Directory, ".".into()),
            (parent, FileType::Directory, "..".into()),
        ];
        if ino.0 == INodeNo::ROOT.0 {
            entries.push((STATUS_INO, FileType::RegularFile, STATUS_FILE.into()));
        }
        // Symlinks and special files are not served, and a directory
        // replaced by a symlink is not followed.
        let listing = match list_dir_in(&self.root, &rel) {
            Ok(listing) => listing,
            Err(e) => return reply.error(Errno::from(e)),
        };
        for (name, kind) in listing {
            if rel.is_empty() && name == STATUS_FILE {
                continue; // a file of that name is hidden by ours
            }
            let Some(child) = self.inodes.child_path(ino.0, &name) else {
                continue;
            };
            let kind = match kind {
                EntryKind::File => FileType::RegularFile,
                EntryKind::Dir => FileType::Directory,
            };
            let child_ino = match self.inodes.ino_of(&child) {
                Ok(child_ino) => child_ino,
                Err(e) => return reply.error(Errno::from(e)),
            };
            entries.push((child_ino, kind, name));
        }
        for (i, (child_ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child_ino), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    /// Only [`SOURCE_XATTR`], on regular files; every other name has no
    /// value (ENODATA), as on a filesystem without extended attributes.
    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if name != SOURCE_XATTR || ino.0 == STATUS_INO {
            return reply.error(Errno::ENODATA);
        }
        let Some(rel) = self.inodes.path(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let meta = match metadata_in(&self.root, &rel) {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => return reply.error(Errno::ENODATA),
            Err(e) => return reply.error(Errno::from(e)),
        };
        let value = FileVersion::of(&meta).to_string();
        match size {
            0 => reply.size(value.len() as u32),
            n if (n as usize) < value.len() => reply.error(Errno::ERANGE),
            _ => reply.data(value.as_bytes()),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match nix_statvfs(&self.root) {
            Ok(s) => reply.statfs(s.0, s.1, s.2, s.3, s.4, s.5, 255, s.5),
            Err(e) => reply.error(Errno::from(e)),
        }
    }
}

/// What every mount asks of the kernel at INIT (the supervisor's INIT too).
/// What the mount asks of the kernel at INIT (once per mount, by the
/// supervisor or by a server of its own): read-ahead, FUSE_NOTIFY_RESEND
/// for takeovers, and FUSE passthrough if `passthrough`. Returns whether
/// passthrough was granted.
fn configure_init(config: &mut KernelConfig, max_readahead: u32, passthrough: bool) -> Passthrough {
    // The kernel offers at most its bdi's read_ahead_kb here (128 KiB by
    // default); asking for more fails, so the session raises the bdi
    // limit after mounting (see `session::set_bdi_read_ahead`).
    if let Err(offered) = config.set_max_readahead(max_readahead) {
        let _ = config.set_max_readahead(offered);
    }
    // Tells the kernel that a server may ask it to queue again the requests
    // a dead server had read (FUSE_NOTIFY_RESEND); refused by kernels
    // before 6.10, where a takeover then fails those requests instead.
    let _ = config.add_capabilities(fuser::InitFlags::FUSE_HAS_RESEND);
    if !passthrough {
        return Passthrough::Off;
    }
    match config.add_capabilities(InitFlags::FUSE_PASSTHROUGH) {
        Ok(()) => {
            // 2, the kernel's most: backing files may sit on an overlayfs
            // (a container's); nothing stacks on us.
            if let Err(most) = config.set_max_stack_depth(2) {
                let _ = config.set_max_stack_depth(most);
            }
            Passthrough::Granted
        }
        Err(_) => Passthrough::NotOffered,
    }
}

/// statvfs of the images directory: (blocks, bfree, bavail, files, ffree, bsize).
fn nix_statvfs(path: &std::path::Path) -> io::Result<(u64, u64, u64, u64, u64, u32)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((
        s.f_blocks,
        s.f_bfree,
        s.f_bavail,
        s.f_files,
        s.f_ffree,
        s.f_bsize as u32,
    ))
}

/// The errno a VM sees, by the error's kind: the OS's own for I/O; a
/// name outside the rules, a symlink, or what is not a regular file is
/// refused (`EACCES`), as the images directory's rules say; the rest is
/// the store failing (`EIO`).
fn errno_of(e: &yolo_store_core::Error) -> Errno {
    use yolo_store_core::{Error, FileFault, FormatError};
    match e {
        Error::Io { source, .. } => source
            .raw_os_error()
            .map(Errno::from_i32)
            .unwrap_or(Errno::EIO),
        Error::Format(FormatError::Name { .. })
        | Error::File(
            FileFault::Symlink(_)
            | FileFault::NotRegular(_)
            | FileFault::ImagesDirectory
            | FileFault::NotADirectory(_),
        ) => Errno::EACCES,
        _ => Errno::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Errors made by the core's own calls on real files, so a kind that
    /// moves is caught here rather than by a VM.
    #[test]
    fn errno_follows_the_kind_of_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("vmi"), b"data").unwrap();
        std::os::unix::fs::symlink(root.join("vmi"), root.join("link")).unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        let errno = |rel: &str| errno_of(&yolo_store_core::open_file_in(root, rel).unwrap_err());
        assert_eq!(errno("link"), Errno::EACCES, "a symlink");
        assert_eq!(errno("sub"), Errno::EACCES, "not a regular file");
        assert_eq!(errno(""), Errno::EACCES, "the images directory itself");
        assert_eq!(errno("absent"), Errno::ENOENT, "the OS's own errno");
        let name = yolo_store_core::validate_name("../escape").unwrap_err();
        assert_eq!(errno_of(&name.into()), Errno::EACCES, "a name refused");
        let chunk = yolo_store_core::Error::MissingChunk {
            id: yolo_store_core::ChunkId::of(b"x"),
        };
        assert_eq!(errno_of(&chunk), Errno::EIO, "the store failing");
    }
}
