//! `mount --learn`: the first boot of a file without a boot image is
//! recorded and imported with no command typed, and the next boot is
//! served from the store. Real mount, real store; a "boot" is a reader
//! making the reads of a test trace through the mount.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{boot_blocks, capture_blocks, vmi, Env, Mount};

const LEARN: [&str; 7] = [
    "--learn",
    "--learn-quiet",
    "1",
    "--learn-min-reads",
    "32",
    "--preload",
    "none",
];

/// Makes the reads `common::trace` writes for `blocks`, in its order,
/// through one open of `file`, and checks every byte against `data`.
fn boot(file: &Path, blocks: &[u64], data: &[u8]) {
    let f = fs::File::open(file).unwrap();
    for (i, b) in blocks.iter().enumerate() {
        let offset = b * 4096 + (i as u64 * 37) % 4000;
        let mut buf = vec![0u8; 1 + (i * 101) % 90];
        let n = f.read_at(&mut buf, offset).unwrap();
        let start = (offset as usize).min(data.len());
        assert_eq!(
            &buf[..n],
            &data[start..(start + n).min(data.len())],
            "read {i}"
        );
    }
}

/// The mount's learning counters.
fn learning(mount: &Mount) -> serde_json::Value {
    mount.status()["learning"].clone()
}

fn wait_for(mount: &Mount, what: &str, done: impl Fn(&serde_json::Value) -> bool) {
    let start = Instant::now();
    while !done(&learning(mount)) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what}: {}",
            mount.status()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spool_is_empty(env: &Env) -> bool {
    fs::read_dir(env.store().join("learning"))
        .unwrap()
        .next()
        .is_none()
}

fn setup(env: &Env) -> (std::path::PathBuf, Vec<u8>) {
    let images = env.path("images");
    fs::create_dir(&images).unwrap();
    let data = vmi(&images.join("vmi.img"), 1, 96, 40);
    env.ok(&["init"]);
    (images, data)
}

#[test]
fn a_vmi_is_learned_on_its_first_boot_and_served_from_the_store_on_the_next() {
    let env = Env::new();
    let (images, data) = setup(&env);
    let mount = Mount::start(&env, "mount", &images, &env.path("mnt"), &LEARN);
    let file = mount.file("vmi.img");
    boot(&file, &boot_blocks(), &data);
    assert_eq!(mount.status()["bytes_from_store"], 0);
    wait_for(&mount, "imported", |l| l["imported"] == 1);
    assert_eq!(learning(&mount)["learned"], 1);
    assert!(spool_is_empty(&env));

    // What was learned is what `capture` makes from the same reads.
    let captured = capture_blocks(&env, &images.join("vmi.img"), &boot_blocks());
    let exported = env.path("exported.yolo");
    env.ok(&["export", "vmi.img", "-o", exported.to_str().unwrap()]);
    assert_eq!(fs::read(&exported).unwrap(), fs::read(&captured).unwrap());

    // The next boot comes from the store, checked and without a command.
    mount.wait_verified();
    let counter = |status: &serde_json::Value, name: &str| status[name].as_u64().unwrap();
    let before = mount.status();
    boot(&file, &boot_blocks(), &data);
    let after = mount.status();
    assert!(
        counter(&after, "bytes_from_store") > counter(&before, "bytes_from_store"),
        "{after}"
    );
    assert_eq!(
        counter(&after, "bytes_from_file"),
        counter(&before, "bytes_from_file"),
        "every read of the second boot is in its boot image"
    );
    // Recorded once: the second boot is not learned again.
    assert_eq!(learning(&mount)["learned"], 1);
    assert_eq!(fs::read(&file).unwrap(), data);
}

#[test]
fn two_vms_booting_one_new_vmi_make_one_boot_image() {
    let env = Env::new();
    let (images, data) = setup(&env);
    let mount = Mount::start(&env, "mount", &images, &env.path("mnt"), &LEARN);
    let file = mount.file("vmi.img");
    let blocks = boot_blocks();
    let (first, second) = blocks.split_at(blocks.len() / 2);
    std::thread::scope(|s| {
        s.spawn(|| boot(&file, &blocks, &data));
        s.spawn(|| boot(&file, first, &data));
        s.spawn(|| boot(&file, second, &data));
    });
    wait_for(&mount, "imported", |l| l["imported"] == 1);
    let status = learning(&mount);
    assert_eq!(status["learned"], 1, "{status}");
    let ls = env.json(&["ls"]);
    assert_eq!(ls.as_array().unwrap().len(), 1, "{ls}");
}

#[test]
fn probes_and_changed_files_are_dropped_and_leave_nothing() {
    let env = Env::new();
    let (images, data) = setup(&env);
    let mount = Mount::start(&env, "mount", &images, &env.path("mnt"), &LEARN);
    let file = mount.file("vmi.img");

    // A probe reads a few blocks: not a boot.
    boot(&file, &boot_blocks()[..5], &data);
    wait_for(&mount, "dropped as a probe", |l| {
        l["dropped_too_few_reads"] == 1
    });
    assert_eq!(env.json(&["ls"]).as_array().unwrap().len(), 0);

    // The VMI changes while its boot is recorded: dropped.
    boot(&file, &boot_blocks(), &data);
    let vmi = fs::OpenOptions::new()
        .append(true)
        .open(images.join("vmi.img"))
        .unwrap();
    vmi.write_at(b"new", data.len() as u64).unwrap();
    wait_for(&mount, "dropped as changed", |l| {
        l["dropped_vmi_changed"] == 1
    });
    assert_eq!(learning(&mount)["imported"], 0);
    assert_eq!(env.json(&["ls"]).as_array().unwrap().len(), 0);
    assert!(spool_is_empty(&env));

    // The new version boots: learned.
    let mut changed = data.clone();
    changed.extend_from_slice(b"new");
    boot(&file, &boot_blocks(), &changed);
    wait_for(&mount, "imported", |l| l["imported"] == 1);
    assert!(spool_is_empty(&env));
}

/// QEMU opens its backing file, then the guest's kernel (given to QEMU
/// directly) runs for many seconds before its first disk read: a pause
/// longer than --learn-quiet with the file still open and only a few reads
/// so far does not end the recording.
#[test]
fn a_pause_before_the_boot_reads_its_disk_does_not_end_the_recording() {
    let env = Env::new();
    let (images, data) = setup(&env);
    let mount = Mount::start(&env, "mount", &images, &env.path("mnt"), &LEARN);
    let held = fs::File::open(mount.file("vmi.img")).unwrap();
    let mut header = [0u8; 512];
    held.read_at(&mut header, 0).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(learning(&mount)["recording"], 1, "{}", mount.status());
    boot(&mount.file("vmi.img"), &boot_blocks(), &data);
    drop(held);
    wait_for(&mount, "imported", |l| l["imported"] == 1);
    assert_eq!(learning(&mount)["dropped_too_few_reads"], 0);
}

/// With --remote, a learned boot image is pushed too: another node pulls
/// it, so a cloud records each VMI once.
#[test]
fn a_learned_boot_image_is_pushed_to_the_remote() {
    let env = Env::new();
    let (images, data) = setup(&env);
    let remote = format!("file://{}", env.path("remote").display());
    let mut args = LEARN.to_vec();
    args.extend(["--remote", remote.as_str()]);
    let mount = Mount::start(&env, "mount", &images, &env.path("mnt"), &args);
    boot(&mount.file("vmi.img"), &boot_blocks(), &data);
    wait_for(&mount, "imported", |l| l["imported"] == 1);
    wait_for(&mount, "pushed", |l| l["pushed"] == 1);
    let other = env.path("other-node");
    common::succeed(std::process::Command::new(common::BIN).args([
        "--store",
        other.to_str().unwrap(),
        "pull",
        "--remote",
        &remote,
    ]));
    let ls = std::process::Command::new(common::BIN)
        .args(["--store", other.to_str().unwrap(), "ls", "--json"])
        .output()
        .unwrap();
    let ls: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(ls[0]["name"], "vmi.img", "{ls}");
}
