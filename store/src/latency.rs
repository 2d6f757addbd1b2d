//! Read latency as log2 histograms in microseconds: one for the whole
//! mount, and one per VMI for a bounded set of VMIs. Which VMIs get a
//! histogram of their own is decided here, not in the metrics adapter, so
//! that the bound is tested without a mount: a label per file would let
//! anyone who can create files in the images directory grow the scrape
//! (and a monitoring system's series) without limit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

/// Buckets of a histogram: bucket i counts reads that took [2^i, 2^(i+1))
/// microseconds, the last one everything from 2^23 us (8.4 s) up.
pub const LATENCY_BUCKETS: usize = 24;

/// VMIs with a histogram of their own, at most. A node serves tens of VMIs
/// at a time; 64 histograms of 25 series each stay a small scrape.
pub const MAX_VMI_LATENCIES: usize = 64;

/// Where reads of every other file are counted. No VMI can have this name
/// (`validate_name` refuses absolute paths).
pub const OTHER_VMIS: &str = "/other";

#[derive(Default)]
pub struct Latency {
    buckets: [AtomicU64; LATENCY_BUCKETS],
    sum_us: AtomicU64,
}

impl Latency {
    pub fn record(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let bucket = (63 - us.leading_zeros() as usize).min(LATENCY_BUCKETS - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencyStats {
        LatencyStats {
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, n)| (2u64 << i, n.load(Ordering::Relaxed)))
                .filter(|&(_, n)| n > 0)
                .collect(),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

/// A histogram's counts at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LatencyStats {
    /// (upper bound in microseconds, reads) for every non-empty bucket;
    /// the last bucket's bound (2^24) stands for "slower".
    pub buckets: Vec<(u64, u64)>,
    /// Microseconds spent in all reads (each read counted as at least 1).
    pub sum_us: u64,
}

impl LatencyStats {
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|&(_, n)| n).sum()
    }

    /// Reads per bucket, every bucket: index i < 23 counts reads under
    /// 2^(i+1) us (and from 2^i), the last one every slower read.
    pub fn per_bucket(&self) -> [u64; LATENCY_BUCKETS] {
        let mut counts = [0; LATENCY_BUCKETS];
        for &(upper, n) in &self.buckets {
            // `upper` is 2 << i, as `Latency::snapshot` makes it.
            let i = (63 - upper.max(2).leading_zeros() as usize - 1).min(LATENCY_BUCKETS - 1);
            counts[i] += n;
        }
        counts
    }
}

/// Per-VMI histograms: a VMI gets its own on the first open that finds a
/// boot image for it in the store, while fewer than [`MAX_VMI_LATENCIES`]
/// have one, and keeps it for the life of the mount (a counter that
/// disappeared would look like a reset). Everything else is counted under
/// [`OTHER_VMIS`].
pub struct VmiLatencies {
    by_vmi: Mutex<BTreeMap<String, Arc<Latency>>>,
    other: Arc<Latency>,
    max: usize,
}

impl Default for VmiLatencies {
    fn default() -> Self {
        Self::with_max(MAX_VMI_LATENCIES)
    }
}

impl VmiLatencies {
    pub fn with_max(max: usize) -> Self {
        VmiLatencies {
            by_vmi: Mutex::new(BTreeMap::new()),
            other: Arc::new(Latency::default()),
            max,
        }
    }

    /// The histogram reads of file `name` go to.
    pub fn for_file(&self, name: &str, has_boot_image: bool) -> Arc<Latency> {
        let mut by_vmi = self.by_vmi.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(latency) = by_vmi.get(name) {
            return latency.clone();
        }
        if !has_boot_image || by_vmi.len() >= self.max {
            return self.other.clone();
        }
        let latency = Arc::new(Latency::default());
        by_vmi.insert(name.to_string(), latency.clone());
        latency
    }

    /// Every histogram, [`OTHER_VMIS`] included even when empty, so the
    /// set of series only grows.
    pub fn snapshot(&self) -> BTreeMap<String, LatencyStats> {
        let by_vmi = self.by_vmi.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: BTreeMap<String, LatencyStats> = by_vmi
            .iter()
            .map(|(name, latency)| (name.clone(), latency.snapshot()))
            .collect();
        all.insert(OTHER_VMIS.to_string(), self.other.snapshot());
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log2_of_microseconds_and_cumulative_adds_up() {
        let latency = Latency::default();
        for us in [0, 1, 2, 3, 4, 1000, 10_000_000] {
            latency.record(Duration::from_micros(us));
        }
        let stats = latency.snapshot();
        // 0 and 1 us in [1, 2); 2, 3 in [2, 4); 4 in [4, 8); 1000 in
        // [512, 1024); 10 s in the last bucket.
        assert_eq!(
            stats.buckets,
            vec![(2, 2), (4, 2), (8, 1), (1024, 1), (1 << 24, 1)]
        );
        assert_eq!(stats.sum_us, 1 + 1 + 2 + 3 + 4 + 1000 + 10_000_000);
        assert_eq!(stats.count(), 7);
        let mut expected = [0; LATENCY_BUCKETS];
        (expected[0], expected[1], expected[2], expected[9]) = (2, 2, 1, 1);
        // The 10 s read is in the last bucket, the slower-than-8.4-s one.
        expected[LATENCY_BUCKETS - 1] = 1;
        assert_eq!(stats.per_bucket(), expected);
    }

    #[test]
    fn only_files_with_a_boot_image_get_labels_and_at_most_max() {
        let latencies = VmiLatencies::with_max(2);
        let a = latencies.for_file("a", true);
        let plain = latencies.for_file("plain", false);
        let b = latencies.for_file("b", true);
        let c = latencies.for_file("c", true);
        // A file without a boot image, and one past the cap, share OTHER.
        assert!(Arc::ptr_eq(&plain, &c));
        // A label, once given, stays, even if the boot image went.
        assert!(Arc::ptr_eq(&a, &latencies.for_file("a", false)));
        for latency in [&a, &b, &c, &plain] {
            latency.record(Duration::from_micros(5));
        }
        let snapshot = latencies.snapshot();
        assert_eq!(
            snapshot.keys().collect::<Vec<_>>(),
            vec![OTHER_VMIS, "a", "b"]
        );
        assert_eq!(snapshot[OTHER_VMIS].count(), 2);
        assert_eq!(snapshot["a"].count(), 1);
        // Many more names never add a label.
        for i in 0..1000 {
            latencies.for_file(&format!("vmi-{i}"), true);
        }
        assert_eq!(latencies.snapshot().len(), 3);
    }

    #[test]
    fn the_other_label_is_no_vmi_name() {
        assert!(crate::validate_name(OTHER_VMIS).is_err());
    }
}
