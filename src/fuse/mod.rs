//! The FUSE adapter: exposes the regular files and directories of an images
//! directory, read-only, and hands every open and read of a file to a
//! [`Backend`] (serving from the store, or recording). It translates FUSE
//! calls into library calls and errors into errnos, nothing more.

mod attr;
mod inodes;
mod record;
mod serve;
mod session;
mod takeover;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fuser::{
    Errno, FileHandle, FileType, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, Request,
};

pub use inodes::STATUS_FILE;
pub use record::Record;
pub use serve::Serve;
pub use session::{check_mount_paths, run_mount, MountOptions};
pub use takeover::{serve_handed_over, supervise, ServerProcess};

use attr::{attr_of, status_attr};
use inodes::{Inodes, STATUS_INO};
use yolo_store_core::{list_dir_in, metadata_in, EntryKind};

/// How long the kernel may cache names and attributes: VMIs do not change
/// under a running VM, and a second is short enough for an operator.
const TTL: Duration = Duration::from_secs(1);

/// What a mount does with files: serve them, or record their reads.
pub trait Backend: Send + Sync + 'static {
    type Handle: Send + Sync + 'static;
    fn open(&self, name: &str) -> yolo_store_core::Result<Self::Handle>;
    fn read(&self, handle: &Self::Handle, offset: u64, size: u32) -> io::Result<Vec<u8>>;
    /// Kernel page-cache behaviour for a freshly opened file.
    fn open_flags(&self, handle: &Self::Handle) -> FopenFlags;
    /// The body of the virtual `.yolo-status` file (JSON).
    fn status(&self) -> Vec<u8>;
}

enum Handle<H> {
    File(Arc<H>),
    Status(Arc<Vec<u8>>),
}

// By hand: a derive would require `H: Clone`, but only the Arcs are cloned.
impl<H> Clone for Handle<H> {
    fn clone(&self) -> Self {
        match self {
            Handle::File(h) => Handle::File(h.clone()),
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
                let flags = self.backend.open_flags(&handle);
                Ok((Handle::File(Arc::new(handle)), flags))
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
        configure_init(config, self.max_readahead);
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
        match self.open_handle(ino.0) {
            Ok((handle, flags)) => reply.opened(FileHandle(self.add_handle(handle)), flags),
            Err(e) => reply.error(e),
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
            Handle::File(h) => match self.backend.read(&h, offset, size) {
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
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
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

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match nix_statvfs(&self.root) {
            Ok(s) => reply.statfs(s.0, s.1, s.2, s.3, s.4, s.5, 255, s.5),
            Err(e) => reply.error(Errno::from(e)),
        }
    }
}

/// What every mount asks of the kernel at INIT (the supervisor's INIT too).
fn configure_init(config: &mut KernelConfig, max_readahead: u32) {
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

fn errno_of(e: &yolo_store_core::Error) -> Errno {
    match e {
        yolo_store_core::Error::Io { source, .. } => source
            .raw_os_error()
            .map(Errno::from_i32)
            .unwrap_or(Errno::EIO),
        yolo_store_core::Error::Name { .. } | yolo_store_core::Error::Invalid(_) => Errno::EACCES,
        _ => Errno::EIO,
    }
}
