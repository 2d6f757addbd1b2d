//! Restarts VMs do not notice (real mount, as root): the server process
//! behind a mount is SIGKILLed or upgraded while readers read, and every
//! read still returns the file's bytes, with no error.

mod common;

use std::fs;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{
    boot_blocks, capture_blocks, install_new_copy, kill, noise, vmi, wait_gone, Env, Mount,
};

/// Two VMIs: one with a boot image in the store, one without (served from
/// its file alone).
fn images(env: &Env) -> (PathBuf, Vec<(String, Vec<u8>)>) {
    let images = env.path("images");
    fs::create_dir_all(&images).unwrap();
    let booted = vmi(&images.join("booted.qcow2"), 1, 96, 40);
    let yolo = capture_blocks(env, &images.join("booted.qcow2"), &boot_blocks());
    env.ok(&["import", yolo.to_str().unwrap()]);
    let plain = noise(77, 3 << 20);
    fs::write(images.join("plain.qcow2"), &plain).unwrap();
    let images = images.canonicalize().unwrap();
    (
        images,
        vec![
            ("booted.qcow2".into(), booted),
            ("plain.qcow2".into(), plain),
        ],
    )
}

/// What the readers saw.
#[derive(Default)]
struct Seen {
    reads: AtomicU64,
    errors: Mutex<Vec<String>>,
    /// The longest single read, in microseconds.
    longest_us: AtomicU64,
}

impl Seen {
    fn error(&self, e: String) {
        self.errors.lock().unwrap().push(e);
    }

    fn timed<T>(&self, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        let us = start.elapsed().as_micros() as u64;
        self.longest_us.fetch_max(us, Ordering::Relaxed);
        self.reads.fetch_add(1, Ordering::Relaxed);
        out
    }
}

/// Reads every VMI whole, again and again until `stop`, comparing each byte:
/// through descriptors opened once (they outlive every server) and through
/// fresh opens. `direct` reads with O_DIRECT, so every read reaches the
/// server, none is answered from the page cache.
fn reader(point: &Path, vmis: &[(String, Vec<u8>)], direct: bool, stop: &AtomicBool, seen: &Seen) {
    let open = |name: &str| {
        let mut o = fs::OpenOptions::new();
        o.read(true);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        o.open(point.join(name))
    };
    let held: Vec<fs::File> = match vmis.iter().map(|(n, _)| open(n)).collect() {
        Ok(files) => files,
        Err(e) => return seen.error(format!("open: {e}")),
    };
    // 4 KiB-aligned, as O_DIRECT may want.
    let mut buf = vec![0u64; (256 << 10) / 8];
    let mut pass = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for (i, (name, data)) in vmis.iter().enumerate() {
            let fresh;
            let file = if pass.is_multiple_of(2) {
                &held[i]
            } else {
                fresh = match seen.timed(|| open(name)) {
                    Ok(f) => f,
                    Err(e) => return seen.error(format!("open {name}: {e}")),
                };
                &fresh
            };
            if !direct {
                // SAFETY: fadvise on an open descriptor.
                unsafe {
                    libc::posix_fadvise(
                        std::os::fd::AsRawFd::as_raw_fd(file),
                        0,
                        0,
                        libc::POSIX_FADV_DONTNEED,
                    )
                };
            }
            // Varying read sizes, unaligned ones through the page cache.
            let step = if direct {
                4096 * (1 + pass as usize % 64)
            } else {
                1000 + (pass as usize * 7919) % (200 << 10)
            };
            let mut offset = 0usize;
            loop {
                // SAFETY: the u64 buffer viewed as bytes, same length.
                let bytes = unsafe {
                    std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), buf.len() * 8)
                };
                let want = step.min(bytes.len());
                let got = match seen.timed(|| file.read_at(&mut bytes[..want], offset as u64)) {
                    Ok(n) => n,
                    Err(e) => return seen.error(format!("{name} at {offset}: {e}")),
                };
                let end = (offset + want).min(data.len());
                if bytes[..got] != data[offset.min(end)..end] {
                    return seen.error(format!(
                        "{name} at {offset}+{want}: wrong bytes ({got} read)"
                    ));
                }
                if got == 0 {
                    break;
                }
                offset += got;
            }
            if offset != data.len() {
                return seen.error(format!("{name}: {offset} bytes, not {}", data.len()));
            }
        }
        pass += 1;
    }
}

/// Runs two readers (O_DIRECT and buffered) while `disrupt` runs, then
/// stops them and returns what they saw.
fn read_during(mount: &Mount, vmis: &[(String, Vec<u8>)], disrupt: impl FnOnce()) -> Seen {
    let seen = Seen::default();
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    std::thread::scope(|s| {
        for direct in [true, false] {
            let (seen, stop, done) = (&seen, &stop, &done);
            s.spawn(move || {
                reader(&mount.point, vmis, direct, stop, seen);
                done.fetch_add(1, Ordering::Relaxed);
            });
        }
        disrupt();
        stop.store(true, Ordering::Relaxed);
        // A read lost in a takeover never returns, and a thread stuck in
        // the kernel cannot be joined: after a minute, fail loudly instead
        // of hanging (a liveness bound, not a speed check).
        for _ in 0..6000 {
            if done.load(Ordering::Relaxed) == 2 {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("a reader has waited over a minute for a read: a request was lost");
        std::process::abort();
    });
    seen
}

fn status_u64(mount: &Mount, key: &str) -> u64 {
    let status = mount.status();
    status[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {status}"))
}

/// The supervisor's own account of each takeover, from its log.
fn report_takeovers(out: &std::process::Output) {
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        if line.contains("took over") {
            eprintln!("{line}");
        }
    }
}

fn report(what: &str, seen: &Seen) {
    // A measurement, not asserted: docs/benchmarks.md, *Takeover stall*.
    eprintln!(
        "{what}: {} reads, longest single read {:.1} ms",
        seen.reads.load(Ordering::Relaxed),
        seen.longest_us.load(Ordering::Relaxed) as f64 / 1000.0
    );
}

#[test]
fn readers_see_exact_bytes_while_the_server_is_killed_twelve_times() {
    let env = Env::new();
    let (images, vmis) = images(&env);
    let mount = Mount::start(&env, "mount", &images, &env.path("mnt"), &[]);
    let supervisor = mount.pid();
    let kills = 12;
    let delays = noise(5, kills);
    let seen = read_during(&mount, &vmis, || {
        for (i, d) in delays.iter().enumerate() {
            // A random moment, 10..265 ms into the readers' work.
            std::thread::sleep(Duration::from_millis(10 + u64::from(*d)));
            let server = status_u64(&mount, "server_pid") as u32;
            assert_ne!(server, supervisor);
            kill(server, libc::SIGKILL);
            // The status file is read through the mount: it answers once
            // the next server serves.
            while status_u64(&mount, "server_restarts") < i as u64 + 1 {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_ne!(status_u64(&mount, "server_pid") as u32, server);
        }
    });
    report("12 server kills", &seen);
    let errors = seen.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(seen.reads.load(Ordering::Relaxed) > 100);
    assert_eq!(status_u64(&mount, "server_restarts"), kills as u64);
    assert_eq!(status_u64(&mount, "supervisor_pid") as u32, supervisor);
    let out = mount.unmount();
    report_takeovers(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unmounted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn servers_killed_as_soon_as_they_take_over_lose_no_request() {
    // Each new server is killed as soon as it answers, often while it still
    // serves what the kernel queued again for it.
    let env = Env::new();
    let (images, vmis) = images(&env);
    let mount = Mount::start(
        &env,
        "mount",
        &images,
        &env.path("mnt"),
        &["--threads", "2"],
    );
    let seen = read_during(&mount, &vmis, || {
        for i in 0..10u64 {
            let server = status_u64(&mount, "server_pid") as u32;
            kill(server, libc::SIGKILL);
            while status_u64(&mount, "server_restarts") < i + 1 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    report("10 back-to-back kills", &seen);
    let errors = seen.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "{errors:?}");
    report_takeovers(&mount.unmount());
}

#[test]
fn an_upgrade_runs_the_new_binary_and_readers_see_exact_bytes() {
    let env = Env::new();
    let (images, vmis) = images(&env);
    // The mount runs a copy, which each upgrade replaces with a new file.
    let (mount, bin) = Mount::start_upgradable(&env, &images, &env.path("mnt"), &[]);
    let first = status_u64(&mount, "server_pid");
    let seen = read_during(&mount, &vmis, || {
        for i in 0..3u64 {
            install_new_copy(&bin, &env);
            mount.upgrade(&bin);
            assert_eq!(status_u64(&mount, "server_upgrades"), i + 1);
            let server = status_u64(&mount, "server_pid");
            // The new server runs the file now at the path, not the one
            // the mount started with.
            let exe = fs::read_link(format!("/proc/{server}/exe")).unwrap();
            assert_eq!(exe, bin, "server {server} runs {}", exe.display());
        }
    });
    report("3 upgrades", &seen);
    let errors = seen.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "{errors:?}");
    assert_ne!(status_u64(&mount, "server_pid"), first);
    assert_eq!(status_u64(&mount, "server_restarts"), 0);
    report_takeovers(&mount.unmount());
}

#[test]
fn a_killed_supervisor_leaves_the_mount_served_and_unmountable() {
    let env = Env::new();
    let (images, vmis) = images(&env);
    let mount = Mount::start(&env, "mount", &images, &env.path("mnt"), &[]);
    let server = status_u64(&mount, "server_pid") as u32;
    kill(mount.pid(), libc::SIGKILL);
    // The server holds the connection on its own: reads go on.
    let seen = read_during(&mount, &vmis, || {
        std::thread::sleep(Duration::from_millis(300));
    });
    let errors = seen.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(seen.reads.load(Ordering::Relaxed) > 0);
    assert_eq!(status_u64(&mount, "server_pid") as u32, server);
    // An operator's umount ends it, and the server with it.
    let status = Command::new("umount").arg(&mount.point).status().unwrap();
    assert!(status.success());
    wait_gone(server);
    let out = mount.wait();
    assert!(!out.status.success(), "the supervisor was killed");
}

#[test]
fn with_supervisor_and_server_killed_the_mount_fails_fast_not_hangs() {
    let env = Env::new();
    let (images, vmis) = images(&env);
    let mount = Mount::start(&env, "mount", &images, &env.path("mnt"), &[]);
    let server = status_u64(&mount, "server_pid") as u32;
    let point = mount.point.clone();
    kill(mount.pid(), libc::SIGKILL);
    kill(server, libc::SIGKILL);
    // Both gone (their descriptors closed) before the read: a read already
    // waiting when the last one closes fails too, with ECONNABORTED.
    mount.wait();
    wait_gone(server);
    // The last holder of the connection is gone: the kernel aborts it, and
    // reads fail at once (ENOTCONN) instead of waiting forever.
    let err = fs::read(point.join(&vmis[0].0)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    let status = Command::new("umount").arg(&point).status().unwrap();
    assert!(status.success());
}

#[test]
fn a_server_that_can_no_longer_start_ends_the_mount_instead_of_hanging_it() {
    let env = Env::new();
    let (images, _) = images(&env);
    let mount = Mount::start(&env, "mount", &images, &env.path("mnt"), &[]);
    let point = mount.point.clone();
    // The store goes away: every new server fails before it is ready.
    fs::rename(env.store(), env.path("store.gone")).unwrap();
    kill(status_u64(&mount, "server_pid") as u32, libc::SIGKILL);
    let out = mount.wait();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("failed to start; unmounted"), "{log}");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(point.to_str().unwrap()),
        "still mounted: {log}"
    );
}

#[test]
fn an_upgrade_to_a_binary_that_fails_keeps_the_old_server_serving() {
    let env = Env::new();
    let (images, vmis) = images(&env);
    let (mount, bin) = Mount::start_upgradable(&env, &images, &env.path("mnt"), &[]);
    let server = status_u64(&mount, "server_pid");
    // A broken install: the new "binary" exits at once.
    let ran = env.path("broken-ran");
    let script = format!("#!/bin/sh\ntouch {}\nexit 1\n", ran.display());
    let tmp = env.path("bin/.new");
    fs::write(&tmp, script).unwrap();
    fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    fs::rename(&tmp, &bin).unwrap();
    let seen = read_during(&mount, &vmis, || {
        kill(mount.pid(), libc::SIGHUP);
        while !ran.exists() {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
    });
    let errors = seen.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(status_u64(&mount, "server_pid"), server);
    assert_eq!(status_u64(&mount, "server_upgrades"), 0);
    // A good binary then upgrades as usual.
    install_new_copy(&bin, &env);
    mount.upgrade(&bin);
    assert_eq!(status_u64(&mount, "server_upgrades"), 1);
    let out = mount.unmount();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("the old one keeps serving"), "{log}");
}
