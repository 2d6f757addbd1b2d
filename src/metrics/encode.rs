//! The metrics of a mount, from one [`ServeStats`] snapshot (the one
//! `.yolo-status` is made of), encoded by `prometheus-client` in the format
//! the scraper asked for.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use yolo_store_core::{ServeStats, LATENCY_BUCKETS, MAX_VMI_LATENCIES, OTHER_VMIS};

/// Prefix of every metric name.
const PREFIX: &str = "yolo";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The classic text format (0.0.4): what `curl` and `promtool check
    /// metrics` read.
    Prometheus,
    /// OpenMetrics 1.0, which Prometheus itself asks for first.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header prefers: OpenMetrics only when asked
    /// for with a quality at least that of `text/plain` (or `*/*`), as the
    /// Prometheus project's own clients negotiate.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let (mut open_metrics, mut text) = (0.0f32, 0.0f32);
        for range in accept.unwrap_or("").split(',') {
            let mut params = range.split(';');
            let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = params
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => open_metrics = open_metrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if open_metrics > 0.0 && open_metrics >= text {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The scrape body for `stats`.
pub fn encode(stats: ServeStats, format: Format) -> Result<String, fmt::Error> {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(Snapshot(stats)));
    let mut body = String::new();
    match format {
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut body, &registry)?
        }
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut body, &registry)?,
    }
    Ok(body)
}

#[derive(Debug)]
struct Snapshot(ServeStats);

impl Collector for Snapshot {
    fn encode(&self, mut out: DescriptorEncoder) -> Result<(), fmt::Error> {
        let s = &self.0;
        let counters: [(&str, &str, u64); 12] = [
            ("reads", "Reads of VMI files answered by the mount.", s.reads),
            (
                "chunk_failures",
                "Chunks that could not be read or failed their BLAKE3 check; their ranges were served from the VMI file.",
                s.chunk_failures,
            ),
            (
                "identity_mismatches",
                "Opens of a VMI file whose recorded blocks differ from its boot image (served from the file).",
                s.identity_mismatches,
            ),
            (
                "unverified_opens",
                "Opens served from the file while its blocks were still being checked against its boot image.",
                s.unverified_opens,
            ),
            (
                "preload_chunks_queued",
                "Chunks of boot images queued to be loaded into the cache ahead of reads.",
                s.preload_chunks_total,
            ),
            (
                "preload_chunks_loaded",
                "Queued preload chunks done (loaded, or found in the cache already).",
                s.preload_chunks_done,
            ),
            (
                "passthrough_opens",
                "Opens whose reads the kernel sends straight to the file (FUSE passthrough); none of them reaches reads_total.",
                s.passthrough_opens,
            ),
            (
                "passthrough_held",
                "Passthrough opens of a file with a boot image (or a check pending), because the file was already open that way.",
                s.passthrough_held,
            ),
            (
                "passthrough_refused",
                "Opens that could have been passed through but were served by the daemon (not offered, not allowed, or in conflict).",
                s.passthrough_refused,
            ),
            ("cache_hits", "Chunk lookups found in the cache.", s.cache.hits),
            (
                "cache_misses",
                "Chunk lookups that had to load the chunk's pack from the store.",
                s.cache.misses,
            ),
            (
                "cache_evictions",
                "Chunks evicted from the cache to keep it within its budget.",
                s.cache.evictions,
            ),
        ];
        for (name, help, value) in counters {
            let metric = ConstCounter::new(value);
            metric.encode(out.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }

        // With --learn: what became of recorded boots, by outcome.
        if let Some(l) = &s.learning {
            let mut learned = out.encode_descriptor(
                "learnings",
                "Recorded boots (mount --learn) by outcome: learned (spooled), imported (in the store, checked, served from the next open), dropped and why, pushed to the remote or not.",
                None,
                MetricType::Counter,
            )?;
            for (outcome, value) in [
                ("learned", l.learned),
                ("imported", l.imported),
                ("dropped_too_few_reads", l.dropped_too_few_reads),
                ("dropped_vmi_changed", l.dropped_vmi_changed),
                ("dropped_refused", l.dropped_refused),
                ("pushed", l.pushed),
                ("push_failed", l.push_failures),
            ] {
                ConstCounter::new(value).encode(learned.encode_family(&[("outcome", outcome)])?)?;
            }
            let recording = ConstGauge::new(l.recording);
            recording.encode(out.encode_descriptor(
                "learning_recordings",
                "Boots being recorded now (mount --learn).",
                None,
                recording.metric_type(),
            )?)?;
        }

        // With --remote: the lazy remote tier.
        if let Some(r) = &s.remote {
            let counters: [(&str, &str, u64); 9] = [
                (
                    "remote_chunks_fetched",
                    "Chunks of remote boot images fetched and found to hash to their ids (mount --remote).",
                    r.chunks_fetched,
                ),
                (
                    "remote_gets",
                    "Range GETs sent to the remote for chunks.",
                    r.gets,
                ),
                (
                    "remote_get_failures",
                    "Range GETs that failed or did not answer within --remote-timeout.",
                    r.get_failures,
                ),
                (
                    "remote_bad_chunks",
                    "Fetched chunks that did not decode to their BLAKE3 id (never served nor stored).",
                    r.bad_chunks,
                ),
                (
                    "remote_fallbacks",
                    "Boot-image ranges served from the VMI file because the remote could not deliver their chunks in time.",
                    r.fallbacks,
                ),
                (
                    "remote_boot_images_stored",
                    "Remote boot images written to the local store once all their chunks had arrived.",
                    r.boot_images_stored,
                ),
                (
                    "remote_store_failures",
                    "Remote boot images that could not be written to the local store.",
                    r.store_failures,
                ),
                (
                    "remote_loads",
                    "Readings of the remote's manifests and index whose new boot images were checked against their files.",
                    r.loads,
                ),
                (
                    "remote_load_failures",
                    "Readings of the remote's manifests and index that failed.",
                    r.load_failures,
                ),
            ];
            for (name, help, value) in counters {
                let metric = ConstCounter::new(value);
                metric.encode(out.encode_descriptor(name, help, None, metric.metric_type())?)?;
            }
            let bytes: [(&str, &str, u64); 2] = [
                (
                    "remote_fetched",
                    "Bytes of range GET bodies from the remote (chunks as stored, and the gaps a range carried along).",
                    r.bytes_fetched,
                ),
                (
                    "remote_fallback",
                    "Bytes of boot-image ranges served from the VMI file because the remote could not deliver.",
                    r.fallback_bytes,
                ),
            ];
            for (name, help, value) in bytes {
                let metric = ConstCounter::new(value);
                metric.encode(out.encode_descriptor(
                    name,
                    help,
                    Some(&Unit::Bytes),
                    metric.metric_type(),
                )?)?;
            }
            let gauges: [(&str, &str, u64); 2] = [
                (
                    "remote_boot_images",
                    "Boot images served from the remote (not in the local store yet).",
                    r.boot_images,
                ),
                (
                    "remote_down",
                    "1 while reads skip the remote after a failed or slow fetch.",
                    u64::from(r.down),
                ),
            ];
            for (name, help, value) in gauges {
                let metric = ConstGauge::new(value);
                metric.encode(out.encode_descriptor(name, help, None, metric.metric_type())?)?;
            }
        }

        let mut bytes = out.encode_descriptor(
            "read",
            "Bytes of VMI reads answered: boot-image blocks from the store (source=\"store\"), everything else from the VMI file (source=\"file\").",
            Some(&Unit::Bytes),
            MetricType::Counter,
        )?;
        for (source, value) in [("store", s.bytes_from_store), ("file", s.bytes_from_file)] {
            ConstCounter::new(value).encode(bytes.encode_family(&[("source", source)])?)?;
        }

        let gauges: [(&str, &str, Option<Unit>, u64); 7] = [
            (
                "identities_pending",
                "(file version, boot image) pairs being checked now.",
                None,
                s.identities_pending,
            ),
            (
                "boot_images_verified",
                "(file version, boot image) pairs known to match, kept across restarts.",
                None,
                s.boot_images_verified,
            ),
            (
                "startup_verification_done",
                "1 once the check of every boot image at mount start has finished.",
                None,
                u64::from(s.startup_verification_done),
            ),
            (
                "passthrough_open",
                "Passthrough opens not released yet.",
                None,
                s.passthrough_open_now,
            ),
            ("cache_chunks", "Chunks in the cache.", None, s.cache.chunks),
            (
                "cache",
                "Bytes of decompressed chunks in the cache.",
                Some(Unit::Bytes),
                s.cache.bytes,
            ),
            (
                "cache_budget",
                "Bytes the cache may hold (--cache-size).",
                Some(Unit::Bytes),
                s.cache.budget,
            ),
        ];
        for (name, help, unit, value) in gauges {
            let metric = ConstGauge::new(value);
            metric.encode(out.encode_descriptor(
                name,
                help,
                unit.as_ref(),
                metric.metric_type(),
            )?)?;
        }

        let help = format!(
            "Time to answer a read, per VMI for the first {MAX_VMI_LATENCIES} VMIs opened with a boot image; every other file under vmi=\"{OTHER_VMIS}\"."
        );
        let mut latency = out.encode_descriptor(
            "read_latency",
            &help,
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (vmi, stats) in &s.latency_by_vmi {
            let counts = stats.per_bucket();
            // Bucket i < 23 ends at 2^(i+1) us; the last is +Inf.
            let buckets: Vec<(f64, u64)> = counts
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let upper = if i + 1 < LATENCY_BUCKETS {
                        (2u64 << i) as f64 / 1e6
                    } else {
                        f64::INFINITY
                    };
                    (upper, n)
                })
                .collect();
            latency
                .encode_family(&[("vmi", vmi.as_str())])?
                .encode_histogram::<NoLabelSet>(
                    stats.sum_us as f64 / 1e6,
                    stats.count(),
                    &buckets,
                    None,
                )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yolo_store_core::LatencyStats;

    #[test]
    fn prometheus_asks_for_openmetrics_and_curl_gets_text() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0, text/plain")),
            Format::Prometheus
        );
        assert_eq!(
            Format::negotiate(Some("text/plain;q=0.9, application/openmetrics-text")),
            Format::OpenMetrics
        );
    }

    fn stats() -> ServeStats {
        let mut stats = ServeStats {
            reads: 7,
            bytes_from_store: 4096,
            bytes_from_file: 100,
            ..Default::default()
        };
        stats.latency_by_vmi.insert(
            "a \"quoted\" vmi".into(),
            LatencyStats {
                buckets: vec![(2, 3), (1 << 24, 1)],
                sum_us: 10_000_004,
            },
        );
        stats
    }

    #[test]
    fn text_has_counters_with_total_and_histogram_buckets_in_seconds() {
        let body = encode(stats(), Format::Prometheus).unwrap();
        assert!(body.contains("# TYPE yolo_reads_total counter\nyolo_reads_total 7\n"));
        assert!(body.contains("yolo_read_bytes_total{source=\"store\"} 4096\n"));
        assert!(body.contains("# TYPE yolo_cache_budget_bytes gauge\n"));
        let vmi = r#"vmi="a \"quoted\" vmi""#;
        assert!(body.contains(&format!(
            "yolo_read_latency_seconds_bucket{{{vmi},le=\"2e-06\"}} 3\n"
        )));
        assert!(body.contains(&format!(
            "yolo_read_latency_seconds_bucket{{{vmi},le=\"8.388608\"}} 3\n"
        )));
        assert!(body.contains(&format!(
            "yolo_read_latency_seconds_bucket{{{vmi},le=\"+Inf\"}} 4\n"
        )));
        assert!(body.contains(&format!("yolo_read_latency_seconds_count{{{vmi}}} 4\n")));
        assert!(!body.contains("# EOF"));
    }

    #[test]
    fn openmetrics_ends_with_eof() {
        let body = encode(stats(), Format::OpenMetrics).unwrap();
        assert!(body.ends_with("# EOF\n"));
        assert!(body.contains("# TYPE yolo_reads counter\nyolo_reads_total 7\n"));
    }
}
