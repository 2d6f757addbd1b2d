//! Two nodes share boot images through a real Ceph RADOS Gateway on
//! 127.0.0.1 (scripts/ceph-rgw.sh; needs ceph-mon, ceph-osd, radosgw and
//! ceph-common, which scripts/setup.sh ceph installs). Two stores on this
//! machine are the two nodes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{capture_blocks, vmi, Env, Gateway, Mount, BIN};

const BUCKET: &str = "yolo-test";
const RGW_PORT: u16 = 17480;

/// The cluster, with the helpers these tests drive it by.
struct Ceph {
    gateway: Gateway,
}

impl Ceph {
    fn start(dir: PathBuf) -> Ceph {
        Ceph {
            gateway: Gateway::start(dir, BUCKET, RGW_PORT, 16789),
        }
    }

    /// Runs `yolo-store --store NODE ARGS...` with the S3 credentials.
    fn run(&self, node: &Path, args: &[&str]) -> Output {
        self.command(node, args).output().expect("run yolo-store")
    }

    fn command(&self, node: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--store").arg(node).args(args);
        for (k, v) in &self.gateway.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn ok(&self, node: &Path, args: &[&str]) -> String {
        let out = self.run(node, args);
        assert!(
            out.status.success(),
            "yolo-store {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, node: &Path, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(node, &all)).expect("JSON output")
    }

    /// Overwrites a remote object with `body`, behind yolo-store's back.
    fn put_object(&self, key: &str, body: &[u8]) {
        let file = self.gateway.dir.join("tampered");
        std::fs::write(&file, body).expect("write body");
        let sha = Command::new("sha256sum")
            .arg(&file)
            .output()
            .expect("sha256sum");
        let sha = String::from_utf8_lossy(&sha.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let key_id = self.var("AWS_ACCESS_KEY_ID");
        let secret = self.var("AWS_SECRET_ACCESS_KEY");
        let status = Command::new("curl")
            .args(["-fsS", "-X", "PUT", "--aws-sigv4", "aws:amz:us-east-1:s3"])
            .arg("-H")
            .arg(format!("x-amz-content-sha256: {sha}"))
            .arg("--user")
            .arg(format!("{key_id}:{secret}"))
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .arg(format!("http://127.0.0.1:{RGW_PORT}/{BUCKET}/{key}"))
            .status()
            .expect("curl");
        assert!(status.success(), "PUT {key}");
    }

    fn var(&self, name: &str) -> String {
        self.gateway
            .env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
}

/// Boot images of a family: `n` VMIs on one base, the i-th with `own`
/// blocks of its own, captured from real files with `capture`.
fn family(env: &Env, names: &[&str], first_variant: u64, own: usize) -> Vec<PathBuf> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let file = env.path(name);
            vmi(&file, first_variant + i as u64, 96, own);
            let blocks: Vec<u64> = (0..(96 + own as u64)).collect();
            capture_blocks(env, &file, &blocks)
        })
        .collect()
}

fn export(ceph: &Ceph, node: &Path, name: &str, out: &Path) -> Vec<u8> {
    ceph.ok(node, &["export", name, "-o", out.to_str().expect("utf-8")]);
    std::fs::read(out).expect("read export")
}

fn n(value: &serde_json::Value, field: &str) -> u64 {
    value[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {value}"))
}

/// Runs `args` and SIGKILLs it after `ms` milliseconds; true if it was
/// killed before it finished.
fn kill_after(ceph: &Ceph, node: &Path, args: &[&str], ms: u64) -> bool {
    let mut child = ceph
        .command(node, args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(ms));
    let finished = matches!(child.try_wait(), Ok(Some(_)));
    let _ = child.kill();
    let _ = child.wait();
    !finished
}

#[test]
fn two_nodes_share_a_family_through_ceph() {
    let env = Env::new();
    let ceph = Ceph::start(env.path("ceph"));
    let remote = format!("s3://{BUCKET}/family");
    let r = remote.as_str();
    // Node B's store is the one `Mount` serves.
    let (a, b) = (env.path("node-a"), env.store());

    // Node A imports four VMIs of a family and pushes them; node B pulls.
    let images = family(&env, &["base.img", "web.img", "db.img", "py.img"], 1, 40);
    let mut import = vec!["import"];
    import.extend(images.iter().map(|p| p.to_str().expect("utf-8")));
    ceph.ok(&a, &import);
    let pushed = ceph.json(&a, &["push", "--remote", r]);
    assert_eq!(n(&pushed, "manifests_uploaded"), 4);
    let pulled = ceph.json(&b, &["pull", "--remote", r]);
    assert_eq!(pulled["names"].as_array().map(Vec::len), Some(4));
    assert_eq!(
        n(&pulled, "downloaded_chunks"),
        n(&pushed, "uploaded_chunks")
    );
    for name in ["base.img", "web.img", "db.img", "py.img"] {
        let ours = export(&ceph, &a, name, &env.path("a.yolo"));
        let theirs = export(&ceph, &b, name, &env.path("b.yolo"));
        assert!(ours == theirs, "{name}: B's boot image differs from A's");
    }

    // The fifth VMI: only the chunks unique to it move, both ways, and B
    // pulls it while its mount serves the family.
    // The mountpoint is outside the images directory (the test's own).
    let point = tempfile::tempdir().expect("tempdir");
    let mount = Mount::start(
        &env,
        "mount",
        env.dir.path(),
        &point.path().join("mnt"),
        &[],
    );
    let fifth = family(&env, &["dev.img"], 5, 40);
    ceph.ok(&a, &["import", fifth[0].to_str().expect("utf-8")]);
    let pushed = ceph.json(&a, &["push", "--remote", r]);
    assert_eq!(n(&pushed, "manifests_uploaded"), 1);
    let unique = n(&pushed, "uploaded_chunks");
    // dev.img's own chunks travel in a pack of their own (kept to corrupt
    // it below).
    let dev_packs = pushed["packs"].as_array().cloned().unwrap_or_default();
    assert_eq!(dev_packs.len(), 1, "{pushed}");
    let dev_pack = dev_packs[0].as_str().unwrap_or_default().to_string();
    let dev_pack_len = n(&pushed, "uploaded_bytes") as usize;
    assert!(unique > 0 && n(&pushed, "present_chunks") > unique);
    let pulled = ceph.json(&b, &["pull", "--remote", r]);
    assert_eq!(n(&pulled, "downloaded_chunks"), unique);
    assert_eq!(pulled["unchanged"].as_array().map(Vec::len), Some(4));
    let dev = std::fs::read(env.path("dev.img")).expect("read dev.img");
    assert!(std::fs::read(mount.file("dev.img")).expect("read through the mount") == dev);
    mount.wait_verified();
    let before = mount.status()["bytes_from_store"].as_u64().unwrap_or(0);
    assert!(std::fs::read(mount.file("dev.img")).expect("read again") == dev);
    let after = mount.status()["bytes_from_store"].as_u64().unwrap_or(0);
    assert!(
        after > before,
        "the pulled boot image is served: {}",
        mount.status()
    );
    mount.unmount();
    println!(
        "fifth VMI: pulled {} chunk bytes + {} manifest bytes ({} chunks); {} raw bytes already here",
        n(&pulled, "downloaded_bytes"),
        n(&pulled, "manifest_bytes"),
        unique,
        n(&pulled, "local_raw_bytes")
    );

    // A second pull moves nothing.
    let again = ceph.json(&b, &["pull", "--remote", r]);
    assert_eq!(n(&again, "downloaded_bytes"), 0);
    assert_eq!(n(&again, "manifest_bytes"), 0);
    assert_eq!(again["unchanged"].as_array().map(Vec::len), Some(5));

    // A killed push, then a killed pull, each run again to completion. A
    // large VMI of its own makes the transfers long enough to interrupt.
    let big = family(&env, &["big.img"], 9, 12000);
    ceph.ok(&a, &["import", big[0].to_str().expect("utf-8")]);
    let push = ["push", "--remote", r];
    assert!(
        [300, 700, 1200, 2000]
            .iter()
            .any(|&ms| kill_after(&ceph, &a, &push, ms)),
        "the push always finished before it was killed"
    );
    let resumed = ceph.json(&a, &["push", "--remote", r]);
    println!("resumed push: {resumed}");
    assert_eq!(n(&resumed, "manifests_uploaded"), 1);
    let total = n(&resumed, "uploaded_chunks") + n(&resumed, "present_chunks");
    assert_eq!(total, n(&resumed, "chunks"));
    let pull = ["pull", "--remote", r];
    assert!(
        // Ascending: a pull that finished leaves nothing for the next try.
        [150, 300, 600, 1200, 2500]
            .iter()
            .any(|&ms| kill_after(&ceph, &b, &pull, ms)),
        "the pull always finished before it was killed"
    );
    ceph.ok(&b, &["verify"]);
    let listed = ceph.json(&b, &["ls"]).to_string();
    assert!(
        !listed.contains("big.img"),
        "registered by a killed pull: {listed}"
    );
    let resumed = ceph.json(&b, &["pull", "--remote", r]);
    println!("resumed pull: {resumed}");
    assert!(ceph.ok(&b, &["verify"]).contains("clean"));
    let ours = export(&ceph, &a, "big.img", &env.path("a.yolo"));
    let theirs = export(&ceph, &b, "big.img", &env.path("b.yolo"));
    assert!(
        ours == theirs,
        "big.img differs after the resumed transfers"
    );

    // A remote object corrupted on purpose is refused and named; the VMIs
    // that do not use it arrive.
    let c = env.path("node-c");
    // dev.img's pack, overwritten with bytes of the same length: every
    // chunk in it fails its check.
    ceph.put_object(&format!("family/{dev_pack}"), &vec![1u8; dev_pack_len]);
    let out = ceph.run(&c, &["pull", "--remote", r]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a corrupt object must fail the pull");
    assert!(
        stderr.contains("refused dev.img") && stderr.contains(&dev_pack),
        "{stderr}"
    );
    assert!(ceph.ok(&c, &["verify"]).contains("clean"));
    assert_eq!(ceph.json(&c, &["ls"]).as_array().map(Vec::len), Some(5));

    // Remote gc. web.img changes on A: its old own chunks are a small part
    // of a shared pack, not worth a repack. big.img changes too: its old
    // packs hold only its own chunks, and go once older than the grace
    // period (0 here). B's next pull still completes.
    let changed = family(&env, &["web.img"], 20, 40);
    ceph.ok(&a, &["import", changed[0].to_str().expect("utf-8")]);
    let big2 = family(&env, &["big.img"], 30, 2000);
    ceph.ok(&a, &["import", big2[0].to_str().expect("utf-8")]);
    ceph.ok(&a, &["push", "--remote", r]);
    let kept = ceph.json(&a, &["gc", "--remote", r, "--dry-run"]);
    assert!(n(&kept["plan"], "young_chunks") >= 12040, "{kept}");
    assert_eq!(kept["plan"]["chunks"].as_array().map(Vec::len), Some(0));
    let collected = ceph.json(&a, &["gc", "--remote", r, "--grace", "0s"]);
    assert!(n(&collected, "deleted_chunks") >= 12000, "{collected}");
    assert!(n(&collected, "deleted_packs") >= 1, "{collected}");
    assert!(
        n(&collected["plan"], "kept_dead_chunks") >= 40,
        "{collected}"
    );
    ceph.ok(&b, &["pull", "--remote", r]);
    for name in ["web.img", "big.img"] {
        let ours = export(&ceph, &a, name, &env.path("a.yolo"));
        let theirs = export(&ceph, &b, name, &env.path("b.yolo"));
        assert!(ours == theirs, "{name} differs after remote gc");
    }
    assert!(ceph.ok(&b, &["verify"]).contains("clean"));
}
