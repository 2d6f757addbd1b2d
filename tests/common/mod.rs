//! Helpers shared by the integration tests: run the real binary against a
//! real store in a temporary directory, and make VMI-like files.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_yolo-store");

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn store(&self) -> PathBuf {
        self.path("store")
    }

    /// Runs `yolo-store --store STORE ARGS...`.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--store")
            .arg(self.store())
            .args(args)
            .output()
            .expect("run yolo-store")
    }

    /// Runs and asserts success, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "yolo-store {args:?} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs and asserts failure, returning stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "yolo-store {args:?} succeeded but should not have:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).expect("JSON output")
    }
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no seed file.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A VMI-like file: `shared` blocks common to every variant (the base OS),
/// then blocks unique to `variant`, with some compressible text mixed in.
pub fn vmi(path: &Path, variant: u64, shared_blocks: usize, own_blocks: usize) -> Vec<u8> {
    let mut data = Vec::new();
    for b in 0..shared_blocks {
        if b % 3 == 0 {
            data.extend(
                format!("base os config line {b}\n")
                    .repeat(200)
                    .bytes()
                    .take(4096),
            );
        } else {
            data.extend(noise(b as u64, 4096));
        }
    }
    data.extend(noise(1000 + variant, own_blocks * 4096 + 1234));
    std::fs::write(path, &data).expect("write vmi");
    data
}

/// A trace touching `blocks` (4 KiB) of a file in the given order, with
/// unaligned offsets and lengths so block rounding is exercised.
pub fn trace(path: &Path, blocks: &[u64]) {
    let mut text = String::from("# test trace\n");
    for (i, b) in blocks.iter().enumerate() {
        let offset = b * 4096 + (i as u64 * 37) % 4000;
        text.push_str(&format!("{offset} {}\n", 1 + (i * 101) % 90));
    }
    std::fs::write(path, text).expect("write trace");
}
