//! yolo-store's library core: the RocksDB chunk store with a manifest per
//! VMI, import, gc, verify, serving and the remote, over the parsers of
//! `yolo-store-format` (the `.yolo` format, traces, packs, chunking), whose
//! types it re-exports. It knows nothing of command lines or FUSE; the
//! `yolo-store` binary adapts it.

mod cache;
mod capture;
mod error;
mod export;
mod files;
mod follower;
mod gc;
mod import;
mod latency;
mod learn;
mod manifest;
mod output;
mod record;
mod refcount;
mod remote;
mod repair;
mod serve;
mod stats;
mod store;
mod trust;
mod verify;

// The parsers of untrusted bytes live in yolo-store-format (no RocksDB, so
// fuzzed by normal dependency). Used under their old module names, so the
// core's paths (`crate::format::BootImage`, `crate::id::ChunkId`) stay.
use yolo_store_format::{chunking, codec, id, name, pack, trace, yolo as format};

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use cache::{CacheStats, ChunkCache};
pub use capture::{write_boot_image, CaptureSource};
pub use chunking::{Chunking, FASTCDC_VERSION};
pub use error::{
    Disagreement, Error, FileFault, GcRefusal, OutputFault, Result, StoreFault, UsageFault,
};
pub use export::{export, extract};
pub use files::{images_dir, list_dir_in, metadata_in, open_file_in, open_regular, EntryKind};
pub use follower::Follower;
pub use format::{
    block_count, validate_block_size, BootImage, BootImageWriter, FileHeader, FileImage,
};
pub use gc::{execute_gc, plan_gc, remove, GcPlan, GcReport};
pub use id::{ChunkId, FileIdentity, ManifestHash};
pub use import::{import, ImportOptions, ImportReport};
pub use latency::{LatencyStats, LATENCY_BUCKETS, MAX_VMI_LATENCIES, OTHER_VMIS};
pub use learn::{LearnOptions, LearnStats, Learner, SPOOL_DIR};
pub use manifest::{ChunkRef, ChunkTooLong, Manifest, ManifestIndex};
pub use name::{validate_name, STATUS_FILE};
pub use output::{check_output, is_stdout, STDOUT};
pub use record::{RecordedFile, Recorder};
pub use remote::{
    pull, push, remote_gc, ObjectDefect, PullFailure, PullReport, PushReport, Remote, RemoteConfig,
    RemoteFault, RemoteGcPlan, RemoteGcReport, RemoteOptions, RemoteTier, RemoteTierStats, Stored,
};
pub use repair::{repair, RepairReport};
pub use serve::{
    ImageServer, OpenImage, PageCache, PassthroughOutcome, Preload, ServeOptions, ServeStats,
};
pub use stats::{stats, StoreStats, VmiStats};
pub use store::{ChunkInfo, Store, StoreConfig, Table};
pub use trace::{blocks_in_access_order, parse_trace, write_trace, Read};
pub use trust::{blocks_match, FileVersion};
pub use verify::{verify, DamagedChunk, Place, Problem, VerifyReport};
pub use yolo_store_format::{
    BootImageFault, ChunkFault, ChunkingFault, FormatError, ObjectFault, PackFault, TraceLineFault,
    WriterMisuse,
};
