//! scripts/slow-disk.sh, the emulated slow device of the boot benchmarks:
//! the throttle is checked through the kernel's own counters and limits,
//! never with a timer, and bad setups fail clearly and leave nothing.
//! Needs root, loop devices and the block I/O controller, as the benches do.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/slow-disk.sh");

/// Runs the script with its images kept in `images` and a 64 MiB disk.
fn slow_disk(images: &Path, args: &[&str]) -> Output {
    Command::new(SCRIPT)
        .args(args)
        .env("SLOW_DISK_IMAGES", images)
        .env("SIZE", "64M")
        .output()
        .expect("run slow-disk.sh")
}

fn ok(images: &Path, args: &[&str]) -> String {
    let out = slow_disk(images, args);
    assert!(
        out.status.success(),
        "slow-disk.sh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(images: &Path, args: &[&str], why: &str) {
    let out = slow_disk(images, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "slow-disk.sh {args:?} succeeded");
    assert!(
        stderr.contains(why),
        "{args:?}: expected {why:?} in {stderr}"
    );
}

fn stats(images: &Path, dir: &str) -> HashMap<String, u64> {
    ok(images, &["stats", dir])
        .split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// `count` 4 KiB reads of `file` with O_DIRECT (each one reaches the
/// device), inside DIR's throttled group or outside it.
fn direct_reads(images: &Path, dir: &str, file: &str, count: u32, throttled: bool) {
    let dd = [
        "dd",
        &format!("if={file}"),
        "of=/dev/null",
        "bs=4k",
        &format!("count={count}"),
        "iflag=direct",
        "status=none",
    ];
    let out = if throttled {
        let mut args = vec!["run", dir, "--"];
        args.extend_from_slice(&dd);
        slow_disk(images, &args)
    } else {
        Command::new(dd[0]).args(&dd[1..]).output().expect("dd")
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cgroup directory `up` reports.
fn group_of(up_output: &str) -> String {
    up_output
        .split_whitespace()
        .find(|w| w.starts_with("/sys/fs/cgroup/"))
        .expect("up names its cgroup")
        .to_string()
}

fn nothing_left(images: &Path, dir: &str, group: &str) {
    let files: Vec<_> = std::fs::read_dir(images).unwrap().collect();
    assert!(files.is_empty(), "images left behind: {files:?}");
    let loops = Command::new("losetup").arg("-a").output().unwrap();
    let loops = String::from_utf8_lossy(&loops.stdout);
    assert!(
        !loops.contains(images.to_str().unwrap()),
        "loop device left behind: {loops}"
    );
    assert!(!Path::new(group).exists(), "{group} left behind");
    let mounted = Command::new("mountpoint")
        .args(["-q", dir])
        .status()
        .unwrap();
    assert!(!mounted.success(), "{dir} still mounted");
    fails(images, &["stats", dir], "is not a slow disk");
}

#[test]
fn reads_in_the_group_are_limited_and_counted_there() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let dir = tmp.path().join("disk");
    let dir = dir.to_str().unwrap();
    let up = ok(&images, &["up", "hdd", dir]);
    let group = group_of(&up);

    let file = format!("{dir}/vmi");
    std::fs::write(&file, vec![7u8; 1 << 20]).unwrap();
    assert!(Command::new("sync").status().unwrap().success());

    // The kernel holds the hdd profile's limits for exactly this device.
    let before = stats(&images, dir);
    assert_eq!(before["read_iops_limit"], 150);
    assert_eq!(before["read_bps_limit"], 150_000_000);

    // Reads from inside the group are charged to it, one per read...
    direct_reads(&images, dir, &file, 40, true);
    let inside = stats(&images, dir);
    assert!(
        inside["reads"] - before["reads"] >= 40,
        "{before:?} -> {inside:?}"
    );
    assert!(inside["read_bytes"] - before["read_bytes"] >= 40 * 4096);
    // ...and reads from outside it are not throttled (nor counted).
    direct_reads(&images, dir, &file, 40, false);
    assert_eq!(stats(&images, dir)["reads"], inside["reads"]);

    ok(&images, &["down", dir]);
    nothing_left(&images, dir, &group);
}

#[test]
fn bad_setups_fail_clearly_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let dir = tmp.path().join("disk");
    let dir = dir.to_str().unwrap();
    let group = group_of(&ok(&images, &["up", "ssd", dir]));
    fails(&images, &["up", "ssd", dir], "is already a slow disk");
    ok(&images, &["down", dir]);
    nothing_left(&images, dir, &group);

    fails(&images, &["up", "floppy", dir], "unknown profile");
    let too_big = Command::new(SCRIPT)
        .args(["up", "hdd", dir])
        .env("SLOW_DISK_IMAGES", &images)
        .env("SIZE", "1000P")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&too_big.stderr).contains("not enough room"));
    let not_root = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", SCRIPT])
        .args(["up", "hdd", dir])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&not_root.stderr).contains("needs root"));
    nothing_left(&images, dir, &group);

    // A failure after the loop device is attached (DIR is a file, so it
    // cannot be mounted on) undoes everything; `down` then has nothing to do.
    std::fs::remove_dir(dir).unwrap();
    std::fs::write(dir, b"not a directory").unwrap();
    fails(&images, &["up", "hdd", dir], "up failed; cleaning up");
    std::fs::remove_file(dir).unwrap();
    nothing_left(&images, dir, &group);
    ok(&images, &["down", dir]);
}
