//! One error type for the library; each variant says what went wrong in terms
//! a user can act on. The CLI adds context (which file, which verb) on top.
//!
//! Each area has its own kinds, which convert into [`Error`]: the format
//! crate's [`FormatError`], files on the host ([`FileFault`]), outputs
//! ([`OutputFault`]), a verb's arguments ([`UsageFault`]) and the remote
//! ([`RemoteFault`]). Callers match a kind, never a message.

use std::path::PathBuf;

use yolo_store_format::FormatError;

use crate::chunking::{Chunking, FASTCDC_VERSION};
use crate::id::ChunkId;
use crate::remote::RemoteFault;
use crate::store::STORE_FORMAT;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Untrusted bytes (a `.yolo`, a trace, a name, a pack, a chunk, a
    /// remote object) that break their format. Never holds an
    /// [`FormatError::Io`]: that becomes [`Error::Io`].
    #[error(transparent)]
    Format(FormatError),

    /// A file on the host that is not one we read (see [`FileFault`]).
    #[error(transparent)]
    File(FileFault),

    /// An output path refused before a byte is written.
    #[error(transparent)]
    Output(OutputFault),

    /// A verb's arguments that cannot work together.
    #[error(transparent)]
    Usage(UsageFault),

    #[error("no boot image named {0:?} in the store")]
    UnknownVmi(String),

    #[error("chunk {id} is missing from the store")]
    MissingChunk { id: ChunkId },

    #[error("chunk {id} is corrupt: {why}")]
    CorruptChunk { id: ChunkId, why: String },

    #[error("store metadata is corrupt: {0}")]
    CorruptStore(String),

    #[error("store at {path} is not usable: {fault}")]
    StoreConfig { path: PathBuf, fault: StoreFault },

    #[error("store at {0} was never finished being created (no config record); `yolo-store init` or an import finishes it")]
    UnfinishedStore(PathBuf),

    /// The config record could not be written as JSON.
    #[error("{0}")]
    ConfigEncoding(#[source] serde_json::Error),

    /// Chunk numbers are 32 bits, and never reused.
    #[error("the store has given out 2^32 chunk numbers; import into a new store")]
    NumbersExhausted,

    /// gc will not run on refcounts it cannot trust.
    #[error("gc refused: {0}; run `yolo-store verify --repair --images DIR` first")]
    GcRefused(GcRefusal),

    #[error("store at {0} is being changed by another yolo-store process")]
    Busy(PathBuf),

    /// A read-only open never found the store still: a writer changed its
    /// MANIFEST during every attempt, for as long as the open may wait.
    #[error("store at {0} kept changing while it was opened (a writer flushed or compacted throughout); try again")]
    KeptChanging(PathBuf),

    /// From RocksDB (converted in store/); its `kind()` says which.
    #[error("RocksDB: {0}")]
    Db(#[source] rocksdb::Error),

    /// `remote` is the remote's URL, credentials never included. Boxed:
    /// the object store's errors are large, and every `Result` carries one.
    #[error("remote {remote}: {fault}")]
    Remote {
        remote: String,
        #[source]
        fault: Box<RemoteFault>,
    },

    /// The text of a [`crate::FileVersion`] (`DEV INO SIZE MTIME_NS
    /// CTIME_NS`) that does not parse.
    #[error("not a file version: {0:?}")]
    FileVersion(String),

    /// A worker thread of an operation panicked: `what` names it.
    #[error("the {what} panicked")]
    Panicked { what: &'static str },

    /// The OS would not start a thread the daemon needs.
    #[error("could not start the {what} thread: {source}")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A file on the host refused: the images directory is walked without
/// following a symlink, and only regular files are read. The FUSE adapter
/// answers these with `EACCES`.
#[derive(Debug, thiserror::Error)]
pub enum FileFault {
    /// `--images` names something other than a directory.
    #[error("{} is not a directory (--images names the directory holding the VMI files)", .0.display())]
    NotADirectory(PathBuf),
    /// A FIFO, device, socket or directory where a file is read.
    #[error("{} is not a regular file", .0.display())]
    NotRegular(PathBuf),
    /// A file of the images directory that is a symlink (by its relative name).
    #[error("{0} is a symlink; only plain files are served")]
    Symlink(String),
    /// An empty relative name: the images directory itself.
    #[error("the images directory is not a file")]
    ImagesDirectory,
    /// A VMI whose identity changed while its boot image was written.
    #[error("{} changed while its boot image was being written", .0.display())]
    Changed(PathBuf),
}

/// Why a directory is not a store this build can use (nothing in it was
/// changed).
#[derive(Debug, thiserror::Error)]
pub enum StoreFault {
    #[error("it is not a directory")]
    NotADirectory,
    /// A directory that holds `first` (and maybe more) but no store.
    #[error("the directory holds other files ({first:?}, ...) and no store; give an empty or new directory")]
    OtherFiles { first: std::ffi::OsString },
    #[error("no store here (import something first, or pass --store)")]
    NoStore,
    /// Opened with settings other than those it was created with.
    #[error("it was created with chunking {chunking} and zstd level {zstd_level}; a store's settings cannot change")]
    SettingsDiffer { chunking: Chunking, zstd_level: i32 },
    /// Chunked by another fastcdc version: boundaries could differ, and
    /// new imports would not deduplicate against the old.
    #[error("it was chunked with fastcdc {found} but this build has {FASTCDC_VERSION}; boundaries could differ")]
    FastcdcVersion { found: String },
    #[error(
        "store format {0} is not supported (this build reads {STORE_FORMAT}); \
         it is not converted in place: with the build that made it, `yolo-store export` \
         each VMI's boot image (or keep the .yolo files), then `yolo-store import` them \
         into a new store"
    )]
    UnsupportedFormat(u32),
}

/// Why gc refused to plan: it deletes what refcounts call garbage, so
/// they must agree with the manifests.
#[derive(Debug, thiserror::Error)]
pub enum GcRefusal {
    #[error("the manifest of {name:?} is unreadable ({why})")]
    UnreadableManifest { name: String, why: Box<Error> },
    /// The first disagreement found, and how many more there are.
    #[error("the refcounts disagree with the manifests ({first}{})", more_text(*.more))]
    RefcountsDisagree { first: Disagreement, more: usize },
}

fn more_text(more: usize) -> String {
    if more > 0 {
        format!(", and {more} more")
    } else {
        String::new()
    }
}

/// A chunk whose refs record disagrees with the manifests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Disagreement {
    #[error("chunk {id}: {recorded} recorded, {actual} manifest(s) use it")]
    Count {
        id: ChunkId,
        recorded: u64,
        actual: u64,
    },
    #[error("chunk {0}: no refs record, a manifest uses it")]
    NoRecord(ChunkId),
}

/// An output refused (`output.rs`): nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum OutputFault {
    /// The path names a symlink, a directory, or a device, FIFO or socket
    /// (`what` says which).
    #[error("{} is {what}; an output may only be a new or regular file (or - for standard output)", path.display())]
    NotAFile { path: PathBuf, what: &'static str },
    /// A path with no file name (`/`, `..`).
    #[error("{} is not a file path", .0.display())]
    NoFileName(PathBuf),
    #[error(
        "this output is written at offsets (sparse) and cannot go to standard output; name a file"
    )]
    SparseToStdout,
    #[error("standard output is a terminal; redirect it, or name a file")]
    StdoutIsTerminal,
}

/// Arguments of a verb that cannot work together.
#[derive(Debug, thiserror::Error)]
pub enum UsageFault {
    /// A name given twice to export (a `.yolo` naming one file twice is
    /// one import refuses).
    #[error("{0:?} is given twice")]
    NameTwice(String),
    #[error("nothing to export")]
    NothingToExport,
    #[error("these boot images have different block sizes; export them separately")]
    MixedBlockSizes,
    /// `import --name` with a boot image of `files` files.
    #[error("--name needs a boot image with one file; this one has {files}")]
    NameNeedsOneFile { files: usize },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A remote that did not deliver (down, slow, or a request that failed
    /// after the client's retries), as opposed to one that answered with
    /// bytes that are wrong: a reader may fall back to the file.
    pub fn is_remote_unavailable(&self) -> bool {
        matches!(self, Error::Remote { fault, .. } if fault.is_unavailable())
    }
}

/// One I/O variant for the whole core: a format's I/O error is an
/// [`Error::Io`], so callers that map errno or add a path match one place.
impl From<FormatError> for Error {
    fn from(e: FormatError) -> Self {
        match e {
            FormatError::Io { path, source } => Error::Io { path, source },
            other => Error::Format(other),
        }
    }
}

impl From<FileFault> for Error {
    fn from(fault: FileFault) -> Self {
        Error::File(fault)
    }
}

impl From<OutputFault> for Error {
    fn from(fault: OutputFault) -> Self {
        Error::Output(fault)
    }
}

impl From<UsageFault> for Error {
    fn from(fault: UsageFault) -> Self {
        Error::Usage(fault)
    }
}
