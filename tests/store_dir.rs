//! Where a store is made, through the real binary: first imports at once
//! into a store that does not exist yet all succeed, and an import that
//! fails leaves no store directory behind.

mod common;

use std::process::Command;

use common::{boot_blocks, capture_blocks, vmi, Env, BIN};

#[test]
fn first_imports_at_once_into_a_new_store_all_succeed() {
    let env = Env::new();
    let images = env.path("images");
    std::fs::create_dir(&images).unwrap();
    let mut yolos = Vec::new();
    for v in 0..3 {
        let file = images.join(format!("vmi{v}.img"));
        vmi(&file, v, 96, 40);
        yolos.push(capture_blocks(&env, &file, &boot_blocks()));
    }
    for round in 0..3 {
        let running: Vec<_> = yolos
            .iter()
            .map(|yolo| {
                Command::new(BIN)
                    .arg("--store")
                    .arg(env.path(&format!("race{round}")))
                    .arg("import")
                    .arg(yolo)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in running {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let ls = Command::new(BIN)
            .arg("--store")
            .arg(env.path(&format!("race{round}")))
            .args(["ls", "--json"])
            .output()
            .unwrap();
        let listed: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
        assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
    }
}

#[test]
fn an_import_that_fails_leaves_no_store_behind() {
    let env = Env::new();
    let bad = env.path("bad.yolo");
    std::fs::write(&bad, b"not a boot image").unwrap();
    env.fails(&["import", bad.to_str().unwrap()]);
    assert!(!env.store().exists(), "a failed import made a store");
}
