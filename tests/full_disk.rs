//! An import onto a nearly full filesystem fails with a clear message and
//! leaves the store consistent and usable (root: mounts a small tmpfs).

mod common;

use std::fs;
use std::process::Command;

use common::{boot_blocks, capture_blocks, noise, vmi, Env};

/// A tmpfs of `mib` MiB at `path`, unmounted on drop.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn new(path: std::path::PathBuf, mib: u32) -> SmallFs {
        fs::create_dir_all(&path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs needs root");
        SmallFs(path)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_import_clearly_and_loses_nothing() {
    let env = Env::new();
    let small = SmallFs::new(env.path("small"), 24);
    let store = small.0.join("store");
    let run = |args: &[&str]| {
        Command::new(common::BIN)
            .arg("--store")
            .arg(&store)
            .args(args)
            .output()
            .unwrap()
    };
    // A boot image that fits, then one of 64 MiB of incompressible blocks.
    let path = env.path("small.img");
    vmi(&path, 1, 96, 40);
    let fits = capture_blocks(&env, &path, &boot_blocks());
    assert!(run(&["import", fits.to_str().unwrap()]).status.success());
    let big = env.path("big.img");
    fs::write(&big, noise(5, 64 << 20)).unwrap();
    let too_big = capture_blocks(&env, &big, &(0..(64 << 20) / 4096).collect::<Vec<u64>>());

    let out = run(&["import", too_big.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left on device"), "{err}");

    // Consistent, the first boot image intact, and usable once space is back.
    let verify = run(&["verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let exported = env.path("out.yolo");
    assert!(
        run(&["export", "small.img", "-o", exported.to_str().unwrap()])
            .status
            .success()
    );
    assert!(fs::read(&exported).unwrap() == fs::read(&fits).unwrap());
    let ls = String::from_utf8_lossy(&run(&["ls", "--json"]).stdout).into_owned();
    assert!(!ls.contains("big.img"), "{ls}");
    assert!(run(&["gc"]).status.success());
    let again = env.path("again.img");
    vmi(&again, 2, 96, 40);
    let yolo = capture_blocks(&env, &again, &boot_blocks());
    assert!(run(&["import", yolo.to_str().unwrap()]).status.success());
    assert!(run(&["verify"]).status.success());
}
