//! What can go wrong with a remote, as kinds: a URL refused, a request
//! that failed, an object that is missing or breaks its format, a remote
//! made for other stores, another writer holding it. Each becomes
//! [`Error::Remote`] with the remote's URL (credentials never in it).

use yolo_store_format::FormatError;

use super::{CONFIG_KEY, LAYOUT};
use crate::chunking::Chunking;
use crate::id::ChunkId;
use crate::manifest::ChunkTooLong;
use crate::Error;

#[derive(Debug, thiserror::Error)]
pub enum RemoteFault {
    /// Credentials in the URL or endpoint: refused, and never printed.
    #[error(
        "credentials do not belong in the URL; set AWS_ACCESS_KEY_ID and \
         AWS_SECRET_ACCESS_KEY instead"
    )]
    CredentialsInUrl,
    #[error("no bucket in the URL (s3://BUCKET[/PREFIX])")]
    NoBucket,
    #[error("a remote is s3://BUCKET[/PREFIX] or file:///DIRECTORY")]
    NotARemoteUrl,
    /// The object store client could not be built (its settings).
    #[error("{0}")]
    Client(#[source] object_store::Error),
    #[error("starting the I/O runtime: {0}")]
    Runtime(#[source] std::io::Error),

    /// A request failed after the client's retries: the remote is down,
    /// unreachable, or refused it.
    #[error("{0}")]
    Request(#[source] object_store::Error),
    /// The same, for a request about the object `key`.
    #[error("{key}: {source}")]
    RequestOn {
        key: String,
        #[source]
        source: object_store::Error,
    },
    /// The serving tier skips a remote that failed recently.
    #[error("down or slow, skipped for up to {secs}s")]
    Down { secs: u64 },
    /// The serving tier could not fetch a chunk in time.
    #[error("chunk {} could not be fetched", .0.to_hex())]
    ChunkUnavailable(ChunkId),

    #[error("{CONFIG_KEY}: {0}")]
    ConfigUnreadable(#[source] serde_json::Error),
    #[error("{0}")]
    ConfigEncoding(#[source] serde_json::Error),
    #[error(
        "remote layout 1 (one object per chunk) is not read by this build, \
         which uses layout 2 (packs and an index); push from a node that \
         holds the boot images to a new prefix (or an emptied one), \
         and pull from there"
    )]
    Layout1,
    #[error("remote layout {0} is unknown to this build (layout {LAYOUT}); update yolo-store to pull from it")]
    UnknownLayout(u32),
    #[error("its config vanished after being written")]
    ConfigVanished,
    #[error("nothing was ever pushed here (no yolo-remote.json)")]
    NeverPushed,
    /// The remote chunks otherwise than this store: nothing would
    /// deduplicate.
    #[error(
        "it chunks with {theirs} (fastcdc {theirs_fastcdc}) but this store with {ours} \
         (fastcdc {ours_fastcdc}); chunks would not deduplicate: use a store made for this remote"
    )]
    ChunkingMismatch {
        theirs: Chunking,
        theirs_fastcdc: String,
        ours: Chunking,
        ours_fastcdc: String,
    },

    #[error("no boot image named {0:?} on the remote")]
    UnknownVmi(String),
    /// Object `key` is refused (strict reads: gc, and a pack gc repacks).
    #[error("{key}: {defect}")]
    Object { key: String, defect: ObjectDefect },
    /// The same, met by gc, which then stops before deleting anything more.
    #[error("{key}: {defect}; gc stops")]
    GcStops { key: String, defect: ObjectDefect },
    /// A manifest whose chunk push did not place in any pack.
    #[error("{name}: chunk {} is in no pack after the upload", .chunk.to_hex())]
    NotUploaded { name: String, chunk: ChunkId },

    /// Another node pushes, pulls or collects in a way that conflicts.
    #[error(
        "busy: {} hold(s) the remote ({}); try again when it ends, or after {ttl_min} min \
         if its process died",
        .holders.len(), .holders.join(", ")
    )]
    Locked { holders: Vec<String>, ttl_min: u64 },
    /// Our lock was not refreshed in time: another writer may have taken it.
    #[error("lost the remote lock {key} (not refreshed for {secs} s); run again")]
    LockLost { key: String, secs: u64 },
}

impl RemoteFault {
    /// The remote did not deliver (as opposed to delivering wrong bytes
    /// or refusing our settings).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            RemoteFault::Request(_)
                | RemoteFault::RequestOn { .. }
                | RemoteFault::Down { .. }
                | RemoteFault::ChunkUnavailable(_)
        )
    }
}

/// Why a remote object (an index object, a manifest, a pack or a range of
/// one) was refused.
#[derive(Debug, thiserror::Error)]
pub enum ObjectDefect {
    #[error("its content does not match the BLAKE3 in its name")]
    NotItsName,
    #[error("missing on the remote")]
    Missing,
    /// A manifest version that a newer push replaced since it was listed.
    #[error("gone: replaced by a newer push; pull again")]
    Gone,
    /// A response of another length than the index gives.
    #[error("{got} bytes where the index gives {want}")]
    WrongLength { got: u64, want: u64 },
    #[error("shorter than its index says")]
    ShorterThanIndex,
    /// A chunk value whose header disagrees with the manifest's length.
    #[error("its header gives {header:?} raw bytes, the manifest {manifest}")]
    HeaderLength { header: Option<u32>, manifest: u32 },
    /// A chunk the rewritten index no longer places (gc's repack).
    #[error("chunk {} lost in the repack", .0.to_hex())]
    LostInRepack(ChunkId),
    #[error(transparent)]
    ChunkTooLong(ChunkTooLong),
    /// The bytes break their format.
    #[error(transparent)]
    Format(FormatError),
    /// A manifest that decodes but that the store refuses to rebuild.
    #[error(transparent)]
    Manifest(Box<Error>),
}

impl From<FormatError> for ObjectDefect {
    fn from(e: FormatError) -> Self {
        ObjectDefect::Format(e)
    }
}

impl From<ChunkTooLong> for ObjectDefect {
    fn from(e: ChunkTooLong) -> Self {
        ObjectDefect::ChunkTooLong(e)
    }
}

/// A manifest rebuilt through the index: a format fault is the object's;
/// anything else the store refused.
impl From<Error> for ObjectDefect {
    fn from(e: Error) -> Self {
        match e {
            Error::Format(f) => ObjectDefect::Format(f),
            other => ObjectDefect::Manifest(Box::new(other)),
        }
    }
}
