//! The FUSE server, mounted for real (root, fuse3): every byte read through
//! the mount must equal the file in the images directory at that offset.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{boot_blocks, capture_blocks, noise, pread, vmi, Env, Mount};

/// An images directory with `n` VMIs sharing a base, each with a boot image
/// in the store. Returns the directory and the VMIs' contents.
fn family(env: &Env, n: u64) -> (PathBuf, Vec<(String, Vec<u8>)>) {
    let images = env.path("images");
    fs::create_dir_all(&images).unwrap();
    let mut vmis = Vec::new();
    for v in 0..n {
        let name = format!("vmi{v}.qcow2");
        let data = vmi(&images.join(&name), v, 96, 40);
        let yolo = capture_blocks(env, &images.join(&name), &boot_blocks());
        env.ok(&["import", yolo.to_str().unwrap()]);
        vmis.push((name, data));
    }
    (images, vmis)
}

/// `yolo-store mount` of `images` at `env`'s `mnt`, with extra `args`.
fn serve(env: &Env, images: &Path, args: &[&str]) -> Mount {
    Mount::start(env, "mount", images, &env.path("mnt"), args)
}

/// Ranges that start and end inside boot-image blocks, outside them, and
/// across both, unaligned, plus the end of the file.
fn ranges(len: u64, seed: u64) -> Vec<(u64, usize)> {
    let mut out = vec![
        (0, 4096),
        (54 * 4096, 4096),           // a block the boot never read
        (53 * 4096 + 100, 3 * 4096), // read, unread, read
        (len - 10, 10),
        (len - 5000, 64 << 10), // runs past the end
        (len, 100),             // at the end
        (0, len as usize),      // the whole file
    ];
    let r = noise(seed, 8 * 64);
    for w in r.chunks(8) {
        let x = u64::from_le_bytes(w.try_into().unwrap());
        let offset = x % len;
        let size = 1 + ((x >> 32) % (200 << 10)) as usize;
        out.push((offset, size));
    }
    out
}

fn expect(data: &[u8], offset: u64, len: usize) -> &[u8] {
    let start = (offset as usize).min(data.len());
    &data[start..(start + len).min(data.len())]
}

#[test]
fn reads_equal_the_files_inside_outside_and_across_boot_blocks() {
    let env = Env::new();
    let (images, vmis) = family(&env, 2);
    let mount = serve(&env, &images, &[]);
    for (i, (name, data)) in vmis.iter().enumerate() {
        assert_eq!(
            fs::metadata(mount.file(name)).unwrap().len(),
            data.len() as u64
        );
        for (offset, len) in ranges(data.len() as u64, i as u64) {
            assert_eq!(
                pread(&mount.file(name), offset, len),
                expect(data, offset, len),
                "{name} at {offset}+{len}"
            );
        }
    }
    let status = mount.status();
    assert!(status["bytes_from_store"].as_u64().unwrap() > 0, "{status}");
    assert!(status["bytes_from_file"].as_u64().unwrap() > 0, "{status}");
    assert_eq!(status["chunk_failures"], 0);
    let out = mount.unmount();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unmounted"));
}

/// A VM reads its boot blocks with ordinary buffered reads, here in offset
/// order, which the kernel's read-ahead takes for a stream. It must not
/// widen them: the blocks around a boot image's are not in the store, and
/// would be read from the (slow) file.
#[test]
fn boot_reads_through_the_mount_read_nothing_around_the_boot_image() {
    let env = Env::new();
    let (images, vmis) = family(&env, 1);
    let mount = serve(&env, &images, &["--preload", "none"]);
    let (name, data) = &vmis[0];
    let file = fs::File::open(mount.file(name)).unwrap();
    let mut blocks = boot_blocks();
    blocks.sort();
    for block in blocks {
        let mut buf = vec![0u8; 4096];
        let n = read_full(&file, &mut buf, block * 4096);
        assert_eq!(&buf[..n], expect(data, block * 4096, 4096), "block {block}");
    }
    let status = mount.status();
    assert_eq!(status["bytes_from_file"], 0, "{status}");
    assert!(status["bytes_from_store"].as_u64().unwrap() > 0, "{status}");
}

#[test]
fn sixteen_concurrent_readers_see_exact_bytes() {
    let env = Env::new();
    let (images, vmis) = family(&env, 3);
    // A small cache, so readers also race on eviction and reload.
    let mount = serve(&env, &images, &["--cache-size", "256K"]);
    std::thread::scope(|s| {
        for t in 0..16u64 {
            let (vmis, mount) = (&vmis, &mount);
            s.spawn(move || {
                let (name, data) = &vmis[t as usize % vmis.len()];
                let file = fs::File::open(mount.file(name)).unwrap();
                check_ranges(&file, name, data, 100 + t);
            });
        }
    });
    assert_eq!(mount.status()["chunk_failures"], 0);
}

/// Reads every range of `ranges(data.len(), seed)` from `file` and checks
/// it against `data`; returns the reads done and the bytes compared.
fn check_ranges(file: &fs::File, name: &str, data: &[u8], seed: u64) -> (u64, u64) {
    let (mut reads, mut bytes) = (0, 0);
    for (offset, len) in ranges(data.len() as u64, seed) {
        let mut buf = vec![0u8; len];
        let n = read_full(file, &mut buf, offset);
        assert_eq!(
            &buf[..n],
            expect(data, offset, len),
            "{name} {offset}+{len}"
        );
        reads += 1;
        bytes += n as u64;
    }
    (reads, bytes)
}

fn read_full(file: &fs::File, buf: &mut [u8], offset: u64) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64).unwrap() {
            0 => break,
            n => got += n,
        }
    }
    got
}

#[test]
fn writes_fail_read_only_and_nothing_outside_is_reachable() {
    let env = Env::new();
    let (images, vmis) = family(&env, 1);
    fs::write(env.path("secret"), b"outside").unwrap();
    std::os::unix::fs::symlink(env.path("secret"), images.join("escape")).unwrap();
    let mount = serve(&env, &images, &[]);
    let name = &vmis[0].0;
    let err = fs::OpenOptions::new()
        .write(true)
        .open(mount.file(name))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc_erofs()), "{err}");
    let err = fs::write(mount.file("new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc_erofs()), "{err}");
    // The symlink is neither listed nor followed.
    let listed: Vec<String> = fs::read_dir(&mount.point)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!listed.contains(&"escape".to_string()), "{listed:?}");
    assert!(fs::read(mount.file("escape")).is_err());
}

fn libc_erofs() -> i32 {
    30 // EROFS on Linux
}

#[test]
fn qemu_img_reads_a_real_qcow2_through_the_mount() {
    let env = Env::new();
    let images = env.path("images");
    fs::create_dir_all(&images).unwrap();
    // A real qcow2: raw data with holes, converted by qemu-img.
    let raw = env.path("disk.raw");
    let mut data = noise(7, 3 << 20);
    data[1 << 20..2 << 20].fill(0);
    fs::write(&raw, &data).unwrap();
    let qcow = images.join("disk.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            path(&raw),
            path(&qcow),
        ],
    );
    // Its "boot": qemu-img's own reads of the header and tables, plus some
    // data clusters, as a trace of the first 64 KiB blocks and a few others.
    let blocks: Vec<u64> = (0..16)
        .chain([40, 41, 200, 7])
        .filter(|&b| b * 4096 < fs::metadata(&qcow).unwrap().len())
        .collect();
    let mut unique = Vec::new();
    for b in blocks {
        if !unique.contains(&b) {
            unique.push(b);
        }
    }
    let yolo = capture_blocks(&env, &qcow, &unique);
    env.ok(&["import", path(&yolo)]);
    let mount = serve(&env, &images, &[]);
    let info = Command::new("qemu-img")
        .args(["info", "--output=json", path(&mount.file("disk.qcow2"))])
        .output()
        .unwrap();
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 3 << 20);
    let out = env.path("out.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            path(&mount.file("disk.qcow2")),
            path(&out),
        ],
    );
    assert!(fs::read(&out).unwrap() == data, "converted image differs");
    assert!(mount.status()["bytes_from_store"].as_u64().unwrap() > 0);
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn record_writes_the_boot_image_capture_builds_from_the_same_trace() {
    let env = Env::new();
    let images = env.path("images");
    fs::create_dir_all(&images).unwrap();
    let data = vmi(&images.join("a.img"), 1, 96, 40);
    vmi(&images.join("untouched.img"), 2, 4, 0);
    let out_dir = env.path("recorded");
    let mount = Mount::start(
        &env,
        "record",
        &images,
        &env.path("mnt"),
        &["-o", path(&out_dir)],
    );
    // The scripted boot: the reads the trace lists, in its order.
    let trace_path = env.path("boot.trace");
    common::trace(&trace_path, &boot_blocks());
    let file = fs::File::open(mount.file("a.img")).unwrap();
    for line in fs::read_to_string(&trace_path).unwrap().lines().skip(1) {
        let mut f = line.split_whitespace().map(|x| x.parse::<u64>().unwrap());
        let (offset, len) = (f.next().unwrap(), f.next().unwrap() as usize);
        let mut buf = vec![0u8; len];
        let n = read_full(&file, &mut buf, offset);
        assert_eq!(&buf[..n], expect(&data, offset, len));
    }
    drop(file);
    let status = mount.status();
    assert_eq!(status[0]["name"], "a.img", "{status}");
    let out = mount.unmount();
    assert!(String::from_utf8_lossy(&out.stdout).contains("a.img.yolo"));
    assert!(!out_dir.join("untouched.img.yolo").exists());
    let captured = env.path("captured.yolo");
    env.ok(&[
        "capture",
        "--trace",
        path(&trace_path),
        path(&images.join("a.img")),
        "-o",
        path(&captured),
    ]);
    assert!(
        fs::read(out_dir.join("a.img.yolo")).unwrap() == fs::read(&captured).unwrap(),
        "recorded and captured boot images differ"
    );
    // The recorded trace is the reads as they were made.
    let recorded = fs::read_to_string(out_dir.join("a.img.trace")).unwrap();
    let lines = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        lines(&recorded),
        lines(&fs::read_to_string(&trace_path).unwrap())
    );
}

#[test]
fn import_rm_and_gc_while_mounted() {
    let env = Env::new();
    let (images, vmis) = family(&env, 1);
    let late = images.join("late.img");
    let late_data = vmi(&late, 9, 96, 40);
    let mount = serve(&env, &images, &["--preload", "none"]);
    let check = |name: &str, data: &[u8], seed: u64| {
        for (offset, len) in ranges(data.len() as u64, seed) {
            assert_eq!(
                pread(&mount.file(name), offset, len),
                expect(data, offset, len)
            );
        }
    };
    // Served from the file alone: no boot image yet.
    check("late.img", &late_data, 1);
    let before = mount.status()["bytes_from_store"].as_u64().unwrap();
    assert_eq!(before, 0);
    // Imported while mounted: used from the next open.
    let yolo = capture_blocks(&env, &late, &boot_blocks());
    env.ok(&["import", path(&yolo)]);
    // The first open after the import starts hashing the file; once its
    // identity is known, the next open uses the boot image.
    check("late.img", &late_data, 2);
    mount.wait_verified();
    assert!(mount.status()["unverified_opens"].as_u64().unwrap() > 0);
    check("late.img", &late_data, 6);
    let after = mount.status()["bytes_from_store"].as_u64().unwrap();
    assert!(after > before, "the new boot image was not used");
    // Removed and collected while a reader holds the file open.
    let (name, data) = &vmis[0];
    let held = fs::File::open(mount.file(name)).unwrap();
    env.ok(&["rm", name]);
    env.ok(&["gc"]);
    env.ok(&["verify"]);
    check_ranges(&held, name, data, 3);
    check(name, data, 4);
    check("late.img", &late_data, 5);
}

/// A mount started after an `rm` and a compacting `gc` serves the VMIs that
/// are left from the store. Each import wrote a blob file of its own; gc
/// dropped the removed VMI's while an older one stayed, and the mount (then
/// a RocksDB secondary) took the store for one with no VMI in it. Six
/// imports, so that RocksDB has compacted some before the gc, as in the
/// demo where this was seen.
#[test]
fn a_mount_started_after_rm_and_gc_serves_the_rest_from_the_store() {
    let env = Env::new();
    let (images, vmis) = family(&env, 6);
    env.ok(&["rm", &vmis[1].0]);
    env.ok(&["gc"]);
    let mount = serve(&env, &images, &["--preload", "none"]);
    mount.wait_verified();
    let status = mount.status();
    assert_eq!(status["boot_images_verified"], 5, "{status}");
    for (i, (name, data)) in vmis.iter().enumerate() {
        let before = mount.status()["bytes_from_store"].as_u64().unwrap();
        assert_eq!(fs::read(mount.file(name)).unwrap(), *data, "{name}");
        let after = mount.status()["bytes_from_store"].as_u64().unwrap();
        assert_eq!(after > before, i != 1, "{name}: served from the store?");
    }
}

#[test]
fn a_changed_vmi_is_served_from_the_file() {
    let env = Env::new();
    let (images, vmis) = family(&env, 1);
    let (name, data) = &vmis[0];
    let mut changed = data.clone();
    changed[5 * 4096..6 * 4096].fill(0xAB);
    fs::write(images.join(name), &changed).unwrap();
    let mount = serve(&env, &images, &[]);
    assert_eq!(fs::read(mount.file(name)).unwrap(), changed);
    let status = mount.status();
    assert_eq!(status["bytes_from_store"], 0, "{status}");
    assert!(status["identity_mismatches"].as_u64().unwrap() >= 1);
}

#[test]
fn a_corrupt_chunk_is_never_served() {
    let env = Env::new();
    let (images, vmis) = family(&env, 1);
    let (name, data) = &vmis[0];
    let bad = {
        let store = yolo_store_core::Store::open(&env.store()).unwrap();
        let id = store.manifest(name).unwrap().chunks[3].id;
        // A pack that decodes, holding bytes that are not the chunk's.
        store.corrupt_chunk(&id).unwrap();
        id
    };
    let out = env.run(&["verify"]);
    assert!(!out.status.success());
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        report.contains(&bad.to_hex()) && report.contains(name),
        "{report}"
    );
    let mount = serve(&env, &images, &["--preload", "none"]);
    assert!(
        fs::read(mount.file(name)).unwrap() == *data,
        "bytes differ from the file"
    );
    let status = mount.status();
    assert!(status["chunk_failures"].as_u64().unwrap() >= 1, "{status}");
    assert!(status["bytes_from_store"].as_u64().unwrap() > 0, "{status}");
}

#[test]
fn soak_sixteen_readers_while_import_rm_and_gc_run() {
    let env = Env::new();
    let (images, vmis) = family(&env, 4);
    let yolos: Vec<String> = vmis
        .iter()
        .map(|(name, _)| {
            env.path(&format!("{name}.yolo"))
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mount = serve(&env, &images, &["--cache-size", "512K"]);
    let writing = std::sync::atomic::AtomicBool::new(true);
    let (reads, bytes) = (
        std::sync::atomic::AtomicU64::new(0),
        std::sync::atomic::AtomicU64::new(0),
    );
    std::thread::scope(|s| {
        for t in 0..16u64 {
            let (vmis, mount, writing, reads, bytes) = (&vmis, &mount, &writing, &reads, &bytes);
            s.spawn(move || {
                let mut round = 0;
                // At least one pass, and on until the writers are done.
                while round == 0 || writing.load(std::sync::atomic::Ordering::Relaxed) {
                    let (name, data) = &vmis[(t + round) as usize % vmis.len()];
                    // A fresh open each round, so boot images come and go.
                    let file = fs::File::open(mount.file(name)).unwrap();
                    let (n, compared) = check_ranges(&file, name, data, t * 1000 + round);
                    reads.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    bytes.fetch_add(compared, std::sync::atomic::Ordering::Relaxed);
                    round += 1;
                }
            });
        }
        for cycle in 0..5 {
            let (name, _) = &vmis[cycle % vmis.len()];
            env.ok(&["rm", name]);
            env.ok(&["gc"]);
            env.ok(&["import", &yolos[cycle % vmis.len()]]);
        }
        writing.store(false, std::sync::atomic::Ordering::Relaxed);
    });
    env.ok(&["verify"]);
    eprintln!(
        "soak: {} reads, {} bytes compared, 0 mismatches",
        reads.into_inner(),
        bytes.into_inner()
    );
}

/// A boot image the store lists but cannot give at open (its manifest names
/// a chunk number with no record: what a view torn by a commit saw in CI's
/// soak) must not fail the VM's open: the file serves every byte, and the
/// failure is counted. `verify` names it, and a mount started on such a
/// store comes up and serves it the same way.
#[test]
fn an_open_whose_boot_image_the_store_cannot_give_is_served_from_the_file() {
    let env = Env::new();
    let (images, vmis) = family(&env, 1);
    let (name, data) = &vmis[0];
    let mount = serve(&env, &images, &["--preload", "none"]);
    mount.wait_verified();
    assert_eq!(fs::read(mount.file(name)).unwrap(), *data);
    let served = mount.status();
    assert!(served["bytes_from_store"].as_u64().unwrap() > 0, "{served}");

    // Beside the mount, as import, rm and gc run.
    let lost = {
        let store = yolo_store_core::Store::open(&env.store()).unwrap();
        yolo_store_core::testing::lose_chunk_number(&store, name).unwrap()
    };
    assert_eq!(fs::read(mount.file(name)).unwrap(), *data, "{name}");
    let status = mount.status();
    assert_eq!(
        status["chunk_failures"].as_u64().unwrap(),
        served["chunk_failures"].as_u64().unwrap() + 1,
        "{status}"
    );
    assert_eq!(status["bytes_from_store"], served["bytes_from_store"]);
    let out = mount.unmount();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(name) && log.contains("served from the file instead"),
        "{log}"
    );

    let out = env.run(&["verify"]);
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains(name) && report.contains(&format!("chunk number {lost}")),
        "{report}"
    );

    // Start-up verification meets it first on a fresh mount.
    let mount = serve(&env, &images, &["--preload", "none"]);
    assert_eq!(fs::read(mount.file(name)).unwrap(), *data, "{name}");
    let status = mount.status();
    assert!(status["chunk_failures"].as_u64().unwrap() >= 1, "{status}");
    assert_eq!(status["bytes_from_store"], 0, "{status}");
    let log = String::from_utf8_lossy(&mount.unmount().stderr).into_owned();
    assert!(!log.contains("panicked"), "{log}");
}
