//! `mount --metrics`: a real mount scraped over real HTTP. The scrape must
//! say what `.yolo-status` says, pass `promtool check metrics`, and survive
//! clients that are not Prometheus without disturbing the mount.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{boot_blocks, capture_blocks, noise, pread, vmi, Env, Mount};
use serde_json::Value;

/// Three VMIs with boot images and one plain file without, so the latency
/// histogram has per-VMI labels and the `/other` one.
fn images(env: &Env) -> (PathBuf, Vec<(String, Vec<u8>)>) {
    let images = env.path("images");
    fs::create_dir_all(&images).unwrap();
    let mut files = Vec::new();
    for v in 0..3 {
        let name = format!("vmi{v}.qcow2");
        let data = vmi(&images.join(&name), v, 96, 40);
        let yolo = capture_blocks(env, &images.join(&name), &boot_blocks());
        env.ok(&["import", yolo.to_str().unwrap()]);
        files.push((name, data));
    }
    let plain = noise(99, 300 << 10);
    fs::write(images.join("plain.raw"), &plain).unwrap();
    files.push(("plain.raw".into(), plain));
    (images, files)
}

/// A port nobody listens on now (the kernel's pick, released at once).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A mount with metrics (without passthrough, the default, so the reads
/// of the file with no boot image reach the daemon: counted under /other).
fn serve(env: &Env, images: &Path, port: u16) -> Mount {
    let addr = format!("127.0.0.1:{port}");
    Mount::start(
        env,
        "mount",
        images,
        &env.path("mnt"),
        &["--metrics", &addr],
    )
}

/// Sends `request` as is and returns the whole answer (the server closes
/// every connection). The timeout only keeps a broken server from hanging
/// the test; nothing is asserted about time.
/// One request, one answer. A 503 (the server's connection slots still
/// held by the threads of earlier exchanges, on a loaded machine) is tried
/// again a little later.
fn exchange(port: u16, request: &[u8]) -> String {
    for _ in 0..50 {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        stream.write_all(request).unwrap();
        let answer = read_answer(&mut stream);
        if status_code(&answer) != "503" {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the metrics server stayed busy");
}

fn read_answer(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("the server answers and closes");
    String::from_utf8(answer).expect("UTF-8 answer")
}

fn status_code(answer: &str) -> &str {
    answer.split(' ').nth(1).unwrap_or("")
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

/// `GET /metrics` in the classic text format.
fn scrape_text(port: u16) -> String {
    let answer = exchange(
        port,
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
    );
    assert_eq!(status_code(&answer), "200", "{answer}");
    assert!(answer.contains("Content-Type: text/plain; version=0.0.4"));
    body(&answer).to_string()
}

/// Samples by `name{labels}`.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').expect("sample line");
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().expect("sample value"),
            };
            (key.to_string(), value)
        })
        .collect()
}

/// What each status counter is called in the scrape.
const COUNTERS: [(&str, &str); 14] = [
    ("/reads", "yolo_reads_total"),
    (
        "/bytes_from_store",
        "yolo_read_bytes_total{source=\"store\"}",
    ),
    ("/bytes_from_file", "yolo_read_bytes_total{source=\"file\"}"),
    ("/chunk_failures", "yolo_chunk_failures_total"),
    ("/identity_mismatches", "yolo_identity_mismatches_total"),
    ("/unverified_opens", "yolo_unverified_opens_total"),
    ("/preload_chunks_total", "yolo_preload_chunks_queued_total"),
    ("/preload_chunks_done", "yolo_preload_chunks_loaded_total"),
    ("/passthrough_opens", "yolo_passthrough_opens_total"),
    ("/passthrough_held", "yolo_passthrough_held_total"),
    ("/passthrough_refused", "yolo_passthrough_refused_total"),
    ("/cache/hits", "yolo_cache_hits_total"),
    ("/cache/misses", "yolo_cache_misses_total"),
    ("/cache/evictions", "yolo_cache_evictions_total"),
];

const GAUGES: [(&str, &str); 6] = [
    ("/identities_pending", "yolo_identities_pending"),
    ("/boot_images_verified", "yolo_boot_images_verified"),
    ("/passthrough_open_now", "yolo_passthrough_open"),
    ("/cache/chunks", "yolo_cache_chunks"),
    ("/cache/bytes", "yolo_cache_bytes"),
    ("/cache/budget", "yolo_cache_budget_bytes"),
];

/// `(le, cumulative reads)` of `vmi`'s latency histogram, by bound.
fn buckets(samples: &HashMap<String, f64>, vmi: &str) -> Vec<(f64, f64)> {
    let prefix = format!("yolo_read_latency_seconds_bucket{{vmi=\"{vmi}\",le=\"");
    let mut out: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|(key, &value)| {
            let le = key.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, value))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

fn number(status: &Value, pointer: &str) -> f64 {
    status
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} in {status}"))
}

fn metric(samples: &HashMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("{key} missing from the scrape"))
}

/// Reads `data`'s file through the mount at many offsets, byte-exact.
fn read_through(mount: &Mount, name: &str, data: &[u8], seed: u64) {
    let len = data.len() as u64;
    for w in noise(seed, 8 * 24).chunks(8) {
        let x = u64::from_le_bytes(w.try_into().unwrap());
        let (offset, size) = (x % len, 1 + ((x >> 32) % (96 << 10)) as usize);
        let got = pread(&mount.file(name), offset, size);
        let end = (offset as usize + size).min(data.len());
        assert!(
            got == data[offset as usize..end],
            "{name} at {offset}+{size} differs"
        );
    }
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn metrics_agree_with_the_status_file_while_reads_run_and_after() {
    let env = Env::new();
    let (images, files) = images(&env);
    let port = free_port();
    let mount = serve(&env, &images, port);
    mount.wait_verified();

    // Readers go on until told to stop, and are told only after the
    // scrapes, so every scrape below runs while reads do.
    let stop = AtomicBool::new(false);
    let mut previous: HashMap<String, f64> = HashMap::new();
    let mut first_reads = None;
    std::thread::scope(|s| {
        // Stops the readers however this closure ends: a failed assertion
        // must not leave them reading forever (the scope would wait).
        let _stop = StopOnDrop(&stop);
        let readers: Vec<_> = files
            .iter()
            .enumerate()
            .map(|(i, (name, data))| {
                let (mount, stop) = (&mount, &stop);
                s.spawn(move || {
                    let mut round = 0;
                    while round == 0 || !stop.load(Ordering::Relaxed) {
                        read_through(mount, name, data, (i * 1000 + round) as u64);
                        round += 1;
                    }
                })
            })
            .collect();
        // Each scrape lies between the status before it and the status
        // after it, and no counter goes down.
        for _ in 0..30 {
            let before = mount.status();
            let scraped = samples(&scrape_text(port));
            let after = mount.status();
            for (pointer, key) in COUNTERS {
                let (lo, m, hi) = (
                    number(&before, pointer),
                    metric(&scraped, key),
                    number(&after, pointer),
                );
                assert!(lo <= m && m <= hi, "{key}: {lo} <= {m} <= {hi}");
                let last = previous.insert(key.to_string(), m).unwrap_or(0.0);
                assert!(m >= last, "{key} went down from {last} to {m}");
            }
            first_reads.get_or_insert(metric(&scraped, "yolo_reads_total"));
        }
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            reader.join().unwrap();
        }
    });
    assert!(
        previous["yolo_reads_total"] > first_reads.unwrap(),
        "reads ran while scraping"
    );

    // Once reads have stopped and preloads finished, the two are equal.
    // (A preload queued but not started has not counted its chunks yet,
    // so wait for a status that also holds still.)
    for _ in 0..500 {
        let status = mount.status();
        std::thread::sleep(Duration::from_millis(20));
        if status["preload_chunks_done"] == status["preload_chunks_total"]
            && status == mount.status()
        {
            break;
        }
    }
    let status = mount.status();
    let scraped = samples(&scrape_text(port));
    assert_eq!(status, mount.status(), "the mount is idle");
    for (pointer, key) in COUNTERS.iter().chain(GAUGES.iter()) {
        assert_eq!(number(&status, pointer), metric(&scraped, key), "{key}");
    }
    assert_eq!(metric(&scraped, "yolo_startup_verification_done"), 1.0);
    assert!(number(&status, "/bytes_from_store") > 0.0, "{status}");
    assert!(number(&status, "/bytes_from_file") > 0.0, "{status}");

    // The histogram: one per VMI with a boot image, the plain file under
    // /other; counts and sums as in the status, buckets cumulative.
    let by_vmi = status["latency_by_vmi"].as_object().unwrap();
    let mut labels: Vec<&str> = by_vmi.keys().map(String::as_str).collect();
    labels.sort();
    assert_eq!(labels, ["/other", "vmi0.qcow2", "vmi1.qcow2", "vmi2.qcow2"]);
    let mut total = 0.0;
    for (vmi, stats) in by_vmi {
        let count: f64 = stats["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b[1].as_f64().unwrap())
            .sum();
        let series = |suffix: &str, le: Option<&str>| {
            let le = le.map(|l| format!(",le=\"{l}\"")).unwrap_or_default();
            metric(
                &scraped,
                &format!("yolo_read_latency_seconds{suffix}{{vmi=\"{vmi}\"{le}}}"),
            )
        };
        assert!(count > 0.0, "{vmi} was read");
        assert_eq!(series("_count", None), count, "{vmi}");
        assert_eq!(series("_bucket", Some("+Inf")), count, "{vmi}");
        let sum_us = stats["sum_us"].as_f64().unwrap();
        assert!((series("_sum", None) - sum_us / 1e6).abs() < 1e-6, "{vmi}");
        // The status's buckets, cumulated, are the scrape's, at every
        // bound from 2 us to 2^23 us.
        let got = buckets(&scraped, vmi);
        assert_eq!(got.len(), 24, "{vmi}: 23 bounds and +Inf");
        for (k, &(le, value)) in got.iter().take(23).enumerate() {
            let bound_us = 2u64 << k;
            assert!((le - bound_us as f64 / 1e6).abs() < 1e-12, "{vmi} le={le}");
            let expected: f64 = stats["buckets"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|b| b[0].as_u64().unwrap() <= bound_us)
                .map(|b| b[1].as_f64().unwrap())
                .sum();
            assert_eq!(value, expected, "{vmi} le={le}");
        }
        total += count;
    }
    assert_eq!(total, number(&status, "/reads"));
    mount.unmount();
}

#[test]
fn promtool_accepts_a_scrape_and_prometheus_gets_openmetrics() {
    let env = Env::new();
    let (images, files) = images(&env);
    let port = free_port();
    let mount = serve(&env, &images, port);
    for (i, (name, data)) in files.iter().enumerate() {
        read_through(&mount, name, data, i as u64);
    }
    let text = scrape_text(port);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/setup.sh promtool installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // What Prometheus 2.x sends: OpenMetrics first.
    let answer = exchange(
        port,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n\r\n",
    );
    assert_eq!(status_code(&answer), "200", "{answer}");
    assert!(answer.contains("Content-Type: application/openmetrics-text; version=1.0.0"));
    assert!(body(&answer).ends_with("# EOF\n"));
    assert!(body(&answer).contains("# TYPE yolo_reads counter\n"));
    mount.unmount();
}

#[test]
fn bad_requests_get_errors_and_the_mount_keeps_serving() {
    let env = Env::new();
    let (images, files) = images(&env);
    let port = free_port();
    let mount = serve(&env, &images, port);

    // Slow clients, holding connections with half a request: scrapes and
    // reads go on meanwhile, and each is closed with 408 in the end.
    let mut slow: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET /metr").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
            s
        })
        .collect();
    scrape_text(port);
    read_through(&mount, &files[0].0, &files[0].1, 1);

    let cases: [(&[u8], &str); 7] = [
        (
            b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "405",
        ),
        (b"DELETE /metrics HTTP/1.1\r\n\r\n", "405"),
        (b"GET / HTTP/1.1\r\n\r\n", "404"),
        (b"GET /metrics/../etc/passwd HTTP/1.1\r\n\r\n", "404"),
        (b"hello there\r\n\r\n", "400"),
        (b"GET /metrics HTTP/2.0\r\n\r\n", "400"),
        (b"\x00\xff\xfe\r\n\r\n", "400"),
    ];
    for (request, code) in cases {
        let answer = exchange(port, request);
        assert_eq!(
            status_code(&answer),
            code,
            "{:?}: {answer}",
            String::from_utf8_lossy(request)
        );
    }
    assert!(exchange(port, b"PUT /metrics HTTP/1.1\r\n\r\n").contains("Allow: GET, HEAD\r\n"));
    let head = exchange(port, b"HEAD /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(status_code(&head), "200");
    assert_eq!(body(&head), "", "HEAD has no body");

    // A request that never ends its headers is cut off at 8 KiB.
    let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    big.extend(vec![b'a'; 100 << 10]);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    // The server may close before all of it is sent; that is the point.
    let _ = stream.write_all(&big);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 431 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    for s in &mut slow {
        assert_eq!(status_code(&read_answer(s)), "408");
    }

    // More idle connections than the server takes at once: the extra ones
    // are told 503 straight away instead of waiting, the rest time out.
    let idle: Vec<TcpStream> = (0..12)
        .map(|_| {
            let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
            s
        })
        .collect();
    let codes: Vec<String> = idle
        .into_iter()
        .map(|mut s| status_code(&read_answer(&mut s)).to_string())
        .collect();
    assert!(codes.iter().all(|c| c == "503" || c == "408"), "{codes:?}");
    assert!(codes.iter().any(|c| c == "503"), "{codes:?}");

    // Through all of it the mount served exact bytes and still scrapes.
    for (i, (name, data)) in files.iter().enumerate() {
        read_through(&mount, name, data, 50 + i as u64);
    }
    let scraped = samples(&scrape_text(port));
    assert_eq!(
        metric(&scraped, "yolo_reads_total"),
        number(&mount.status(), "/reads")
    );
    mount.unmount();
}

#[test]
fn a_metrics_address_that_cannot_be_used_fails_before_mounting() {
    let env = Env::new();
    let (images, _) = images(&env);
    let mnt = env.path("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let args = |metrics: &str| {
        vec![
            "mount".to_string(),
            "--images".into(),
            images.to_str().unwrap().into(),
            mnt.to_str().unwrap().into(),
            "--metrics".into(),
            metrics.into(),
        ]
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        env.fails(&args)
    };
    let err = run(args(&addr));
    assert!(err.contains(&format!("metrics endpoint {addr}")), "{err}");
    let err = run(args(&format!("0.0.0.0:{}", free_port())));
    assert!(err.contains("--metrics-allow-remote"), "{err}");
    let err = run(args("localhost:9100"));
    assert!(err.contains("--metrics"), "{err}");
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(mnt.to_str().unwrap()),
        "nothing was mounted"
    );
}
