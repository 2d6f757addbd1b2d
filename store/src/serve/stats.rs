//! What a mount reports of its serving (its status file and `/metrics`).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use serde::Serialize;

use crate::cache::CacheStats;
use crate::latency::{Latency, LatencyStats};
use crate::learn::LearnStats;
use crate::remote::RemoteTierStats;

/// The read path's counters.
#[derive(Default)]
pub(super) struct ReadCounters {
    pub(super) reads: AtomicU64,
    pub(super) bytes_from_store: AtomicU64,
    pub(super) bytes_from_file: AtomicU64,
    pub(super) chunk_failures: AtomicU64,
    pub(super) latency: Latency,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ServeStats {
    pub reads: u64,
    pub bytes_from_store: u64,
    pub bytes_from_file: u64,
    pub chunk_failures: u64,
    /// Opens of a file whose recorded blocks differ from its boot image's
    /// (served from the file).
    pub identity_mismatches: u64,
    /// Opens served from the file because the file's blocks were still
    /// being checked against its boot image.
    pub unverified_opens: u64,
    /// Opens whose reads the kernel sends straight to the file (FUSE
    /// passthrough): none of them reaches `reads`.
    pub passthrough_opens: u64,
    /// Of those, opens of a file with a boot image (or a check pending),
    /// passed through because the file was already open that way.
    pub passthrough_held: u64,
    /// Opens that could have been passed through but were served by the
    /// daemon (passthrough not offered, not allowed, or in conflict).
    pub passthrough_refused: u64,
    /// Passthrough opens not released yet.
    pub passthrough_open_now: u64,
    /// (file version, boot image) pairs being checked now.
    pub identities_pending: u64,
    /// (file version, boot image) pairs known to match, kept across
    /// restarts.
    pub boot_images_verified: u64,
    /// Whether the check of every boot image at start has finished.
    pub startup_verification_done: bool,
    pub preload_chunks_total: u64,
    pub preload_chunks_done: u64,
    pub cache: CacheStats,
    /// (upper bound in microseconds, reads) for every non-empty bucket.
    pub latency_us: Vec<(u64, u64)>,
    /// With `--learn`: what became of the recorded boots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learning: Option<LearnStats>,
    /// With `--remote`: the lazy remote tier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteTierStats>,
    /// Microseconds spent in all reads.
    pub latency_us_sum: u64,
    /// The same per VMI, for a bounded set of VMIs; every other file's
    /// reads under [`crate::OTHER_VMIS`].
    pub latency_by_vmi: BTreeMap<String, LatencyStats>,
}
