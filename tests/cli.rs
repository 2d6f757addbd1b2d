//! The verbs that fill and inspect a store, driven through the real binary
//! on a real RocksDB store.

mod common;

use std::fs;

use common::{boot_blocks, capture_blocks, vmi, Env};

/// Capture a boot image of variant `v`: blocks touched in a scrambled order
/// that covers most of the shared base and some of its own blocks.
fn capture(env: &Env, v: u64) -> (String, Vec<u8>) {
    let path = env.path(&format!("vmi{v}.qcow2"));
    let data = vmi(&path, v, 96, 40);
    let yolo = capture_blocks(env, &path, &boot_blocks());
    (yolo.to_str().unwrap().to_string(), data)
}

#[test]
fn import_export_round_trip_is_byte_identical() {
    let env = Env::new();
    let (yolo, _) = capture(&env, 1);
    let report = env.json(&["import", &yolo]);
    assert_eq!(report["total"]["names"][0], "vmi1.qcow2");
    let exported = env.path("out.yolo");
    env.ok(&["export", "vmi1.qcow2", "-o", exported.to_str().unwrap()]);
    assert_eq!(fs::read(&yolo).unwrap(), fs::read(&exported).unwrap());
}

#[test]
fn extract_equals_the_source_at_every_recorded_block() {
    let env = Env::new();
    let (yolo, data) = capture(&env, 2);
    env.ok(&["import", &yolo]);
    let out = env.path("extracted");
    env.ok(&["extract", "vmi2.qcow2", "-o", out.to_str().unwrap()]);
    let extracted = fs::read(&out).unwrap();
    assert_eq!(extracted.len(), data.len());
    let ls = env.json(&["ls"]);
    assert_eq!(ls[0]["blocks"], 90 + 34 + 1);
    for b in boot_blocks() {
        let r = (b as usize * 4096)..((b as usize + 1) * 4096).min(data.len());
        assert_eq!(extracted[r.clone()], data[r], "block {b}");
    }
    // Blocks 54 and 131 were never read: holes of zeros.
    for hole in [54, 131] {
        assert!(extracted[hole * 4096..(hole + 1) * 4096]
            .iter()
            .all(|&b| b == 0));
    }
}

#[test]
fn reimport_stores_nothing_new_and_family_deduplicates() {
    let env = Env::new();
    let (a, _) = capture(&env, 1);
    let (b, _) = capture(&env, 2);
    let first = env.json(&["import", &a]);
    assert!(first["total"]["new_chunks"].as_u64().unwrap() > 0);
    let again = env.json(&["import", &a]);
    assert_eq!(again["total"]["new_chunks"], 0);
    assert_eq!(again["total"]["new_raw_bytes"], 0);
    let second = env.json(&["import", &b]);
    // The 90 shared base blocks (30 of them one repeated text block) dedup.
    let new_raw = second["total"]["new_raw_bytes"].as_u64().unwrap();
    let logical = second["total"]["logical_bytes"].as_u64().unwrap();
    assert!(
        new_raw < logical / 2,
        "only {new_raw} of {logical} deduplicated"
    );
    let stats = env.json(&["stats"]);
    assert_eq!(stats["totals"]["vmis"], 2);
    assert!(stats["totals"]["dedup_ratio"].as_f64().unwrap() > 1.5);
    for vmi in stats["vmis"].as_array().unwrap() {
        assert!(vmi["shared_bytes"].as_u64().unwrap() > 0);
        assert!(vmi["unique_bytes"].as_u64().unwrap() > 0);
    }
    env.ok(&["verify"]);
}

#[test]
fn rm_and_gc_free_space_and_leave_others_intact() {
    let env = Env::new();
    let (a, _) = capture(&env, 1);
    let (b, _) = capture(&env, 2);
    env.ok(&["import", &a, &b]);
    let before = env.json(&["stats"])["totals"].clone();
    env.ok(&["rm", "vmi1.qcow2"]);
    let plan = env.json(&["gc", "--dry-run"])["plan"].clone();
    let planned = plan["chunks"].as_array().unwrap().len();
    assert!(planned > 0);
    // Dry run changes nothing.
    assert_eq!(env.json(&["gc", "--dry-run"])["plan"], plan);
    let gc = env.json(&["gc"]);
    assert_eq!(gc["report"]["deleted_chunks"], planned);
    let after = env.json(&["stats"])["totals"].clone();
    assert!(after["stored_bytes"].as_u64() < before["stored_bytes"].as_u64());
    assert_eq!(after["garbage_chunks"], 0);
    assert!(
        gc["report"]["disk_after"].as_u64() < gc["report"]["disk_before"].as_u64(),
        "gc did not free disk space: {gc}"
    );
    // The survivor still exports byte for byte.
    let out = env.path("b.yolo");
    env.ok(&["export", "vmi2.qcow2", "-o", out.to_str().unwrap()]);
    assert_eq!(fs::read(&b).unwrap(), fs::read(&out).unwrap());
    env.ok(&["verify"]);
    let gone = env.path("gone.yolo");
    assert!(env
        .fails(&["export", "vmi1.qcow2", "-o", gone.to_str().unwrap()])
        .contains("no boot image named"));
    assert!(!gone.exists());
}

#[test]
fn hostile_boot_images_are_refused_and_change_nothing() {
    let env = Env::new();
    let (good, _) = capture(&env, 1);
    env.ok(&["import", &good]);
    let ls_before = env.ok(&["ls", "--json"]);
    let bytes = fs::read(&good).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated header", bytes[..20].to_vec()),
        ("truncated names", bytes[..30].to_vec()),
        ("truncated data", bytes[..bytes.len() / 2].to_vec()),
        ("no trailer", bytes[..bytes.len() - 40].to_vec()),
        ("wrong magic", [b"NOTYOLO!", &bytes[8..]].concat()),
        ("flipped data byte", {
            let mut b = bytes.clone();
            let at = b.len() - 1000;
            b[at] ^= 1;
            b
        }),
    ];
    for (what, data) in cases {
        let path = env.path(&format!("{what}.yolo"));
        fs::write(&path, data).unwrap();
        let err = env.fails(&["import", path.to_str().unwrap()]);
        assert!(err.contains("invalid boot image"), "{what}: {err}");
    }
    assert_eq!(env.ok(&["ls", "--json"]), ls_before);
    env.ok(&["verify"]);
}

#[test]
fn one_bad_file_does_not_stop_the_others() {
    let env = Env::new();
    let (good, _) = capture(&env, 3);
    let bad = env.path("bad.yolo");
    fs::write(&bad, b"garbage").unwrap();
    let out = env.run(&["import", bad.to_str().unwrap(), &good]);
    assert!(!out.status.success());
    assert_eq!(env.json(&["ls"]).as_array().unwrap().len(), 1);
}

#[test]
fn capture_rejects_garbage_traces_with_the_line_number() {
    let env = Env::new();
    vmi(&env.path("f"), 0, 4, 0);
    fs::write(env.path("t"), "0 4096\n# fine\n4096 lots\n").unwrap();
    let err = env.fails(&[
        "capture",
        "--trace",
        env.path("t").to_str().unwrap(),
        env.path("f").to_str().unwrap(),
        "-o",
        env.path("o.yolo").to_str().unwrap(),
    ]);
    assert!(err.contains("line 3"), "{err}");
    assert!(!env.path("o.yolo").exists());
}

#[test]
fn unknown_vmi_and_missing_store_are_clear_errors() {
    let env = Env::new();
    assert!(env.fails(&["ls"]).contains("no store here"));
    let (yolo, _) = capture(&env, 1);
    env.ok(&["import", &yolo]);
    assert!(env
        .fails(&["rm", "nope"])
        .contains("no boot image named \"nope\""));
    assert!(env
        .fails(&["extract", "nope", "-o", "/dev/null"])
        .contains("nope"));
    // rm of a known and an unknown name removes neither.
    env.fails(&["rm", "vmi1.qcow2", "nope"]);
    assert_eq!(env.json(&["ls"]).as_array().unwrap().len(), 1);
}

#[test]
fn store_settings_are_fixed_at_creation() {
    let env = Env::new();
    env.ok(&["init", "--chunking", "fastcdc:2048:8192:32768"]);
    assert!(env
        .fails(&["init", "--chunking", "fixed:4096"])
        .contains("cannot change"));
    let (yolo, _) = capture(&env, 1);
    env.ok(&["import", &yolo]);
    let out = env.path("o.yolo");
    env.ok(&["export", "vmi1.qcow2", "-o", out.to_str().unwrap()]);
    assert_eq!(fs::read(&yolo).unwrap(), fs::read(&out).unwrap());
    assert_eq!(
        env.json(&["stats"])["totals"]["chunking"]["kind"],
        "fastcdc"
    );
}

#[test]
fn store_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.ok(&["init"]);
    let mode = fs::metadata(env.store()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn verify_repair_rebuilds_corrupt_chunks_from_unchanged_vmis_only() {
    let env = Env::new();
    let (y1, _) = capture(&env, 1);
    let (y2, data2) = capture(&env, 2);
    env.ok(&["import", &y1, &y2]);
    let export = |name: &str| {
        let out = env.path("out.yolo");
        env.ok(&["export", name, "-o", out.to_str().unwrap()]);
        fs::read(out).unwrap()
    };
    let (before1, before2) = (export("vmi1.qcow2"), export("vmi2.qcow2"));
    // A chunk both VMIs share (block 0 of the base) and one only vmi2 has
    // (its short last block, read last), both with their bytes inverted.
    let (shared, own) = {
        let store = yolo_store_core::Store::open(&env.store()).unwrap();
        let shared = store.manifest("vmi1.qcow2").unwrap().chunks[0].id;
        let own = store
            .manifest("vmi2.qcow2")
            .unwrap()
            .chunks
            .last()
            .unwrap()
            .id;
        for id in [shared, own] {
            store.corrupt_chunk(&id).unwrap();
        }
        (shared.to_hex(), own.to_hex())
    };
    env.fails(&["verify"]);

    // vmi2's file has changed since: it may not vouch for any chunk.
    let vmi2 = env.path("vmi2.qcow2");
    let mut changed = data2.clone();
    changed[0] ^= 1;
    fs::write(&vmi2, &changed).unwrap();
    let images = env.dir.path().to_str().unwrap().to_string();
    let out = env.run(&["verify", "--repair", "--images", &images]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a chunk is still corrupt");
    assert!(
        stderr.contains(&format!("repaired chunk {shared} from vmi1.qcow2")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("could not repair chunk {own}")),
        "{stderr}"
    );
    assert!(stderr.contains("changed since"), "{stderr}");

    // With the original file back, the last chunk is rebuilt too.
    fs::write(&vmi2, &data2).unwrap();
    let out = env.run(&["verify", "--repair", "--images", &images]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(env.ok(&["verify"]).contains("clean"));
    assert!(export("vmi1.qcow2") == before1 && export("vmi2.qcow2") == before2);
}
