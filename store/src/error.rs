//! One error type for the library; each variant says what went wrong in terms
//! a user can act on. The CLI adds context (which file, which verb) on top.

use std::path::PathBuf;

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

    #[error("invalid boot image: {0}")]
    Format(String),

    #[error("trace line {line}: {msg}")]
    Trace { line: usize, msg: String },

    #[error("invalid name {name:?}: {why}")]
    Name { name: String, why: &'static str },

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

    /// From RocksDB (converted in store.rs, so this file, which the fuzz
    /// crate compiles too, does not depend on it).
    #[error("RocksDB: {0}")]
    Db(String),

    #[error("remote {remote}: {why}")]
    Remote { remote: String, why: String },

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

    pub(crate) fn format(msg: impl Into<String>) -> Self {
        Error::Format(msg.into())
    }
}
