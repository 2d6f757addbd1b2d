//! Killed writers lose nothing: `import`, `rm` and `gc` are killed with
//! SIGKILL at many points; after each kill the store opens, `verify` is
//! clean (every manifest's chunks present, refcounts exact) and the verb,
//! run again, completes.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{capture_blocks, noise, Env, BIN};

/// A boot image of `blocks` distinct blocks, big enough that an import
/// spends a while in each phase (read, hash, compress, write, flush).
fn big_image(env: &Env, name: &str, seed: u64, blocks: u64) -> PathBuf {
    let path = env.path(name);
    let mut data = noise(seed, (blocks * 4096) as usize);
    // Compressible halves, so zstd does real work.
    for block in data.chunks_mut(8192) {
        block[..4096].iter_mut().for_each(|b| *b &= 0x0F);
    }
    std::fs::write(&path, &data).unwrap();
    let order: Vec<u64> = (0..blocks).map(|i| (i * 7919) % blocks).collect();
    capture_blocks(env, &path, &order)
}

/// Runs `yolo-store ARGS` and kills it with SIGKILL after `delay` (if it is
/// still running). True if it was killed.
fn kill_after(env: &Env, args: &[&str], delay: Duration) -> bool {
    let mut child = Command::new(BIN)
        .arg("--store")
        .arg(env.store())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while started.elapsed() < delay {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    true
}

fn timed(env: &Env, args: &[&str]) -> Duration {
    let t = Instant::now();
    env.ok(args);
    t.elapsed()
}

#[test]
fn killed_imports_rms_and_gcs_leave_a_consistent_store() {
    let env = Env::new();
    // b is a's first 6000 blocks (same seed): rm and gc of a must keep them.
    let a = big_image(&env, "a.img", 1, 12_000);
    let b = big_image(&env, "b.img", 1, 6_000);
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    env.ok(&["import", b]);
    let full = timed(&env, &["import", a]);
    env.ok(&["rm", "a.img"]);
    env.ok(&["gc"]);

    let mut killed = 0;
    let trials = 50;
    for i in 0..trials {
        // Spread the kills over the whole run, from process start to end.
        let delay = full.mul_f64(1.1 * f64::from(i) / f64::from(trials));
        killed += u32::from(kill_after(&env, &["import", a], delay));
        let report = env.json(&["verify"]);
        assert_eq!(
            report["problems"],
            serde_json::json!([]),
            "trial {i}: {report}"
        );
        let ls = env.json(&["ls"]);
        assert!(ls.as_array().unwrap().len() <= 2, "trial {i}: {ls}");
        // Either way the import completes when run again, and b is intact.
        env.ok(&["import", a]);
        env.ok(&["verify"]);
        // Back to the state before, alternating the verb that gets killed.
        if i % 2 == 0 {
            killed += u32::from(kill_after(&env, &["rm", "a.img"], full.mul_f64(0.05)));
            env.ok(&["verify"]);
            let _ = env.run(&["rm", "a.img"]);
        } else {
            env.ok(&["rm", "a.img"]);
        }
        killed += u32::from(kill_after(
            &env,
            &["gc"],
            full.mul_f64(0.1 * f64::from(i % 5)),
        ));
        env.ok(&["verify"]);
        env.ok(&["gc"]);
        let stats = env.json(&["stats"]);
        assert_eq!(stats["totals"]["vmis"], 1, "trial {i}");
        assert_eq!(stats["totals"]["garbage_chunks"], 0, "trial {i}");
    }
    eprintln!("{killed} of {} runs were killed part way", trials * 3);
    assert!(
        killed >= trials,
        "too few runs were actually killed: {killed}"
    );
}

#[test]
fn gc_racing_import_never_collects_a_chunk_the_import_uses() {
    let env = Env::new();
    // b is a's first 6000 blocks (same seed, same content).
    let a = big_image(&env, "a.img", 3, 8_000);
    let b = big_image(&env, "b.img", 3, 6_000);
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    for round in 0..20 {
        env.ok(&["import", b]);
        env.ok(&["rm", "b.img"]); // b's chunks are now garbage, refcount 0
                                  // gc wants them; the import of a wants most of them back.
        std::thread::scope(|s| {
            s.spawn(|| env.ok(&["gc"]));
            s.spawn(|| env.ok(&["import", a]));
        });
        let report = env.json(&["verify"]);
        assert_eq!(report["problems"], serde_json::json!([]), "round {round}");
        let out = env.path("a.out");
        env.ok(&["export", "a.img", "-o", out.to_str().unwrap()]);
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(a).unwrap(),
            "round {round}"
        );
        env.ok(&["rm", "a.img"]);
    }
}

/// Two VMIs in the test directory (also the images directory for repair)
/// that share most of their blocks, imported; their `.yolo` files.
fn damaged_store_setup(env: &Env) -> [PathBuf; 2] {
    let a = big_image(env, "a.img", 5, 1_500);
    let b = big_image(env, "b.img", 5, 1_000);
    env.ok(&["import", a.to_str().unwrap(), b.to_str().unwrap()]);
    [a, b]
}

/// Runs a gc that has something to collect, so it compacts: the records
/// then live in table files past level 0, which RocksDB can drop whole.
/// (A gc with nothing to do opens nothing for writing.)
fn compact_with_gc(env: &Env) {
    let c = big_image(env, "c.img", 9, 64);
    env.ok(&["import", c.to_str().unwrap()]);
    env.ok(&["rm", "c.img"]);
    env.ok(&["gc"]);
}

/// Inverts `len` bytes of `path` from `at`, as a failing disk would.
fn flip(path: &std::path::Path, at: u64, len: usize) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, at).unwrap();
    buf.iter_mut().for_each(|b| *b = !*b);
    file.write_all_at(&buf, at).unwrap();
    file.sync_all().unwrap();
}

/// `verify` on a damaged store: fails, but prints every problem and its
/// summary, in text and in JSON.
fn verify_names_damage(env: &Env) -> serde_json::Value {
    let out = env.run(&["verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("PROBLEM: "), "{text}");
    assert!(text.contains("verified 2 manifests"), "{text}");
    let out = env.run(&["verify", "--json"]);
    assert!(!out.status.success());
    serde_json::from_slice(&out.stdout).expect("verify --json prints its report")
}

/// [`repair_restores`] from an empty images directory: what the store
/// holds must be enough.
fn repair_restores_without_images(env: &Env, yolos: &[PathBuf; 2], says: &str) {
    let no_images = env.path("no-images");
    std::fs::create_dir(&no_images).unwrap();
    repair_restores(env, yolos, &no_images, says);
}

/// The problems of `verify --json`'s `report`, which must name records of
/// column family `cf` that RocksDB could not read.
fn problems_naming_unreadable<'a>(
    report: &'a serde_json::Value,
    cf: &str,
) -> &'a [serde_json::Value] {
    let problems = report["problems"].as_array().expect("a problems list");
    assert!(
        problems
            .iter()
            .any(|p| p["problem"] == "unreadable-records" && p["column_family"] == cf),
        "{report}"
    );
    problems
}

/// Repair from the VMI files in `images`, saying `says`, then verify is
/// clean and both VMIs export byte for byte as imported.
fn repair_restores(env: &Env, yolos: &[PathBuf; 2], images: &std::path::Path, says: &str) {
    let images = images.to_str().unwrap();
    let out = env.run(&["verify", "--repair", "--images", images]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains(says), "{stderr}");
    assert!(env.ok(&["verify"]).contains("clean"));
    for (name, yolo) in ["a.img", "b.img"].iter().zip(yolos) {
        let out = env.path("out.yolo");
        env.ok(&["export", name, "-o", out.to_str().unwrap()]);
        assert!(std::fs::read(&out).unwrap() == std::fs::read(yolo).unwrap());
    }
    env.ok(&["gc"]);
    assert!(env.ok(&["verify"]).contains("clean"));
}

/// The store's largest blob file.
fn largest_blob(env: &Env) -> PathBuf {
    std::fs::read_dir(env.store())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "blob"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a blob file")
}

#[test]
fn a_flipped_byte_in_a_blob_file_is_named_and_rebuilt_from_the_vmis() {
    let env = Env::new();
    let yolos = damaged_store_setup(&env);
    let blob = largest_blob(&env);
    let len = std::fs::metadata(&blob).unwrap().len();
    flip(&blob, len / 2, 1);

    let report = verify_names_damage(&env);
    let problems = report["problems"].as_array().unwrap();
    let damaged: Vec<_> = problems
        .iter()
        .filter(|p| p["problem"] == "damaged-pack")
        .collect();
    assert_eq!(damaged.len(), 1, "{report}");
    let chunks = damaged[0]["chunks"].as_array().unwrap();
    assert!(!chunks.is_empty(), "{report}");
    assert!(
        chunks.iter().all(|c| c["used_by"][0] == "a.img"),
        "{report}"
    );
    // verify went on past it: the other packs were read and checked.
    assert!(report["chunks"].as_u64().unwrap() >= 1_000, "{report}");
    repair_restores(&env, &yolos, env.dir.path(), "repaired chunk");
}

/// Flips a byte of column family `cf`'s largest table file, a third of
/// the way in: in a data block (the index and footer are last).
fn flip_in_largest_table(env: &Env, cf: &str) {
    let sst = {
        let store = yolo_store_core::Store::open(&env.store()).unwrap();
        store
            .table_files(cf)
            .unwrap()
            .into_iter()
            .max_by_key(|p| std::fs::metadata(p).unwrap().len())
            .expect("a table file")
    };
    let len = std::fs::metadata(&sst).unwrap().len();
    flip(&sst, len / 3, 1);
}

#[test]
fn a_flipped_byte_in_the_refs_sst_is_named_and_the_records_rebuilt_from_the_packs() {
    let env = Env::new();
    let yolos = damaged_store_setup(&env);
    // gc compacts: the refs records now live in one table file per level.
    compact_with_gc(&env);
    let chunks_before = env.json(&["verify"])["chunks"].clone();
    let stored_before = env.json(&["stats"])["totals"]["stored_bytes"].clone();
    flip_in_largest_table(&env, "refs");

    let report = verify_names_damage(&env);
    let problems = problems_naming_unreadable(&report, "refs");
    // Each chunk in use whose record is lost is named, with where its
    // bytes still are.
    let lost: Vec<_> = problems
        .iter()
        .filter(|p| p["problem"] == "lost-record")
        .collect();
    assert!(!lost.is_empty(), "{report}");
    assert!(
        lost.iter().all(
            |p| p["intact_in"]["pack"].is_u64() && !p["used_by"].as_array().unwrap().is_empty()
        ),
        "{report}"
    );
    // The records are rebuilt from the packs alone: no VMI file needed.
    repair_restores_without_images(&env, &yolos, "repaired the refs record of chunk");
    // No chunk was stored twice, and the records' sizes are as they were.
    assert_eq!(env.json(&["verify"])["chunks"], chunks_before);
    assert_eq!(
        env.json(&["stats"])["totals"]["stored_bytes"],
        stored_before
    );
}

#[test]
fn a_flipped_byte_in_the_numbers_sst_is_named_and_the_records_rewritten_from_refs() {
    let env = Env::new();
    let yolos = damaged_store_setup(&env);
    compact_with_gc(&env);
    flip_in_largest_table(&env, "numbers");

    // Named, and the manifests that name a lost number say so.
    let report = verify_names_damage(&env);
    let problems = problems_naming_unreadable(&report, "numbers");
    assert!(
        problems.iter().any(|p| p["problem"] == "bad-manifest"
            && p["why"].as_str().unwrap().contains("chunk number")),
        "{report}"
    );
    // Every refs record holds its chunk's number: no VMI file is needed.
    repair_restores_without_images(&env, &yolos, "chunk number records from the refs records");
}

#[test]
fn gc_refuses_wrong_refcounts_and_repair_recomputes_them() {
    let env = Env::new();
    let yolos = damaged_store_setup(&env);
    let shared = {
        let store = yolo_store_core::Store::open(&env.store()).unwrap();
        let id = store.manifest("b.img").unwrap().chunks[0].id;
        // Both VMIs use it; the record says nobody does.
        store.set_refcount(&id, 0).unwrap();
        id.to_hex()
    };
    let report = env.run(&["verify", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(
        report["problems"],
        serde_json::json!([{"problem": "refcount-mismatch", "chunk": shared, "recorded": 0, "actual": 2}])
    );
    let err = env.fails(&["gc"]);
    assert!(
        err.contains("gc refused") && err.contains("verify --repair"),
        "{err}"
    );
    assert!(env.fails(&["gc", "--dry-run"]).contains("gc refused"));

    let images = env.dir.path().to_str().unwrap();
    let stderr =
        String::from_utf8_lossy(&env.run(&["verify", "--repair", "--images", images]).stderr)
            .into_owned();
    assert!(
        stderr.contains(&format!("chunk {shared} from 0 to 2")),
        "{stderr}"
    );
    assert!(env.ok(&["verify"]).contains("clean"));
    env.ok(&["gc"]);
    for (name, yolo) in ["a.img", "b.img"].iter().zip(&yolos) {
        let out = env.path("out.yolo");
        env.ok(&["export", name, "-o", out.to_str().unwrap()]);
        assert!(std::fs::read(&out).unwrap() == std::fs::read(yolo).unwrap());
    }
}

#[test]
fn a_flipped_byte_in_the_manifests_sst_is_named_and_repair_changes_no_refcount() {
    let env = Env::new();
    damaged_store_setup(&env);
    env.ok(&["gc"]);
    let before = yolo_store_core::Store::open(&env.store())
        .unwrap()
        .chunk_infos()
        .unwrap();
    flip_in_largest_table(&env, "manifests");

    // Named; and with the manifests unknown, no refcount is called wrong.
    let out = env.run(&["verify", "--json"]);
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = problems_naming_unreadable(&report, "manifests");
    assert!(
        problems.iter().all(|p| p["problem"] != "refcount-mismatch"),
        "{report}"
    );
    // Repair cannot rebuild a manifest; it must not touch the refcounts,
    // and gc must not run.
    let images = env.dir.path().to_str().unwrap();
    env.fails(&["verify", "--repair", "--images", images]);
    env.fails(&["gc"]);
    let store = yolo_store_core::Store::open(&env.store()).unwrap();
    assert!(store.chunk_infos().unwrap() == before);
}

#[test]
fn a_flipped_byte_in_the_packs_sst_is_named_and_rebuilt_from_the_vmis() {
    let env = Env::new();
    let yolos = damaged_store_setup(&env);
    compact_with_gc(&env);
    let sst = {
        let store = yolo_store_core::Store::open(&env.store()).unwrap();
        store
            .table_files("packs")
            .unwrap()
            .into_iter()
            .max_by_key(|p| std::fs::metadata(p).unwrap().len())
            .expect("a packs table file")
    };
    // Inside the first data block, which starts the file: the packs table
    // holds only the blob references, a few hundred bytes.
    flip(&sst, 20, 1);

    let report = verify_names_damage(&env);
    let problems = report["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p["problem"] == "damaged-pack"),
        "{report}"
    );
    // Repaired, the table file is gone too: `gc` (its compaction reads
    // every table) runs in `repair_restores`.
    repair_restores(&env, &yolos, env.dir.path(), "repaired chunk");
}

#[test]
fn a_mount_serves_exact_bytes_past_a_damaged_blob() {
    let env = Env::new();
    // The images directory apart from the mountpoint and the store.
    std::fs::create_dir(env.path("images")).unwrap();
    let yolo = big_image(&env, "images/a.img", 7, 1_500);
    env.ok(&["import", yolo.to_str().unwrap()]);
    let blob = largest_blob(&env);
    flip(&blob, std::fs::metadata(&blob).unwrap().len() / 2, 1);

    let mount = common::Mount::start(&env, "mount", &env.path("images"), &env.path("mnt"), &[]);
    mount.wait_verified();
    let through = std::fs::read(mount.file("a.img")).unwrap();
    assert!(through == std::fs::read(env.path("images/a.img")).unwrap());
    let status = mount.status();
    assert!(status["chunk_failures"].as_u64().unwrap() >= 1, "{status}");
    assert!(status["bytes_from_store"].as_u64().unwrap() > 0, "{status}");
}
