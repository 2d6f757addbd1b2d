//! FUSE passthrough, mounted for real (root, fuse3, Linux >= 6.9): a file
//! the daemon has nothing to add to (no boot image, or one its blocks
//! differ from) is read by the kernel straight from the file, byte-exact,
//! and none of its reads reaches the daemon (`reads` stays 0).

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{boot_blocks, capture_blocks, vmi, Env, Mount};

/// A mount with `--passthrough` (opt-in) and `args`; "--no-passthrough"
/// among them means a mount without it.
fn serve(env: &Env, images: &Path, args: &[&str]) -> Mount {
    let mut all: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| *a != "--no-passthrough")
        .collect();
    if !args.contains(&"--no-passthrough") {
        all.push("--passthrough");
    }
    Mount::start(env, "mount", images, &env.path("mnt"), &all)
}

fn stat(mount: &Mount, key: &str) -> u64 {
    let status = mount.status();
    status[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing: {status}"))
}

/// Reads through `file` at unaligned offsets, across 4 KiB blocks, past
/// the end and whole, and compares each with `data`.
fn check(file: &fs::File, data: &[u8], what: &str) {
    let len = data.len() as u64;
    let ranges = [
        (0, 4096),
        (5 * 4096 + 17, 3 * 4096),
        (100 * 4096 - 1, 2),
        (len - 10, 10),
        (len - 5000, 64 << 10),
        (len, 100),
        (0, data.len()),
    ];
    for (offset, size) in ranges {
        let mut buf = vec![0u8; size];
        let mut got = 0;
        while got < size {
            let n = file
                .read_at(&mut buf[got..], offset + got as u64)
                .unwrap_or_else(|e| panic!("{what}: read at {offset}: {e}"));
            if n == 0 {
                break;
            }
            got += n;
        }
        let start = (offset as usize).min(data.len());
        let want = &data[start..(start + size).min(data.len())];
        assert!(
            &buf[..got] == want,
            "{what}: {size} bytes at {offset} differ"
        );
    }
}

/// Imports a boot image of `images/name` (read by [`boot_blocks`]).
fn import(env: &Env, images: &Path, name: &str) {
    let yolo = capture_blocks(env, &images.join(name), &boot_blocks());
    env.ok(&["import", yolo.to_str().unwrap()]);
}

/// Waits until every passthrough open the daemon answered is released:
/// the kernel sends RELEASE after close() returns.
fn wait_released(mount: &Mount) {
    for _ in 0..500 {
        if stat(mount, "passthrough_open_now") == 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("passthrough opens never released: {}", mount.status());
}

#[test]
fn a_file_without_a_matching_boot_image_is_read_by_the_kernel_alone() {
    let env = Env::new();
    let images = env.path("images");
    fs::create_dir_all(&images).unwrap();
    let plain = vmi(&images.join("plain.img"), 1, 96, 40);
    let boot = vmi(&images.join("boot.img"), 2, 96, 40);
    import(&env, &images, "boot.img");
    // A boot image its file no longer matches: changed after the capture.
    let mut changed = vmi(&images.join("changed.img"), 3, 96, 40);
    import(&env, &images, "changed.img");
    changed[2 * 4096..3 * 4096].fill(0xAB);
    fs::write(images.join("changed.img"), &changed).unwrap();

    let mount = serve(&env, &images, &["--preload", "none"]);
    mount.wait_verified();
    for (name, data) in [("plain.img", &plain), ("changed.img", &changed)] {
        let file = fs::File::open(mount.file(name)).unwrap();
        check(&file, data, name);
        assert_eq!(fs::read(mount.file(name)).unwrap(), *data, "{name}");
    }
    let status = mount.status();
    assert_eq!(status["reads"], 0, "{status}");
    assert_eq!(status["bytes_from_file"], 0, "{status}");
    assert_eq!(status["passthrough_opens"], 4, "{status}");
    assert_eq!(status["passthrough_refused"], 0, "{status}");
    assert!(stat(&mount, "identity_mismatches") >= 1, "{status}");
    // A file with a boot image still reaches the daemon: the counter counts.
    assert_eq!(fs::read(mount.file("boot.img")).unwrap(), boot);
    assert!(stat(&mount, "reads") > 0);
    assert!(stat(&mount, "bytes_from_store") > 0);
    assert_eq!(stat(&mount, "passthrough_opens"), 4);
}

/// The kernel allows no open of a file that is not passthrough while a
/// passthrough open of it lives (it would fail with EIO). So a file that
/// gains a boot image while held open that way goes on being passed
/// through, for every open, until the last such open is closed; the open
/// after that is served from the store.
#[test]
fn a_file_that_gains_a_boot_image_while_passed_through_is_served_from_the_store_once_closed() {
    let env = Env::new();
    let images = env.path("images");
    fs::create_dir_all(&images).unwrap();
    let data = vmi(&images.join("late.img"), 4, 96, 40);
    env.ok(&["init"]);
    let mount = serve(&env, &images, &["--preload", "none"]);
    let held = fs::File::open(mount.file("late.img")).unwrap();
    check(&held, &data, "before the import");
    import(&env, &images, "late.img");
    check(&held, &data, "held across the import");
    // The first open after the import queues the check (it would be
    // buffered), the one after it finds the boot image (direct I/O): both
    // are passed through, as the held open requires.
    let pending = fs::File::open(mount.file("late.img")).unwrap();
    check(&pending, &data, "opened while the check is pending");
    mount.wait_verified();
    let matched = fs::File::open(mount.file("late.img")).unwrap();
    check(&matched, &data, "opened with a verified boot image");
    check(&held, &data, "held after the check");
    let status = mount.status();
    assert_eq!(status["reads"], 0, "{status}");
    assert_eq!(status["passthrough_held"], 2, "{status}");
    assert_eq!(status["passthrough_open_now"], 3, "{status}");
    assert_eq!(status["boot_images_verified"], 1, "{status}");
    drop((held, pending, matched));
    wait_released(&mount);
    // Now served by the daemon, from the store.
    let file = fs::File::open(mount.file("late.img")).unwrap();
    check(&file, &data, "after the passthrough opens were closed");
    let status = mount.status();
    assert!(stat(&mount, "reads") > 0, "{status}");
    assert!(stat(&mount, "bytes_from_store") > 0, "{status}");
    assert_eq!(status["passthrough_opens"], 3, "{status}");
    // The other way round is allowed: a passthrough open beside a direct
    // one, after the boot image is removed.
    env.ok(&["rm", "late.img"]);
    let plain = fs::File::open(mount.file("late.img")).unwrap();
    check(
        &plain,
        &data,
        "after rm, beside an open served from the store",
    );
    check(
        &file,
        &data,
        "served from the store, beside a passthrough open",
    );
    assert_eq!(stat(&mount, "passthrough_opens"), 4);
}

/// A file replaced (renamed over) while its old version is open by
/// passthrough: the kernel ties the inode to the old backing file, so a new
/// open fails with EBUSY (never the old bytes) until the old open closes.
#[test]
fn a_replaced_file_opens_once_its_old_version_is_closed() {
    let env = Env::new();
    let images = env.path("images");
    fs::create_dir_all(&images).unwrap();
    let old = vmi(&images.join("a.img"), 5, 96, 40);
    env.ok(&["init"]);
    let mount = serve(&env, &images, &[]);
    let held = fs::File::open(mount.file("a.img")).unwrap();
    let new = vmi(&env.path("a.new"), 6, 96, 40);
    fs::rename(env.path("a.new"), images.join("a.img")).unwrap();
    let err = fs::File::open(mount.file("a.img")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EBUSY), "{err}");
    check(&held, &old, "the old version, held");
    drop(held);
    wait_released(&mount);
    let file = fs::File::open(mount.file("a.img")).unwrap();
    check(&file, &new, "the new version");
}

#[test]
fn with_no_passthrough_every_read_reaches_the_daemon() {
    let env = Env::new();
    let images = env.path("images");
    fs::create_dir_all(&images).unwrap();
    let data = vmi(&images.join("plain.img"), 7, 96, 40);
    env.ok(&["init"]);
    let mount = serve(&env, &images, &["--no-passthrough"]);
    let file = fs::File::open(mount.file("plain.img")).unwrap();
    check(&file, &data, "plain.img");
    let status = mount.status();
    assert!(stat(&mount, "reads") > 0, "{status}");
    assert_eq!(status["passthrough_opens"], 0, "{status}");
    assert_eq!(status["passthrough_refused"], 0, "{status}");
}

/// A read-only overlayfs of `lower` over an empty layer (no upper layer
/// takes at least two lower ones), unmounted on drop.
struct Overlay(PathBuf);

impl Overlay {
    fn mount(lower: &Path, at: &Path) -> Overlay {
        let empty = at.with_extension("empty");
        fs::create_dir_all(at).unwrap();
        fs::create_dir_all(&empty).unwrap();
        let opts = format!("lowerdir={}:{}", lower.display(), empty.display());
        let ok = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(at)
            .status()
            .expect("mount overlay");
        assert!(ok.success(), "mount -t overlay at {}", at.display());
        Overlay(at.to_path_buf())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The kernel refuses a backing file on a filesystem stacked as deep as
/// passthrough allows (an overlayfs over an overlayfs: ELOOP). Those
/// files are served by the daemon, counted, and logged once.
#[test]
fn a_backing_file_the_kernel_refuses_is_served_by_the_daemon() {
    let env = Env::new();
    let lower = env.path("lower");
    fs::create_dir_all(&lower).unwrap();
    let data = vmi(&lower.join("deep.img"), 8, 96, 40);
    let once = Overlay::mount(&lower, &env.path("ovl1"));
    let twice = Overlay::mount(&once.0, &env.path("ovl2"));
    env.ok(&["init"]);
    let mount = serve(&env, &twice.0, &[]);
    for _ in 0..2 {
        let file = fs::File::open(mount.file("deep.img")).unwrap();
        check(&file, &data, "deep.img");
    }
    let status = mount.status();
    assert_eq!(status["passthrough_opens"], 0, "{status}");
    assert_eq!(status["passthrough_refused"], 2, "{status}");
    assert!(stat(&mount, "reads") > 0, "{status}");
    let out = mount.unmount();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(log.matches("passthrough refused").count(), 1, "{log}");
    drop(twice);
}

/// qemu-img reads a real qcow2 with no boot image through passthrough,
/// buffered and with `-T none` (O_DIRECT, as a VM with `cache=none`): the
/// guest's bytes come back exactly and the daemon sees no read.
#[test]
fn qemu_img_reads_a_qcow2_through_passthrough_buffered_and_direct() {
    let env = Env::new();
    let images = env.path("images");
    fs::create_dir_all(&images).unwrap();
    let raw = env.path("disk.raw");
    let mut data = common::noise(9, 3 << 20);
    data[1 << 20..2 << 20].fill(0);
    fs::write(&raw, &data).unwrap();
    let qcow = images.join("disk.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&qcow)]);
    env.ok(&["init"]);
    let mount = serve(&env, &images, &[]);
    for cache in ["writeback", "none"] {
        let out = env.path(&format!("out-{cache}.raw"));
        let src = mount.file("disk.qcow2");
        qemu_img(&[
            "convert",
            "-T",
            cache,
            "-f",
            "qcow2",
            "-O",
            "raw",
            s(&src),
            s(&out),
        ]);
        assert!(
            fs::read(&out).unwrap() == data,
            "-T {cache}: converted image differs"
        );
    }
    let status = mount.status();
    assert_eq!(status["reads"], 0, "{status}");
    assert!(stat(&mount, "passthrough_opens") >= 2, "{status}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
