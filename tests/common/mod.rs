//! Helpers shared by the integration tests: run the real binary against a
//! real store in a temporary directory, and make VMI-like files.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_yolo-store");

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn store(&self) -> PathBuf {
        self.path("store")
    }

    /// Runs `yolo-store --store STORE ARGS...`.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--store")
            .arg(self.store())
            .args(args)
            .output()
            .expect("run yolo-store")
    }

    /// Runs and asserts success, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "yolo-store {args:?} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs and asserts failure, returning stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "yolo-store {args:?} succeeded but should not have:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).expect("JSON output")
    }
}

/// Runs `command` and asserts that it succeeded (its stderr in the
/// message); returns its output.
pub fn succeed(command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    succeeded(out, &format!("{command:?}"))
}

/// Asserts that the process `what` that gave `out` succeeded (its stderr
/// in the message); returns `out`.
fn succeeded(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} exited with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Installs a new copy of the binary at `bin` (a new file renamed over the
/// old one, as a package manager does).
pub fn install_new_copy(bin: &Path, env: &Env) {
    let tmp = env.path("bin/.yolo-store.new");
    std::fs::copy(BIN, &tmp).expect("copy the binary");
    std::fs::rename(&tmp, bin).expect("install the copy");
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no seed file.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A VMI-like file: `shared` blocks common to every variant (the base OS),
/// then blocks unique to `variant`, with some compressible text mixed in.
pub fn vmi(path: &Path, variant: u64, shared_blocks: usize, own_blocks: usize) -> Vec<u8> {
    let mut data = Vec::new();
    for b in 0..shared_blocks {
        if b % 3 == 0 {
            data.extend(
                format!("base os config line {b}\n")
                    .repeat(200)
                    .bytes()
                    .take(4096),
            );
        } else {
            data.extend(noise(b as u64, 4096));
        }
    }
    data.extend(noise(1000 + variant, own_blocks * 4096 + 1234));
    std::fs::write(path, &data).expect("write vmi");
    data
}

/// A trace touching `blocks` (4 KiB) of a file in the given order, with
/// unaligned offsets and lengths so block rounding is exercised.
pub fn trace(path: &Path, blocks: &[u64]) {
    let mut text = String::from("# test trace\n");
    for (i, b) in blocks.iter().enumerate() {
        let offset = b * 4096 + (i as u64 * 37) % 4000;
        text.push_str(&format!("{offset} {}\n", 1 + (i * 101) % 90));
    }
    std::fs::write(path, text).expect("write trace");
}

/// A running `yolo-store mount` or `record` process, unmounted on drop.
pub struct Mount {
    pub point: PathBuf,
    child: Option<std::process::Child>,
}

impl Mount {
    /// Starts `yolo-store --store STORE VERB --images IMAGES POINT ARGS...`
    /// and waits until the mount answers.
    pub fn start(env: &Env, verb: &str, images: &Path, point: &Path, args: &[&str]) -> Mount {
        Mount::start_with(Path::new(BIN), env, verb, images, point, args)
    }

    /// `yolo-store mount` run from a copy of the binary at `env`'s
    /// `bin/yolo-store`, which upgrades may replace ([`install_new_copy`],
    /// [`Mount::upgrade`]); returns the mount and the copy's path.
    pub fn start_upgradable(
        env: &Env,
        images: &Path,
        point: &Path,
        args: &[&str],
    ) -> (Mount, PathBuf) {
        let bin = env.path("bin/yolo-store");
        std::fs::create_dir_all(env.path("bin")).expect("bin directory");
        std::fs::copy(BIN, &bin).expect("copy the binary");
        let mount = Mount::start_with(&bin, env, "mount", images, point, args);
        (mount, bin)
    }

    /// [`Mount::start`] with the yolo-store binary at `bin`.
    pub fn start_with(
        bin: &Path,
        env: &Env,
        verb: &str,
        images: &Path,
        point: &Path,
        args: &[&str],
    ) -> Mount {
        std::fs::create_dir_all(point).expect("mountpoint");
        let child = Command::new(bin)
            .arg("--store")
            .arg(env.store())
            .arg(verb)
            .arg("--images")
            .arg(images)
            .arg(point)
            .args(args)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn mount");
        let mut mount = Mount {
            point: point.to_path_buf(),
            child: Some(child),
        };
        for _ in 0..500 {
            if mount.point.join(".yolo-status").exists() && mount.ready(verb) {
                return mount;
            }
            if let Some(status) = mount
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let out = mount
                    .child
                    .take()
                    .expect("child")
                    .wait_with_output()
                    .expect("output");
                panic!(
                    "mount exited with {status}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("mount at {} did not come up", point.display());
    }

    /// A serving mount is ready once the identities of its VMIs are known
    /// (it hashes them in the background at start); a record mount at once.
    fn ready(&self, verb: &str) -> bool {
        verb != "mount" || self.status()["startup_verification_done"] == true
    }

    /// Waits until no file's identity is being hashed.
    pub fn wait_verified(&self) {
        for _ in 0..500 {
            if self.status()["identities_pending"] == 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("identities still pending: {}", self.status());
    }

    /// Kills the daemon with SIGKILL (no cleanup runs), its server process
    /// too, then detaches the dead mount.
    pub fn kill_hard(mut self) -> u32 {
        let server = self.status()["server_pid"].as_u64();
        let mut child = self.child.take().expect("mount running");
        let pid = child.id();
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        if let Some(server) = server {
            kill(server as u32, libc::SIGKILL);
            wait_gone(server as u32);
        }
        let _ = Command::new("umount").arg("-l").arg(&self.point).status();
        pid
    }

    /// `BIN mount --upgrade POINT`: the supervisor hands the connection to
    /// a server that runs the binary now at `bin` (the path it was started
    /// with: each upgrade installs a new file there). Asserts it succeeded.
    pub fn upgrade(&self, bin: &Path) {
        succeed(
            Command::new(bin)
                .args(["mount", "--upgrade"])
                .arg(&self.point),
        );
    }

    /// The supervisor's pid (the `yolo-store mount` process).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("mount running").id()
    }

    /// Waits for the supervisor, after something else ended the mount.
    pub fn wait(mut self) -> Output {
        self.child
            .take()
            .expect("mount running")
            .wait_with_output()
            .expect("mount output")
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.point.join(name)
    }

    /// The mount's counters, from its virtual status file.
    pub fn status(&self) -> serde_json::Value {
        let body = std::fs::read(self.point.join(".yolo-status")).expect("status file");
        serde_json::from_slice(&body).expect("status JSON")
    }

    /// Unmounts with `umount` (as an operator would) and returns the
    /// process's output once it has exited.
    pub fn unmount(mut self) -> Output {
        self.stop()
    }

    fn stop(&mut self) -> Output {
        let Some(child) = self.child.take() else {
            panic!("mount already stopped");
        };
        let status = Command::new("umount")
            .arg(&self.point)
            .status()
            .expect("umount");
        assert!(status.success(), "umount {} failed", self.point.display());
        succeeded(child.wait_with_output().expect("mount output"), "mount")
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("umount").arg("-l").arg(&self.point).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads `len` bytes at `offset` of `path` with one pread.
pub fn pread(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).expect("open");
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = file
            .read_at(&mut buf[got..], offset + got as u64)
            .expect("pread");
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    buf
}

/// Captures a boot image of `file` holding `blocks` (read in that order)
/// with `yolo-store capture`; returns the `.yolo` path.
pub fn capture_blocks(env: &Env, file: &Path, blocks: &[u64]) -> PathBuf {
    let name = file.file_name().expect("file name").to_string_lossy();
    let trace_path = env.path(&format!("{name}.trace"));
    trace(&trace_path, blocks);
    let out = env.path(&format!("{name}.yolo"));
    env.ok(&[
        "capture",
        "--trace",
        trace_path.to_str().expect("utf-8 path"),
        file.to_str().expect("utf-8 path"),
        "-o",
        out.to_str().expect("utf-8 path"),
    ]);
    out
}

/// The blocks a test "boot" reads from a [`vmi`] with 96 shared and 40 own
/// blocks, in time order: most of the base in a scrambled order, then some
/// of its own blocks backwards, then the short last block.
pub fn boot_blocks() -> Vec<u64> {
    let mut blocks: Vec<u64> = (0..90).map(|i| (i * 7) % 96).collect();
    blocks.extend((96..130).rev());
    blocks.push(136);
    blocks
}

/// Sends `signal` to process `pid`.
pub fn kill(pid: u32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// Waits until process `pid` (not our child) is gone.
pub fn wait_gone(pid: u32) {
    for _ in 0..1000 {
        // A zombie is gone too: its reaper may be slow (or never come).
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return,
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z') =>
            {
                return
            }
            Ok(_) => {}
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("process {pid} is still there");
}

/// A single-node Ceph with its object gateway on 127.0.0.1
/// (scripts/ceph-rgw.sh; `scripts/setup.sh ceph` installs it), stopped on
/// drop (radosgw by SIGKILL, see the script). Each test binary takes ports
/// of its own, so binaries that run at once do not meet.
pub struct Gateway {
    pub dir: PathBuf,
    /// The S3 credentials and endpoint the script exported.
    pub env: Vec<(String, String)>,
}

impl Gateway {
    pub fn start(dir: PathBuf, bucket: &str, rgw_port: u16, mon_port: u16) -> Gateway {
        let out = Command::new(CEPH_SCRIPT)
            .arg("start")
            .arg(&dir)
            .arg(bucket)
            .env("RGW_PORT", rgw_port.to_string())
            .env("MON_PORT", mon_port.to_string())
            .output()
            .expect("run scripts/ceph-rgw.sh");
        let env: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let gateway = Gateway { dir, env };
        assert!(
            out.status.success() && !gateway.env.is_empty(),
            "Ceph did not start (is `scripts/setup.sh ceph` done?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        gateway
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = Command::new(CEPH_SCRIPT)
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

const CEPH_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ceph-rgw.sh");
