//! Operator mistakes and a hostile host (issue 16): what a new user or an
//! attacker on the same machine tries, on small files, through the real
//! binary, a real store and real FUSE mounts. None needs a VM.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{boot_blocks, capture_blocks, vmi, Env, Mount, BIN};

/// `yolo-store --store STORE` with arguments still to add.
fn cmd(env: &Env) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--store").arg(env.store());
    c
}

/// Runs `c`, killing it if it has not finished within 60 s. A guard
/// against a command that blocks for good (a FIFO, /dev/zero, hashing a
/// huge file), not a measure of speed: every command here takes well
/// under a second once fixed.
fn bounded(c: &mut Command) -> Output {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn yolo-store");
    for _ in 0..600 {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{c:?} was still running after 60 s: it blocked");
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts `out` failed, without a panic, and returns its stderr.
fn failed(out: &Output, what: &str) -> String {
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "{what} succeeded: {}",
        text(&out.stdout)
    );
    assert!(!err.contains("panicked"), "{what} panicked: {err}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A VMI `vmi1.qcow2` captured and imported. Returns its .yolo, its path
/// and its trace.
fn stored(env: &Env) -> (PathBuf, PathBuf, PathBuf) {
    let file = env.path("vmi1.qcow2");
    vmi(&file, 1, 96, 40);
    let yolo = capture_blocks(env, &file, &boot_blocks());
    env.ok(&["import", s(&yolo)]);
    (yolo, file, env.path("vmi1.qcow2.trace"))
}

fn mknod_null(path: &Path) {
    let ok = Command::new("mknod")
        .arg(path)
        .args(["c", "1", "3"])
        .status()
        .expect("mknod");
    assert!(ok.success());
}

fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo")
        .success());
}

/// A pipe whose reading end is already closed: any write to it fails with
/// EPIPE, as `yolo-store ls | head -1` does once head has exited.
fn closed_pipe() -> Stdio {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe() returns.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both are ours: close the reader, own the writer.
    unsafe {
        libc::close(fds[0]);
        Stdio::from(OwnedFd::from_raw_fd(fds[1]))
    }
}

#[test]
fn outputs_never_replace_links_devices_fifos_or_directories() {
    let env = Env::new();
    let (_, file, trace) = stored(&env);
    let target = env.path("target");
    fs::write(&target, b"kept").unwrap();
    let link = env.path("link");
    symlink(&target, &link).unwrap();
    let dev = env.path("null");
    mknod_null(&dev);
    let fifo = env.path("fifo");
    mkfifo(&fifo);
    let dir = env.path("dir");
    fs::create_dir(&dir).unwrap();
    for out in [&link, &dev, &fifo, &dir] {
        let verbs: [Vec<&str>; 3] = [
            vec!["export", "vmi1.qcow2", "-o", s(out)],
            vec!["extract", "vmi1.qcow2", "-o", s(out)],
            vec!["capture", "--trace", s(&trace), s(&file), "-o", s(out)],
        ];
        for args in verbs {
            let err = failed(&bounded(cmd(&env).args(&args)), &format!("{args:?}"));
            assert!(err.contains("an output may only be"), "{args:?}: {err}");
        }
    }
    let link_meta = fs::symlink_metadata(&link).unwrap();
    assert!(link_meta.file_type().is_symlink());
    assert_eq!(fs::read(&target).unwrap(), b"kept");
    assert!(fs::symlink_metadata(&dev)
        .unwrap()
        .file_type()
        .is_char_device());
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    // Nothing was left beside them either.
    let leftovers: Vec<String> = fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn dash_is_standard_output_and_never_a_file() {
    let env = Env::new();
    let (yolo, file, trace) = stored(&env);
    let out = cmd(&env)
        .current_dir(env.dir.path())
        .args(["export", "vmi1.qcow2", "-o", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, fs::read(&yolo).unwrap());
    let out = cmd(&env)
        .current_dir(env.dir.path())
        .args(["capture", "--trace", s(&trace), s(&file), "-o", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, fs::read(&yolo).unwrap());
    // A sparse extract cannot be a stream; --json and - would collide.
    let err = failed(
        &cmd(&env)
            .current_dir(env.dir.path())
            .args(["extract", "vmi1.qcow2", "-o", "-"])
            .output()
            .unwrap(),
        "extract -o -",
    );
    assert!(err.contains("standard output"), "{err}");
    let err = failed(
        &env.run(&["export", "vmi1.qcow2", "-o", "-", "--json"]),
        "--json -o -",
    );
    assert!(err.contains("--json"), "{err}");
    assert!(!env.path("-").exists());
}

#[test]
fn a_failed_extract_keeps_the_existing_output() {
    let env = Env::new();
    stored(&env);
    let out = env.path("out.sparse");
    fs::write(&out, b"precious").unwrap();
    // EFBIG: a file size limit (SIGXFSZ ignored, as a shell may leave it).
    let result = Command::new("sh")
        .args(["-c", "trap '' XFSZ; ulimit -f 8; exec \"$0\" \"$@\""])
        .arg(BIN)
        .args(["--store", s(&env.store()), "extract", "vmi1.qcow2", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    let err = failed(&result, "extract past the file size limit");
    assert!(err.contains("File too large"), "{err}");
    assert_eq!(fs::read(&out).unwrap(), b"precious");
    let names: Vec<String> = fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
}

#[test]
fn outputs_are_private_or_keep_the_source_mode() {
    let env = Env::new();
    let (_, file, trace) = stored(&env);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    let private = env.path("private.yolo");
    env.ok(&["capture", "--trace", s(&trace), s(&file), "-o", s(&private)]);
    assert_eq!(mode(&private) & 0o077, 0, "a 0600 VMI's boot image");
    let exported = env.path("exported.yolo");
    env.ok(&["export", "vmi1.qcow2", "-o", s(&exported)]);
    assert_eq!(mode(&exported) & 0o077, 0, "export");
    let extracted = env.path("extracted");
    env.ok(&["extract", "vmi1.qcow2", "-o", s(&extracted)]);
    assert_eq!(mode(&extracted) & 0o077, 0, "extract");
    // Replacing an existing world-readable output makes it private too.
    fs::set_permissions(&exported, fs::Permissions::from_mode(0o644)).unwrap();
    env.ok(&["export", "vmi1.qcow2", "-o", s(&exported)]);
    assert_eq!(mode(&exported) & 0o077, 0, "export over a 0644 file");
}

#[test]
fn hostile_names_are_refused_at_capture_import_and_export() {
    let env = Env::new();
    let (yolo, file, trace) = stored(&env);
    for name in [
        "gpj.\u{202E}img",
        "a\u{2066}b",
        " b.img ",
        "b.img ",
        "dir /b.img",
        ".yolo-status",
        "a\\b",
    ] {
        let out = env.path("hostile.yolo");
        let err = failed(
            &env.run(&[
                "capture",
                "--trace",
                s(&trace),
                s(&file),
                "-o",
                s(&out),
                "--name",
                name,
            ]),
            &format!("capture --name {name:?}"),
        );
        assert!(err.contains("invalid name"), "{name:?}: {err}");
        assert!(!out.exists());
        let err = failed(
            &env.run(&["import", "--name", name, s(&yolo)]),
            &format!("import --name {name:?}"),
        );
        assert!(err.contains("invalid name"), "{name:?}: {err}");
    }
    assert_eq!(env.json(&["ls"]).as_array().unwrap().len(), 1);
    // A .yolo naming one VMI twice is one import refuses: never written.
    let twice = env.path("twice.yolo");
    let err = failed(
        &env.run(&["export", "vmi1.qcow2", "vmi1.qcow2", "-o", s(&twice)]),
        "export a a",
    );
    assert!(err.contains("given twice"), "{err}");
    assert!(!twice.exists());
}

#[test]
fn capture_refuses_devices_and_block_size_zero_and_checks_the_trace_first() {
    let env = Env::new();
    let trace = env.path("t");
    fs::write(&trace, "0 4096\n").unwrap();
    let out = env.path("o.yolo");
    let err = failed(
        &bounded(cmd(&env).args(["capture", "--trace", s(&trace), "/dev/zero", "-o", s(&out)])),
        "capture /dev/zero",
    );
    assert!(err.contains("not a regular file"), "{err}");
    let file = env.path("f");
    vmi(&file, 0, 4, 0);
    let err = failed(
        &env.run(&[
            "capture",
            "--trace",
            s(&trace),
            s(&file),
            "-o",
            s(&out),
            "--block-size",
            "0",
        ]),
        "--block-size 0",
    );
    assert!(err.contains("block size"), "{err}");
    // A trace that reads past the end of a 4 TiB (sparse) file is refused
    // before the file is hashed, which would take many minutes.
    let huge = env.path("huge.img");
    fs::File::create(&huge).unwrap().set_len(4 << 40).unwrap();
    fs::write(&trace, format!("{} 4096\n", 5u64 << 40)).unwrap();
    let err = failed(
        &bounded(cmd(&env).args(["capture", "--trace", s(&trace), s(&huge), "-o", s(&out)])),
        "capture with a trace past the end",
    );
    assert!(err.contains("past the end"), "{err}");
    assert!(!out.exists());
}

#[test]
fn broken_pipes_are_not_errors() {
    let env = Env::new();
    let (_, file, trace) = stored(&env);
    let verbs: [&[&str]; 7] = [
        &["ls"],
        &["verify"],
        &["ls", "--json"],
        &["stats"],
        &["stats", "--json"],
        &["export", "vmi1.qcow2", "-o", "-"],
        &["capture", "--trace", s(&trace), s(&file), "-o", "-"],
    ];
    for args in verbs {
        let out = cmd(&env)
            .args(args)
            .stdout(closed_pipe())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert!(out.status.success(), "{args:?} into a closed pipe: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn import_says_what_happened_once_and_clearly() {
    let env = Env::new();
    // An empty store: ratios of nothing are not 0x.
    env.ok(&["init"]);
    let stats = env.ok(&["stats"]);
    assert!(!stats.contains("0.00x"), "{stats}");
    // The error's text is not repeated.
    let missing = env.path("missing.yolo");
    let err = failed(
        &env.run(&["import", s(&missing)]),
        "import of a missing file",
    );
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
    assert_eq!(err.matches("missing.yolo").count(), 1, "{err}");
    let dir = env.path("adir");
    fs::create_dir(&dir).unwrap();
    let err = failed(&env.run(&["import", s(&dir)]), "import of a directory");
    assert!(err.contains("not a regular file"), "{err}");
    // A FIFO given by mistake is refused, not waited on.
    let fifo = env.path("fifo.yolo");
    mkfifo(&fifo);
    let err = failed(
        &bounded(cmd(&env).args(["import", s(&fifo)])),
        "import of a FIFO",
    );
    assert!(err.contains("not a regular file"), "{err}");
    // Everything failed: an error, and no "imported 0 VMI(s)".
    let bad = env.path("bad.yolo");
    fs::write(&bad, b"garbage").unwrap();
    let out = env.run(&["import", s(&bad)]);
    let err = failed(&out, "import of garbage only");
    assert!(err.contains("nothing imported"), "{err}");
    assert!(!text(&out.stdout).contains("imported 0"));
    // --json names each failed file and why.
    let file = env.path("vmi1.qcow2");
    vmi(&file, 1, 96, 40);
    let yolo = capture_blocks(&env, &file, &boot_blocks());
    let out = env.run(&["import", "--json", s(&bad), s(&yolo)]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["failed"][0]["file"], s(&bad));
    assert!(report["failed"][0]["error"]
        .as_str()
        .unwrap()
        .contains("invalid boot image"));
    // One file given twice is one VMI, imported once.
    let report = env.json(&["import", s(&yolo), s(&yolo)]);
    assert_eq!(report["total"]["names"].as_array().unwrap().len(), 1);
    assert_eq!(report["imports"].as_array().unwrap().len(), 1);
    assert_eq!(report["replaced"].as_array().unwrap().len(), 0);
    // Another boot image under an existing name: said, not silent.
    let other = env.path("other.qcow2");
    vmi(&other, 2, 96, 40);
    let other_yolo = capture_blocks(&env, &other, &[0, 1, 2]);
    let out = env.run(&["import", "--name", "vmi1.qcow2", s(&other_yolo)]);
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("replaced the boot image of \"vmi1.qcow2\""),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn json_on_every_data_verb_and_store_only_where_used() {
    let env = Env::new();
    let (_, file, trace) = stored(&env);
    for verb in [
        "capture", "import", "ls", "stats", "export", "extract", "rm", "gc", "push", "pull",
        "verify",
    ] {
        let help = env.ok(&[verb, "--help"]);
        let line = help.lines().find(|l| l.contains("--json"));
        assert!(
            line.is_some_and(|l| l.contains("JSON")),
            "{verb} --help: {help}"
        );
    }
    for verb in ["capture", "record", "status"] {
        let help = env.ok(&[verb, "--help"]);
        assert!(!help.contains("--store"), "{verb} --help: {help}");
    }
    assert!(env.ok(&["import", "--help"]).contains("--store"));
    let out = env.path("o.yolo");
    let captured = env.json(&["capture", "--trace", s(&trace), s(&file), "-o", s(&out)]);
    assert_eq!(captured["name"], "vmi1.qcow2");
    assert_eq!(
        env.json(&["export", "vmi1.qcow2", "-o", s(&out)])["names"][0],
        "vmi1.qcow2"
    );
    let sparse = env.path("sparse");
    assert_eq!(
        env.json(&["extract", "vmi1.qcow2", "-o", s(&sparse)])["name"],
        "vmi1.qcow2"
    );
    assert_eq!(env.json(&["rm", "vmi1.qcow2"])["removed"][0], "vmi1.qcow2");
    // --store is also taken after the verb.
    let ls = Command::new(BIN)
        .args(["ls", "--json", "--store", s(&env.store())])
        .output()
        .unwrap();
    assert!(ls.status.success(), "{}", text(&ls.stderr));
}

#[test]
fn gc_with_nothing_to_do_changes_nothing() {
    let env = Env::new();
    stored(&env);
    let listing = || {
        let mut files: Vec<(String, u64)> = fs::read_dir(env.store())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        files.sort();
        files
    };
    let before = listing();
    env.ok(&["gc"]);
    env.ok(&["gc", "--json"]);
    assert_eq!(listing(), before);
}

#[test]
fn push_never_echoes_credentials_given_in_the_url() {
    let env = Env::new();
    stored(&env);
    let out = bounded(cmd(&env).env("AWS_ENDPOINT", "http://127.0.0.1:9").args([
        "push",
        "--remote",
        "s3://AKIAEXAMPLE:s3cr3t@bucket/prefix",
    ]));
    let err = failed(&out, "push with credentials in the URL");
    let all = format!("{}{err}", text(&out.stdout));
    assert!(
        !all.contains("s3cr3t") && !all.contains("AKIAEXAMPLE"),
        "{all}"
    );
    assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
}

/// An images directory holding `vmi1.qcow2`, with its boot image stored.
fn images(env: &Env) -> PathBuf {
    let images = env.path("images");
    fs::create_dir_all(&images).unwrap();
    let file = images.join("vmi1.qcow2");
    vmi(&file, 1, 96, 40);
    let yolo = capture_blocks(env, &file, &boot_blocks());
    env.ok(&["import", s(&yolo)]);
    images
}

/// The store's files, but for the one a mount keeps there on purpose (the
/// boot images it verified): a mount only reads the store.
fn store_files(env: &Env) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(env.store())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "verified-blocks")
        .collect();
    names.sort();
    names
}

#[test]
fn mounts_that_would_serve_themselves_or_nothing_are_refused() {
    let env = Env::new();
    let images = images(&env);
    let before = store_files(&env);
    let mnt = env.path("mnt");
    fs::create_dir_all(mnt.join("sub")).unwrap();
    fs::create_dir_all(images.join("mnt")).unwrap();
    let out_dir = env.path("rec");
    // Checked before anything is mounted: were these mounted, every request
    // would wait on the mount itself and the daemon could not be killed.
    let overlapping = [
        (images.clone(), images.clone()),
        (mnt.join("sub"), mnt.clone()),
        (images.clone(), images.join("mnt")),
    ];
    for (imgs, point) in &overlapping {
        for verb in ["mount", "record"] {
            let mut c = cmd(&env);
            c.args([verb, "--images", s(imgs), s(point)]);
            if verb == "record" {
                c.args(["-o", s(&out_dir)]);
            }
            let err = failed(&bounded(&mut c), &format!("{verb} {imgs:?} {point:?}"));
            assert!(err.contains("overlap"), "{err}");
        }
    }
    // --images must be a directory; a missing mountpoint is refused before
    // the store is opened.
    let err = failed(
        &bounded(cmd(&env).args(["mount", "--images", s(&images.join("vmi1.qcow2")), s(&mnt)])),
        "--images FILE",
    );
    assert!(err.contains("not a directory"), "{err}");
    let err = failed(
        &bounded(cmd(&env).args(["mount", "--images", s(&images), s(&env.path("nowhere"))])),
        "a missing mountpoint",
    );
    assert!(err.contains("mountpoint"), "{err}");
    assert_eq!(store_files(&env), before);
}

#[test]
fn a_directory_replaced_by_a_symlink_is_not_followed() {
    let env = Env::new();
    let images = images(&env);
    fs::create_dir(images.join("d3")).unwrap();
    fs::write(images.join("d3/inner"), b"inside").unwrap();
    let outside = env.path("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"TOP SECRET").unwrap();
    let mount = Mount::start(&env, "mount", &images, &env.path("mnt"), &[]);
    assert_eq!(fs::read_dir(mount.file("d3")).unwrap().count(), 1);
    // The mount has seen d3; now it becomes a link to a directory outside.
    fs::remove_dir_all(images.join("d3")).unwrap();
    symlink(&outside, images.join("d3")).unwrap();
    let listed: Vec<String> = fs::read_dir(mount.file("d3"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(!listed.contains(&"secret".to_string()), "{listed:?}");
    assert!(fs::metadata(mount.file("d3/secret")).is_err());
    assert!(fs::read(mount.file("d3/secret")).is_err());
    mount.unmount();
}

#[test]
fn status_reads_only_a_yolo_store_mount() {
    let env = Env::new();
    let images = images(&env);
    let secret = env.path("secret");
    fs::write(&secret, b"TOP SECRET").unwrap();
    let planted = env.path("planted");
    fs::create_dir(&planted).unwrap();
    symlink(&secret, planted.join(".yolo-status")).unwrap();
    let plain = env.path("plain");
    fs::create_dir(&plain).unwrap();
    fs::write(plain.join(".yolo-status"), b"TOP SECRET").unwrap();
    let mount = Mount::start(&env, "mount", &images, &env.path("mnt"), &[]);
    let link = env.path("link-to-mnt");
    symlink(&mount.point, &link).unwrap();
    for dir in [&planted, &plain, &link] {
        let out = env.run(&["status", s(dir)]);
        let err = failed(&out, &format!("status {dir:?}"));
        assert!(err.contains("not a yolo-store mount"), "{err}");
        assert!(!text(&out.stdout).contains("TOP SECRET"));
    }
    let status: serde_json::Value =
        serde_json::from_str(&env.ok(&["status", s(&mount.point)])).unwrap();
    assert!(status["reads"].is_u64(), "{status}");
    let out = cmd(&env)
        .args(["status", s(&mount.point)])
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    mount.unmount();
}

#[test]
fn a_fifo_named_like_a_vmi_does_not_block_the_mount() {
    let env = Env::new();
    let images = images(&env);
    fs::remove_file(images.join("vmi1.qcow2")).unwrap();
    mkfifo(&images.join("vmi1.qcow2"));
    // Mount::start waits for startup_verification_done: a FIFO opened
    // without O_NONBLOCK kept it false for good.
    let mount = Mount::start(&env, "mount", &images, &env.path("mnt"), &[]);
    assert!(fs::read(mount.file("vmi1.qcow2")).is_err());
    let status = mount.status();
    assert_eq!(status["identities_pending"], 0, "{status}");
    mount.unmount();
}

#[test]
fn a_mount_killed_or_unmounted_leaves_nothing_in_the_store() {
    let env = Env::new();
    let images = images(&env);
    let before = store_files(&env);
    let mount = Mount::start(&env, "mount", &images, &env.path("mnt"), &[]);
    mount.kill_hard();
    assert_eq!(store_files(&env), before);
    let mount = Mount::start(&env, "mount", &images, &env.path("mnt2"), &[]);
    mount.unmount();
    assert_eq!(store_files(&env), before);
}
