//! A small fleet (50 VMIs in Table I's six families, made by
//! benches/fleet.py with a made-up block pool) through import, ls/stats,
//! a mount and its restart, rm of 10%, gc and verify, on a real store and
//! a real FUSE mount (root, fuse3, python3, b3sum). Every byte read through
//! the mount is compared with the VMI file.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{pread, Env, Mount};

const N: usize = 50;

/// Runs the generator: `N` VMIs (sparse, Table I's sizes) and their boot
/// images, scaled 1/64 so the whole fleet's boot data is about 50 MB.
fn generate(env: &Env) -> PathBuf {
    let out = env.path("fleet");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/fleet.py");
    let status = Command::new("python3")
        .arg(&script)
        .args([
            "--n",
            &N.to_string(),
            "--synthetic-pool",
            "3000",
            "--scale",
            "64",
        ])
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run benches/fleet.py (python3)");
    assert!(status.success(), "benches/fleet.py failed");
    out
}

fn names(n: usize) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/fleet.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--list", &n.to_string()])
        .output()
        .expect("fleet.py --list");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The recorded block offsets of a one-file `.yolo` (docs/format.md).
fn boot_offsets(yolo: &Path) -> Vec<u64> {
    let data = fs::read(yolo).unwrap();
    let u16_at = |p: usize| u16::from_le_bytes(data[p..p + 2].try_into().unwrap()) as usize;
    let u64_at = |p: usize| u64::from_le_bytes(data[p..p + 8].try_into().unwrap());
    let bs = u64::from(u32::from_le_bytes(data[12..16].try_into().unwrap()));
    let mut pos = 24 + 2 + u16_at(24) + 8 + 1 + 32;
    let k = u64_at(pos) as usize;
    pos += 8;
    (0..k).map(|i| u64_at(pos + 8 * i) * bs).collect()
}

/// Reads every boot block of `name` and a few ranges around them through
/// the mount, and compares each with the file.
fn check_reads(mount: &Mount, images: &Path, yolos: &Path, name: &str) {
    let offsets = boot_offsets(&yolos.join(format!("{name}.yolo")));
    let size = fs::metadata(images.join(name)).unwrap().len();
    let mut reads: Vec<(u64, usize)> = offsets.iter().map(|&o| (o, 4096)).collect();
    // Unaligned, across a boot block's edge, and the end of the file.
    for &o in offsets.iter().take(8) {
        reads.push((o.saturating_sub(100), 8192));
    }
    reads.push((size - 1000, 4096));
    for (offset, len) in reads {
        assert_eq!(
            pread(&mount.file(name), offset, len),
            pread(&images.join(name), offset, len),
            "{name}: {len} bytes at {offset} differ through the mount"
        );
    }
}

#[test]
fn a_fleet_of_fifty_goes_through_import_restart_rm_gc_and_verify() {
    let env = Env::new();
    let fleet = generate(&env);
    let (images, yolos) = (fleet.join("images"), fleet.join("yolo"));
    let names = names(N);
    assert_eq!(names.len(), N);
    for batch in names.chunks(10) {
        let mut args = vec!["import".to_string()];
        args.extend(
            batch
                .iter()
                .map(|n| yolos.join(format!("{n}.yolo")).display().to_string()),
        );
        env.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let ls = env.json(&["ls"]);
    assert_eq!(ls.as_array().unwrap().len(), N);
    let totals = env.json(&["stats"])["totals"].clone();
    assert_eq!(totals["vmis"], N as u64);
    // Families share their base: the fleet stores far fewer chunks than it reads.
    assert!(totals["dedup_ratio"].as_f64().unwrap() > 3.0, "{totals}");

    let served: Vec<&String> = names.iter().step_by(5).collect();
    let mount = Mount::start(&env, "mount", &images, &env.path("mnt"), &[]);
    assert_eq!(mount.status()["boot_images_verified"], N as u64);
    for name in &served {
        check_reads(&mount, &images, &yolos, name);
    }
    let status = mount.status();
    assert!(status["bytes_from_store"].as_u64().unwrap() > 0, "{status}");
    assert_eq!(status["identity_mismatches"], 0);
    mount.unmount();

    // A restart finds every VMI unchanged and serves them from the store.
    let mount = Mount::start(&env, "mount", &images, &env.path("mnt"), &[]);
    assert_eq!(mount.status()["boot_images_verified"], N as u64);
    for name in served.iter().take(3) {
        check_reads(&mount, &images, &yolos, name);
    }
    assert_eq!(mount.status()["unverified_opens"], 0);
    mount.unmount();

    // rm 10% (every tenth, so every family loses some) and gc.
    let gone: Vec<&str> = names
        .iter()
        .skip(9)
        .step_by(10)
        .map(String::as_str)
        .collect();
    let mut args = vec!["rm"];
    args.extend(&gone);
    env.ok(&args);
    env.ok(&["gc"]);
    env.ok(&["verify"]);
    assert_eq!(env.json(&["ls"]).as_array().unwrap().len(), N - gone.len());
    let stats = env.json(&["stats"])["totals"].clone();
    assert_eq!(stats["garbage_chunks"], 0, "{stats}");

    // The removed VMIs are served from their files, the rest from the store.
    let mount = Mount::start(&env, "mount", &images, &env.path("mnt"), &[]);
    // (The count includes what was verified for the removed ones: their
    // files did not change, so those records stay true.)
    assert!(mount.status()["boot_images_verified"].as_u64().unwrap() >= (N - gone.len()) as u64);
    for name in &gone {
        check_reads(&mount, &images, &yolos, name);
    }
    let status = mount.status();
    assert_eq!(status["bytes_from_store"], 0, "{status}");
    check_reads(&mount, &images, &yolos, &names[0]);
    assert!(mount.status()["bytes_from_store"].as_u64().unwrap() > 0);
    mount.unmount();
}
