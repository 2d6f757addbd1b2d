//! Real guests through the mount while its server dies (issue 13): two
//! QEMU VMs (TCG) of the demo's family boot from a mount and then read a
//! second drive in a loop, printing each pass's checksum on their serial
//! console, while the server process is SIGKILLed 20 times (some during
//! the boot) and swapped 4 times by `mount --upgrade`. Then both VMs are
//! handed off to the plain files, the mount is unmounted, and they read on.
//!
//! Needs root, fuse3, qemu-system-x86 and the family of
//! `scripts/vmi-family.sh` (built here if missing, which takes minutes and
//! the network; CI keeps it in /var/tmp). `benches/guest-kills.sh` runs
//! the long form; these knobs size it:
//! - `YOLO_GUEST_KILLS` (20): SIGKILLs of the server, in total;
//! - `YOLO_GUEST_UPGRADES` (4): `mount --upgrade` swaps among them;
//! - `YOLO_GUEST_READ_MIB` (256): how much of the VMI the second drive
//!   shows (its overlay is made that small), read whole on every pass;
//! - `YOLO_GUEST_PASSES` (3): passes each guest completes before handoff;
//! - `YOLO_GUEST_LIMIT_S` (600): how long a guest may take to boot or to
//!   finish its passes before the test fails (liveness, not speed).

mod common;
#[path = "../src/qmp.rs"]
#[allow(dead_code)]
mod qmp;

use std::fs;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{kill, noise, succeed, Env, Mount};
use qmp::Qmp;
use serde_json::{json, Value};

/// The VMIs the two guests boot (one each), from the demo's family.
const VMIS: [&str; 2] = ["base.qcow2", "web.qcow2"];

/// What a guest's console must never show.
const IO_ERRORS: [&str; 7] = [
    "I/O error",
    "EXT4-fs error",
    "blk_update_request",
    "Buffer I/O",
    "Input/output error",
    "dd:",
    "YOLO-LOOP-FAILED",
];

/// Read latency histogram boundaries for the guests' disks, in ms.
const BOUNDS_MS: [u64; 20] = [
    1, 2, 5, 10, 20, 50, 100, 150, 200, 300, 400, 500, 700, 1000, 1500, 2000, 3000, 5000, 10000,
    30000,
];

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
        })
        .unwrap_or(default)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn run(cmd: &str, args: &[&str]) -> String {
    String::from_utf8_lossy(&succeed(Command::new(cmd).args(args)).stdout).into_owned()
}

/// The family's directory, built by scripts/vmi-family.sh if incomplete.
fn family() -> PathBuf {
    let dir = PathBuf::from(
        std::env::var("YOLO_FAMILY").unwrap_or_else(|_| "/var/tmp/yolo-family".into()),
    );
    let complete = || {
        VMIS.iter()
            .chain(&["vmlinuz", "initrd.img"])
            .all(|f| dir.join(f).is_file())
    };
    if !complete() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/vmi-family.sh");
        eprintln!("building the VMI family in {} (minutes)", dir.display());
        let status = Command::new(&script)
            .arg(&dir)
            .status()
            .expect("vmi-family.sh");
        assert!(status.success() && complete(), "vmi-family.sh failed");
    }
    dir
}

/// Puts a boot image of each VMI in the store: the one the demo recorded
/// from a real boot if there is one, else one of the VMI's first 32 MiB
/// (the guests still boot through the mount, mostly from the file).
/// `YOLO_GUEST_BOOT_IMAGES` names another directory of recorded ones.
fn boot_images(env: &Env, family: &Path) {
    for name in VMIS {
        let recorded = Path::new(
            &std::env::var("YOLO_GUEST_BOOT_IMAGES")
                .unwrap_or_else(|_| "/var/tmp/yolo-demo/boot-images".into()),
        )
        .join(format!("{name}.yolo"));
        let yolo = env.path(&format!("{name}.yolo"));
        // A copy: the demo may rewrite its own while this runs.
        if recorded.is_file()
            && fs::copy(&recorded, &yolo).is_ok()
            && env.run(&["import", s(&yolo)]).status.success()
        {
            continue;
        }
        let trace = env.path(&format!("{name}.trace"));
        fs::write(&trace, format!("0 {}\n", 32 << 20)).unwrap();
        env.ok(&[
            "capture",
            "--trace",
            s(&trace),
            s(&family.join(name)),
            "-o",
            s(&yolo),
        ]);
        env.ok(&["import", s(&yolo)]);
    }
}

/// The guest's side, on a drive of its own (`/bin/sh` reads the script
/// from the block device). kernel-command-line.service runs it; it starts
/// the loop as a service of its own so the boot goes on to its marker,
/// and the loop waits for multi-user.target before it reads.
const GUEST_SCRIPT: &str = r#"#!/bin/sh
if [ "$1" != loop ]; then exec systemd-run --unit=yolo-loop --no-block /bin/sh "$0" loop; fi
until systemctl is-active -q multi-user.target; do sleep 1; done
pass=0
while :; do
    pass=$((pass + 1))
    t0=$(cut -d' ' -f1 /proc/uptime)
    sum=$(dd if=/dev/disk/by-id/virtio-yolo-data bs=1M iflag=direct status=none 2>/dev/ttyS0 | cksum) || echo YOLO-LOOP-FAILED > /dev/ttyS0
    t1=$(cut -d' ' -f1 /proc/uptime)
    echo "YOLO-PASS $pass $sum $t0 $t1" > /dev/ttyS0
done
"#;

fn guest_script(env: &Env) -> PathBuf {
    let path = env.path("guest-loop.img");
    let mut bytes = GUEST_SCRIPT.as_bytes().to_vec();
    // Whole sectors, and enough of them that the kernel's partition
    // probes find no end of device to complain about.
    bytes.resize(64 << 10, b'\n');
    fs::write(&path, bytes).unwrap();
    path
}

/// One guest: QEMU with its root and data overlays backed by the mount.
struct Vm {
    name: String,
    child: Child,
    serial: PathBuf,
    socket: PathBuf,
    qmp: Option<Qmp>,
}

impl Vm {
    fn start(env: &Env, family: &Path, mount: &Mount, vmi: &str, script: &Path) -> Vm {
        let name = vmi.trim_end_matches(".qcow2").to_string();
        let backing = mount.file(vmi);
        let root = env.path(&format!("{name}-root.qcow2"));
        let data = env.path(&format!("{name}-data.qcow2"));
        let read_mib = knob("YOLO_GUEST_READ_MIB", 256);
        for (overlay, size) in [(&root, None), (&data, Some(format!("{read_mib}M")))] {
            let mut args = vec!["create", "-q", "-f", "qcow2", "-F", "qcow2"];
            args.extend(["-b", s(&backing), s(overlay)]);
            args.extend(size.as_deref());
            run("qemu-img", &args);
        }
        let socket = env.path(&format!("{name}.qmp"));
        let serial = env.path(&format!("{name}.serial"));
        // Every read of the mount's file goes to the server (O_DIRECT),
        // none is answered from the host's page cache.
        let chain = |prefix: &str, overlay: &Path| {
            vec![
                format!(
                    "driver=file,node-name={prefix}-base-file,filename={},read-only=on,cache.direct=on",
                    s(&backing)
                ),
                format!("driver=qcow2,node-name={prefix}-base,file={prefix}-base-file,read-only=on"),
                format!("driver=file,node-name={prefix}-top-file,filename={}", s(overlay)),
                format!(
                    "driver=qcow2,node-name={prefix}-top,file={prefix}-top-file,backing={prefix}-base"
                ),
            ]
        };
        let mut blockdevs = chain("root", &root);
        blockdevs.extend(chain("data", &data));
        blockdevs.push(format!(
            "driver=file,node-name=loop,filename={},read-only=on",
            s(script)
        ));
        let append = "root=/dev/vda ro console=ttyS0 quiet fsck.mode=skip \
            systemd.unit=multi-user.target systemd.wants=kernel-command-line.service \
            systemd.run=\"/bin/sh /dev/disk/by-id/virtio-yolo-loop\" \
            systemd.run_success_action=none systemd.run_failure_action=none \
            systemd.mask=poweroff.target";
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-machine", "q35,accel=tcg", "-cpu", "max", "-m", "1024"])
            .args(["-smp", "1", "-nographic", "-no-reboot", "-nic", "none"])
            .args(["-kernel", s(&family.join("vmlinuz"))])
            .args(["-initrd", s(&family.join("initrd.img"))])
            .args(["-append", append])
            .args(["-qmp", &format!("unix:{},server=on,wait=off", s(&socket))]);
        for spec in blockdevs {
            cmd.args(["-blockdev", &spec]);
        }
        cmd.args(["-device", "virtio-blk-pci,id=root,drive=root-top"])
            .args([
                "-device",
                "virtio-blk-pci,id=data,drive=data-top,serial=yolo-data",
            ])
            .args([
                "-device",
                "virtio-blk-pci,id=loop,drive=loop,serial=yolo-loop",
            ]);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(fs::File::create(&serial).unwrap())
            .stderr(fs::File::create(env.path(&format!("{name}.qemu-log"))).unwrap())
            .spawn()
            .expect("qemu-system-x86_64");
        let mut vm = Vm {
            name,
            child,
            serial,
            socket,
            qmp: None,
        };
        // The guest's read latency, as its disks see it.
        let bounds: Vec<u64> = BOUNDS_MS.iter().map(|ms| ms * 1_000_000).collect();
        for dev in ["root", "data"] {
            vm.qmp()
                .execute(
                    "block-latency-histogram-set",
                    json!({ "id": format!("/machine/peripheral/{dev}/virtio-backend"), "boundaries-read": bounds }),
                )
                .unwrap();
        }
        vm
    }

    fn qmp(&mut self) -> &mut Qmp {
        for _ in 0..500 {
            if self.qmp.is_some() {
                break;
            }
            match Qmp::connect(&self.socket) {
                Ok(q) => self.qmp = Some(q),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        self.qmp
            .as_mut()
            .expect("QEMU's QMP socket did not come up")
    }

    fn console(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    fn booted(&self) -> bool {
        self.console().contains("YOLO-BOOT-COMPLETE")
    }

    /// The checksums ("CRC SIZE") of the passes printed so far.
    fn passes(&self) -> Vec<String> {
        self.timed_passes()
            .into_iter()
            .map(|(sum, _)| sum)
            .collect()
    }

    /// Each pass's checksum and how long it took, in the guest's seconds.
    fn timed_passes(&self) -> Vec<(String, f64)> {
        self.console()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("YOLO-PASS "))
            .filter_map(|rest| {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
                let seconds = t(4).zip(t(3)).map_or(f64::NAN, |(b, a)| b - a);
                (f.len() >= 3).then(|| (format!("{} {}", f[1], f[2]), seconds))
            })
            .collect()
    }

    fn errors(&self) -> Vec<String> {
        self.console()
            .lines()
            .filter(|l| IO_ERRORS.iter().any(|e| l.contains(e)))
            .map(str::to_string)
            .collect()
    }

    /// Fails with the console's tail unless `what` holds within `limit`
    /// (a liveness bound: a guest that stops reading would hang the test).
    fn wait_for(&mut self, what: &str, limit: Duration, cond: impl Fn(&Vm) -> bool) {
        let start = Instant::now();
        while !cond(self) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{}: QEMU exited ({status}) before {what}:\n{}",
                    self.name,
                    self.tail()
                );
            }
            assert!(
                start.elapsed() < limit,
                "{}: no {what} after {limit:?}:\n{}",
                self.name,
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn tail(&self) -> String {
        let console = self.console();
        let lines: Vec<&str> = console.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Per guest disk: failed reads and the histogram of read latencies.
    fn disk_stats(&mut self) -> Vec<(String, u64, Vec<u64>)> {
        let stats = self.qmp().execute("query-blockstats", json!({})).unwrap();
        stats
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| {
                let qdev = d["qdev"].as_str()?;
                let dev = ["root", "data"]
                    .into_iter()
                    .find(|n| qdev.contains(&format!("/{n}/")))?;
                let st = &d["stats"];
                let failed = st["failed_rd_operations"].as_u64().unwrap_or(0)
                    + st["invalid_rd_operations"].as_u64().unwrap_or(0);
                let bins = st["rd_latency_histogram"]["bins"]
                    .as_array()
                    .map(|b| b.iter().filter_map(Value::as_u64).collect())
                    .unwrap_or_default();
                Some((dev.to_string(), failed, bins))
            })
            .collect()
    }

    fn handoff(&mut self, bin: &Path, images: &Path) -> String {
        // QEMU serves one QMP client at a time.
        drop(self.qmp.take());
        let out = succeed(Command::new(bin).args([
            "handoff",
            "--qmp",
            s(&self.socket),
            "--images",
            s(images),
        ]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// "between A and B ms" for the highest non-empty histogram bin.
fn longest(bins: &[u64]) -> String {
    match bins.iter().rposition(|&n| n > 0) {
        None => "no reads".into(),
        Some(0) => format!("under {} ms", BOUNDS_MS[0]),
        Some(i) if i >= BOUNDS_MS.len() => format!("over {} ms", BOUNDS_MS[BOUNDS_MS.len() - 1]),
        Some(i) => format!("{}-{} ms", BOUNDS_MS[i - 1], BOUNDS_MS[i]),
    }
}

/// What the host's own reader saw through the mount.
#[derive(Default)]
struct HostReads {
    stop: AtomicBool,
    done: AtomicBool,
    reads: AtomicU64,
    longest_us: AtomicU64,
    errors: Mutex<Vec<String>>,
}

/// Reads random 128 KiB ranges of the VMIs through the mount (O_DIRECT, so
/// the server answers each) and compares them with the files, until `stop`.
fn host_reader(point: &Path, family: &Path, seen: &HostReads) {
    let mut files = Vec::new();
    for name in VMIS {
        let through = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(point.join(name));
        let plain = fs::File::open(family.join(name));
        match (through, plain) {
            (Ok(t), Ok(p)) => {
                let len = p.metadata().map(|m| m.len()).unwrap_or(0);
                files.push((name, t, p, len));
            }
            (t, p) => {
                return seen.errors.lock().unwrap().push(format!(
                    "open {name}: {:?} {:?}",
                    t.err(),
                    p.err()
                ))
            }
        }
    }
    // 4 KiB-aligned for O_DIRECT.
    let mut buf = vec![0u64; (128 << 10) / 8];
    let mut want = vec![0u8; 128 << 10];
    let mut i = 0u64;
    while !seen.stop.load(Ordering::Relaxed) {
        let (name, through, plain, len) = &files[(i % 2) as usize];
        let r = noise(i, 8).iter().fold(0u64, |a, b| a << 8 | u64::from(*b));
        let offset = (r % (len / 4096)) * 4096;
        // SAFETY: the u64 buffer viewed as bytes, same length.
        let got_buf =
            unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), buf.len() * 8) };
        let start = Instant::now();
        let got = through.read_at(got_buf, offset);
        seen.longest_us
            .fetch_max(start.elapsed().as_micros() as u64, Ordering::Relaxed);
        let expected = plain.read_at(&mut want, offset);
        match (got, expected) {
            (Ok(g), Ok(e)) if g == e && got_buf[..g] == want[..e] => {}
            (g, e) => {
                return seen.errors.lock().unwrap().push(format!(
                    "{name} at {offset}: mount {g:?}, file {e:?} (or bytes differ)"
                ))
            }
        }
        seen.reads.fetch_add(1, Ordering::Relaxed);
        i += 1;
        // Leave the CPU to the guests.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The supervisor's account of each takeover, and the longest.
fn report_takeovers(log: &str) {
    let mut longest = 0f64;
    for line in log.lines().filter(|l| l.contains("took over")) {
        let ms = line
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .find(|w| w[1] == "ms")
            .and_then(|w| w[0].trim_start_matches('(').parse::<f64>().ok());
        longest = longest.max(ms.unwrap_or(0.0));
    }
    eprintln!(
        "supervisor: {} takeovers, longest {longest:.1} ms without a server",
        log.matches("took over").count()
    );
}

/// Kills the supervisor's children (its server) when dropped. A failing
/// test drops the mount, which kills only the supervisor; a server left
/// alone would keep the connection, and with it any request it lost, so
/// the test process could not even exit.
struct KillServers(u32);

impl Drop for KillServers {
    fn drop(&mut self) {
        let children = format!("/proc/{0}/task/{0}/children", self.0);
        for pid in fs::read_to_string(children)
            .unwrap_or_default()
            .split_whitespace()
        {
            if let Ok(pid) = pid.parse() {
                kill(pid, libc::SIGKILL);
            }
        }
    }
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn status_u64(mount: &Mount, key: &str) -> u64 {
    // Read on a thread of its own: a lost request must fail the test, not
    // hang it.
    let (tx, rx) = std::sync::mpsc::channel();
    let path = mount.file(".yolo-status");
    std::thread::spawn(move || {
        let _ = tx.send(fs::read(path));
    });
    let body = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => panic!("reading the status file: {e}"),
        Err(_) => {
            panic!("reading the status file has not returned for a minute: a request was lost")
        }
    };
    let status: Value = serde_json::from_slice(&body).expect("status JSON");
    status[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {status}"))
}

/// The host's checksum of what the guest's data drive shows: the first
/// `YOLO_GUEST_READ_MIB` MiB of the VMI, read from the plain file.
fn expected_checksum(env: &Env, vmi: &Path) -> String {
    let raw = env.path("expected.raw");
    let mib = knob("YOLO_GUEST_READ_MIB", 256);
    run(
        "qemu-img",
        &[
            "dd",
            "-U",
            "-f",
            "qcow2",
            "-O",
            "raw",
            "bs=1M",
            &format!("count={mib}"),
            &format!("if={}", s(vmi)),
            &format!("of={}", s(&raw)),
        ],
    );
    let out = run("cksum", &[s(&raw)]);
    fs::remove_file(&raw).unwrap();
    let f: Vec<&str> = out.split_whitespace().collect();
    format!("{} {}", f[0], f[1])
}

#[test]
fn guests_read_exact_bytes_through_server_kills_upgrades_and_a_handoff() {
    let family = family();
    let env = Env::new();
    boot_images(&env, &family);
    let expected: Vec<String> = VMIS
        .iter()
        .map(|v| expected_checksum(&env, &family.join(v)))
        .collect();
    let script = guest_script(&env);
    // The mount runs a copy of the binary that upgrades replace.
    let (mount, bin) = Mount::start_upgradable(&env, &family, &env.path("mnt"), &[]);
    let supervisor = mount.pid();
    // Dropped before the mount: on a failure, the server dies with it.
    let _servers = KillServers(supervisor);
    let kills = knob("YOLO_GUEST_KILLS", 20);
    let upgrades = knob("YOLO_GUEST_UPGRADES", 4);
    let passes = knob("YOLO_GUEST_PASSES", 3) as usize;
    // Liveness bounds, generous: a TCG boot on a busy machine takes minutes.
    let boot_limit = Duration::from_secs(knob("YOLO_GUEST_LIMIT_S", 600));

    let mut vms: Vec<Vm> = VMIS
        .iter()
        .map(|v| Vm::start(&env, &family, &mount, v, &script))
        .collect();
    let started = Instant::now();
    let host = Arc::new(HostReads::default());
    let mut during_boot = 0u64;
    // Not a scoped thread: a read lost in a takeover never returns, and
    // the test must then fail, not wait for it.
    std::thread::spawn({
        let (point, family, host) = (mount.point.clone(), family.clone(), host.clone());
        move || {
            host_reader(&point, &family, &host);
            host.done.store(true, Ordering::Relaxed);
        }
    });
    {
        let _stop = StopOnDrop(&host.stop);
        // Disruptions at random moments: the first half spread over the
        // boot (2 to 6 s apart), the rest while the guests read (0.5 to 3 s).
        let total = kills + upgrades;
        let delays = noise(13, total as usize);
        let (mut killed, mut upgraded) = (0u64, 0u64);
        for (i, d) in delays.iter().enumerate() {
            let i = i as u64;
            if i < total / 2 {
                std::thread::sleep(Duration::from_millis(2000 + u64::from(*d) * 16));
            } else {
                if i == total / 2 {
                    for vm in &mut vms {
                        vm.wait_for("boot marker", boot_limit, Vm::booted);
                    }
                }
                std::thread::sleep(Duration::from_millis(500 + u64::from(*d) * 10));
            }
            if !vms.iter().all(Vm::booted) {
                during_boot += 1;
            }
            // Upgrades spread among the kills.
            if upgraded < upgrades && (i + 1).is_multiple_of((total / upgrades.max(1)).max(1)) {
                mount.upgrade(&bin);
                upgraded += 1;
                assert_eq!(status_u64(&mount, "server_upgrades"), upgraded);
            } else if killed < kills {
                let server = status_u64(&mount, "server_pid") as u32;
                assert_ne!(server, supervisor);
                kill(server, libc::SIGKILL);
                killed += 1;
                // The status file is read through the mount: it answers
                // once the next server serves.
                while status_u64(&mount, "server_restarts") < killed {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        assert_eq!((killed, upgraded), (kills, upgrades));
        // Each guest finishes its passes; the last ones read after the
        // last disruption.
        for vm in &mut vms {
            vm.wait_for("passes", boot_limit, |vm| vm.passes().len() >= passes);
        }
    }
    for _ in 0..600 {
        if host.done.load(Ordering::Relaxed) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        host.done.load(Ordering::Relaxed),
        "a host read through the mount has not returned for a minute: a request was lost"
    );
    let disrupted = started.elapsed();
    assert_eq!(status_u64(&mount, "server_restarts"), kills);
    assert_eq!(status_u64(&mount, "supervisor_pid") as u32, supervisor);
    let host_errors = host.errors.lock().unwrap().clone();
    assert!(host_errors.is_empty(), "{host_errors:?}");
    assert!(host.reads.load(Ordering::Relaxed) > 0);
    eprintln!(
        "{kills} kills and {upgrades} upgrades in {:.0} s, {during_boot} of them during the boot; host: {} reads through the mount, all exact, longest {:.1} ms",
        disrupted.as_secs_f64(),
        host.reads.load(Ordering::Relaxed),
        host.longest_us.load(Ordering::Relaxed) as f64 / 1000.0
    );
    assert!(
        during_boot >= 2 || kills + upgrades == 0,
        "only {during_boot} disruptions during the boot"
    );
    for vm in &mut vms {
        for (dev, failed, bins) in vm.disk_stats() {
            eprintln!(
                "{} {dev}: longest read {} (histogram {bins:?})",
                vm.name,
                longest(&bins)
            );
            assert_eq!(failed, 0, "{} {dev}: failed reads", vm.name);
        }
    }

    // Handoff: both guests move to the plain files, then the mount goes
    // away entirely, and the guests read on.
    for vm in &mut vms {
        let out = vm.handoff(&bin, &family);
        assert_eq!(out.matches("now reads").count(), 2, "{out}");
    }
    let reads = status_u64(&mount, "reads");
    let handed_off: Vec<usize> = vms.iter().map(|vm| vm.passes().len()).collect();
    for (vm, n) in vms.iter_mut().zip(&handed_off) {
        vm.wait_for("a pass after handoff", boot_limit, |vm| {
            vm.passes().len() > *n
        });
    }
    assert_eq!(status_u64(&mount, "reads"), reads, "the mount still serves");
    let unmounted = mount.unmount();
    assert!(unmounted.status.success());
    report_takeovers(&String::from_utf8_lossy(&unmounted.stderr));
    let before: Vec<usize> = vms.iter().map(|vm| vm.passes().len()).collect();
    for (vm, n) in vms.iter_mut().zip(&before) {
        vm.wait_for("2 passes after the unmount", boot_limit, |vm| {
            vm.passes().len() >= n + 2
        });
    }

    for ((vm, want), n) in vms.iter_mut().zip(&expected).zip(&handed_off) {
        let passes = vm.passes();
        eprintln!("{}: {} passes, checksums {passes:?}", vm.name, passes.len());
        // Whole passes before (under disruptions) and after handoff.
        let timed = vm.timed_passes();
        let mib = knob("YOLO_GUEST_READ_MIB", 256) as f64;
        let rate = |p: &[(String, f64)]| {
            let secs: Vec<String> = p.iter().map(|(_, s)| format!("{s:.1}")).collect();
            format!("{} s per {mib} MiB pass", secs.join(", "))
        };
        eprintln!(
            "{}: through the mount {}; after handoff {}",
            vm.name,
            rate(&timed[..*n]),
            rate(&timed[(*n + 1).min(timed.len())..])
        );
        assert!(vm.booted());
        assert!(
            passes.iter().all(|p| p == want),
            "{}: checksums {passes:?}, the file's {want}",
            vm.name
        );
        let errors = vm.errors();
        assert!(errors.is_empty(), "{}: {errors:?}", vm.name);
        for (dev, failed, _) in vm.disk_stats() {
            assert_eq!(failed, 0, "{} {dev}: failed reads", vm.name);
        }
        let _ = vm.qmp().execute("quit", json!({}));
    }
}
