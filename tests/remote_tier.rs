//! `mount --remote`: a node with an empty store serves boot images another
//! node pushed to a real Ceph RADOS Gateway on 127.0.0.1
//! (scripts/ceph-rgw.sh), fetching their chunks as they are read, and keeps
//! them; a remote that stalls or goes away never fails a read. The mount
//! reaches the gateway through a TCP relay in this test, which can stall
//! (accept and never answer) or refuse connections like a dead gateway.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{capture_blocks, pread, vmi, Env, Gateway, Mount, BIN};

const BUCKET: &str = "yolo-tier";
const RGW_PORT: u16 = 17485;
const MON_PORT: u16 = 16795;

/// Starts the cluster and puts its credentials in this process's
/// environment, which the mounts inherit (the only test in this binary).
fn start_ceph(dir: PathBuf) -> Gateway {
    let gateway = Gateway::start(dir, BUCKET, RGW_PORT, MON_PORT);
    for (k, v) in &gateway.env {
        std::env::set_var(k, v);
    }
    gateway
}

const FORWARD: u8 = 0;
const STALL: u8 = 1;
const REFUSE: u8 = 2;

/// A TCP relay to the gateway whose behaviour the test switches.
struct Relay {
    port: u16,
    mode: Arc<AtomicU8>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start() -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let port = listener.local_addr().expect("relay address").port();
        let relay = Relay {
            port,
            mode: Arc::new(AtomicU8::new(FORWARD)),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        let (mode, conns) = (relay.mode.clone(), relay.conns.clone());
        std::thread::spawn(move || accept_loop(Some(listener), port, &mode, &conns));
        relay
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Switches mode and cuts every connection open now (the client's
    /// pooled connections with them).
    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        for c in self.conns.lock().expect("relay").drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        // Let the accept loop see it (it polls every 10 ms).
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn accept_loop(
    mut listener: Option<TcpListener>,
    port: u16,
    mode: &AtomicU8,
    conns: &Mutex<Vec<TcpStream>>,
) {
    loop {
        let now = mode.load(Ordering::SeqCst);
        if now == REFUSE {
            // Closed: connecting is refused, as to a dead gateway.
            listener = None;
        } else if listener.is_none() {
            listener = TcpListener::bind(("127.0.0.1", port)).ok();
        }
        let Some(l) = &listener else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        l.set_nonblocking(true).expect("nonblocking");
        let Ok((client, _)) = l.accept() else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        client.set_nonblocking(false).expect("blocking");
        conns
            .lock()
            .expect("relay")
            .push(client.try_clone().expect("clone"));
        if now == STALL {
            continue; // held open, never answered
        }
        let Ok(server) = TcpStream::connect(("127.0.0.1", RGW_PORT)) else {
            continue;
        };
        conns
            .lock()
            .expect("relay")
            .push(server.try_clone().expect("clone"));
        for (mut from, mut to) in [
            (
                client.try_clone().expect("clone"),
                server.try_clone().expect("clone"),
            ),
            (server, client),
        ] {
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 || to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(Shutdown::Write);
            });
        }
    }
}

/// GET /metrics from `addr`.
fn scrape(addr: &str) -> String {
    let mut conn = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut body = String::new();
    conn.read_to_string(&mut body).expect("read the scrape");
    body
}

/// The reads of a boot, from the trace `capture_blocks` wrote: (offset,
/// length) in time order.
fn boot_reads(trace: &Path) -> Vec<(u64, usize)> {
    std::fs::read_to_string(trace)
        .expect("trace")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (o, n) = l.split_once(' ')?;
            Some((o.parse().ok()?, n.parse().ok()?))
        })
        .collect()
}

/// Replays `reads` through the mount; each must equal the file's bytes.
fn replay(mount: &Mount, name: &str, reads: &[(u64, usize)], data: &[u8]) {
    for &(offset, len) in reads {
        let got = pread(&mount.file(name), offset, len);
        let start = offset as usize;
        let want = &data[start..(start + len).min(data.len())];
        assert!(got == want, "{name}: read of {len} at {offset} differs");
    }
}

fn remote(mount: &Mount) -> serde_json::Value {
    mount.status()["remote"].clone()
}

fn n(value: &serde_json::Value, field: &str) -> u64 {
    value[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {value}"))
}

/// Waits until `what` holds of the mount's status (progress, not speed:
/// the bound is only there so a broken mount fails the test).
fn wait_for(mount: &Mount, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if ok(&mount.status()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: never happened: {}", mount.status());
}

/// The mount has read the remote and checked its boot images' files.
fn wait_remote_ready(mount: &Mount, images: u64) {
    wait_for(mount, "remote boot images checked", |s| {
        s["remote"]["loads"].as_u64().unwrap_or(0) >= 1
            && s["remote"]["boot_images"] == images
            && s["identities_pending"] == 0
    });
}

#[test]
fn an_empty_node_serves_pushed_boot_images_from_the_remote_and_survives_it_going_away() {
    let env = Env::new();
    let ceph = start_ceph(env.path("ceph"));
    let url = format!("s3://{BUCKET}/cloud");
    let images = env.path("images");
    std::fs::create_dir(&images).expect("images");

    // Node A: two VMIs of a family (96 shared blocks, 40 their own), their
    // boot images captured from a replayable trace, imported and pushed.
    let names = ["base.img", "web.img"];
    let mut data = Vec::new();
    let mut traces = Vec::new();
    let blocks = common::boot_blocks();
    for (i, name) in names.iter().enumerate() {
        let file = images.join(name);
        data.push(vmi(&file, i as u64 + 1, 96, 40));
        capture_blocks(&env, &file, &blocks);
        traces.push(boot_reads(&env.path(&format!("{name}.trace"))));
    }
    let node_a = env.path("node-a");
    let yolos: Vec<String> = names
        .iter()
        .map(|n| env.path(&format!("{n}.yolo")).display().to_string())
        .collect();
    let run = |store: &Path, args: &[&str]| {
        let out = Command::new(BIN)
            .arg("--store")
            .arg(store)
            .args(args)
            .output()
            .expect("run yolo-store");
        assert!(
            out.status.success(),
            "yolo-store {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut import = vec!["import"];
    import.extend(yolos.iter().map(String::as_str));
    run(&node_a, &import);
    run(&node_a, &["push", "--remote", &url]);
    // Distinct chunks of both boot images (4 KiB fixed chunks, one per
    // block): what node B must fetch, each once.
    let distinct: std::collections::HashSet<&[u8]> = data
        .iter()
        .flat_map(|d| {
            blocks.iter().map(move |&b| {
                let start = b as usize * 4096;
                &d[start..(start + 4096).min(d.len())]
            })
        })
        .collect();
    let distinct = distinct.len() as u64;

    // Node B: nothing in its store. Its mount reads the remote through the
    // relay and serves both boot images from it.
    let relay = Relay::start();
    let endpoint = relay.endpoint();
    let point = tempfile::tempdir().expect("tempdir");
    let remote_args = ["--remote", url.as_str(), "--endpoint", endpoint.as_str()];
    let mount = Mount::start(
        &env,
        "mount",
        &images,
        &point.path().join("b"),
        &remote_args,
    );
    wait_remote_ready(&mount, 2);
    for (i, name) in names.iter().enumerate() {
        replay(&mount, name, &traces[i], &data[i]);
    }
    let status = mount.status();
    let r = remote(&mount);
    assert_eq!(
        n(&status, "bytes_from_file"),
        0,
        "every boot read came from the boot image: {status}"
    );
    assert!(n(&status, "bytes_from_store") > 0, "{status}");
    assert!(n(&r, "chunks_fetched") > 0, "{r}");
    assert_eq!(n(&r, "fallbacks"), 0, "{r}");
    assert_eq!(n(&r, "bad_chunks"), 0, "{r}");
    // Both boot images are stored once their chunks have all arrived
    // (the preload fetches what the reads did not), each chunk fetched once.
    wait_for(&mount, "both stored", |s| {
        s["remote"]["boot_images_stored"] == 2
    });
    let r = remote(&mount);
    assert_eq!(
        n(&r, "chunks_fetched"),
        distinct,
        "each chunk fetched once: {r}"
    );
    println!("node B's first mount: {r}");
    mount.unmount();

    // Now local: B's store verifies, a pull moves nothing, and a mount
    // without --remote serves the same reads from the store alone.
    let node_b = env.store();
    assert!(run(&node_b, &["verify"]).contains("clean"));
    let pulled: serde_json::Value =
        serde_json::from_str(&run(&node_b, &["pull", "--remote", &url, "--json"]))
            .expect("pull JSON");
    assert_eq!(
        pulled["unchanged"].as_array().map(Vec::len),
        Some(2),
        "{pulled}"
    );
    assert_eq!(n(&pulled, "downloaded_bytes"), 0, "{pulled}");
    let mount = Mount::start(&env, "mount", &images, &point.path().join("b2"), &[]);
    mount.wait_verified();
    for (i, name) in names.iter().enumerate() {
        replay(&mount, name, &traces[i], &data[i]);
    }
    let status = mount.status();
    assert_eq!(n(&status, "bytes_from_file"), 0, "{status}");
    assert!(n(&status, "bytes_from_store") > 0, "{status}");
    mount.unmount();

    // Node C, also empty: its mount reads the remote's manifests and
    // checks them, then the remote stalls (accepts, never answers) and
    // later refuses connections. Every read is still exact, from the
    // file, and counted.
    let node_c = Env::new();
    let relay = Relay::start();
    let endpoint = relay.endpoint();
    let metrics = {
        let free = TcpListener::bind("127.0.0.1:0").expect("a free port");
        free.local_addr().expect("address").to_string()
    };
    let mut args = vec!["--remote", url.as_str(), "--endpoint", endpoint.as_str()];
    args.extend(["--remote-timeout", "500", "--metrics", metrics.as_str()]);
    let mount = Mount::start(&node_c, "mount", &images, &point.path().join("c"), &args);
    wait_remote_ready(&mount, 2);
    relay.set(STALL);
    replay(&mount, names[0], &traces[0], &data[0]);
    let r = remote(&mount);
    let status = mount.status();
    assert!(n(&r, "fallbacks") > 0, "{r}");
    assert!(n(&r, "get_failures") > 0, "{r}");
    assert!(n(&status, "bytes_from_file") > 0, "{status}");
    assert_eq!(n(&r, "boot_images_stored"), 0, "{r}");
    let metrics_fallbacks = n(&r, "fallbacks");
    // The same counters for Prometheus.
    let scrape = scrape(&metrics);
    let line = scrape
        .lines()
        .find(|l| l.starts_with("yolo_remote_fallbacks_total "))
        .unwrap_or_else(|| panic!("no remote fallbacks in the scrape:\n{scrape}"));
    let scraped: u64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a count");
    assert!(scraped >= metrics_fallbacks && scraped > 0, "{line}");

    // Refused: after the remote's pause (reads skip it meanwhile) the next
    // fetch finds nothing listening.
    relay.set(REFUSE);
    std::thread::sleep(Duration::from_secs(11));
    replay(&mount, names[1], &traces[1], &data[1]);
    let r = remote(&mount);
    assert!(n(&r, "fallbacks") > metrics_fallbacks, "{r}");
    assert_eq!(n(&r, "boot_images_stored"), 0, "{r}");

    // Back: an open after the pause fetches what is missing and stores it.
    relay.set(FORWARD);
    std::thread::sleep(Duration::from_secs(11));
    wait_for(&mount, "stored once the remote is back", |s| {
        replay(&mount, names[0], &traces[0][..1], &data[0]);
        replay(&mount, names[1], &traces[1][..1], &data[1]);
        s["remote"]["boot_images_stored"] == 2
    });
    mount.unmount();
    drop(ceph);
}
