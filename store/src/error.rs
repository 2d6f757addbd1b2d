//! One error type for the library; each variant says what went wrong in terms
//! a user can act on. The CLI adds context (which file, which verb) on top.

use std::path::PathBuf;

use yolo_store_format::FormatError;

use crate::id::ChunkId;

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

    #[error("no boot image named {0:?} in the store")]
    UnknownVmi(String),

    #[error("chunk {id} is missing from the store")]
    MissingChunk { id: ChunkId },

    #[error("chunk {id} is corrupt: {why}")]
    CorruptChunk { id: ChunkId, why: String },

    #[error("store metadata is corrupt: {0}")]
    CorruptStore(String),

    #[error("store at {path} is not usable: {why}")]
    StoreConfig { path: PathBuf, why: String },

    #[error("store at {0} was never finished being created (no config record); `yolo-store init` or an import finishes it")]
    UnfinishedStore(PathBuf),

    /// gc will not run on refcounts it cannot trust.
    #[error("gc refused: {0}; run `yolo-store verify --repair --images DIR` first")]
    GcRefused(String),

    #[error("store at {0} is being changed by another yolo-store process")]
    Busy(PathBuf),

    /// From RocksDB (converted in store.rs).
    #[error("RocksDB: {0}")]
    Db(String),

    #[error("remote {remote}: {why}")]
    Remote { remote: String, why: String },

    /// The OS would not start a thread the daemon needs.
    #[error("could not start the {what} thread: {source}")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
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
