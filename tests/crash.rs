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
