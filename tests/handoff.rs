//! `yolo-store handoff` moves a running QEMU's backing file from the mount
//! to the plain file. A real QEMU (no guest: reads go through QEMU's block
//! layer with HMP `qemu-io`, which checks each read against the pattern
//! written there) and a real mount; needs root, fuse3, qemu-system-x86 and
//! qemu-utils, as the rest of the suite does.

mod common;
#[path = "../src/qmp.rs"]
#[allow(dead_code)]
mod qmp;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{capture_blocks, Env, Mount, BIN};
use qmp::Qmp;
use serde_json::json;

/// What the VMI holds, written with qemu-io: (pattern byte, offset, length).
const PATTERNS: [(u8, u64, u64); 3] = [
    (0x11, 0, 1 << 20),
    (0x22, 8 << 20, 1 << 20),
    (0x44, 40 << 20, 64 << 10),
];

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// An images directory with a qcow2 VMI holding `PATTERNS`, its boot
/// image (the first 256 KiB) in the store, and the mount serving it.
fn setup(env: &Env) -> (PathBuf, Mount) {
    let images = env.path("images");
    fs::create_dir(&images).unwrap();
    let vmi = images.join("vmi.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(&vmi), "64M"]);
    for (pattern, offset, len) in PATTERNS {
        run(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                &format!("write -P {pattern} {offset} {len}"),
                s(&vmi),
            ],
        );
    }
    let yolo = capture_blocks(env, &vmi, &(0..64).collect::<Vec<u64>>());
    env.ok(&["import", s(&yolo)]);
    let mount = Mount::start(env, "mount", &images, &env.path("mnt"), &[]);
    (images, mount)
}

struct Qemu {
    child: Child,
    /// QEMU serves one QMP client at a time: let go before `handoff`.
    qmp: Option<Qmp>,
    log: PathBuf,
    socket: PathBuf,
}

impl Qemu {
    /// QEMU without a machine or guest, stopped, with `block` options.
    fn start(env: &Env, block: &[String]) -> Qemu {
        let socket = env.path("qmp.sock");
        let log = env.path("qemu.log");
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-machine", "none", "-nodefaults", "-display", "none", "-S"])
            .args(["-qmp", &format!("unix:{},server=on,wait=off", s(&socket))])
            .args(block)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-system-x86_64");
        for _ in 0..500 {
            if let Ok(qmp) = Qmp::connect(&socket) {
                return Qemu {
                    child,
                    qmp: Some(qmp),
                    log,
                    socket,
                };
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("QEMU's QMP socket did not come up");
    }

    fn qmp(&mut self) -> &mut Qmp {
        if self.qmp.is_none() {
            self.qmp = Some(Qmp::connect(&self.socket).unwrap());
        }
        self.qmp.as_mut().unwrap()
    }

    /// Runs `yolo-store handoff` on this QEMU.
    fn handoff(&mut self, images: &Path, extra: &[&str]) -> std::process::Output {
        // Closed, and QEMU told so, before the command connects.
        drop(self.qmp.take());
        Command::new(BIN)
            .args(["handoff", "--qmp", s(&self.socket), "--images", s(images)])
            .args(extra)
            .output()
            .expect("yolo-store handoff")
    }

    /// Runs qemu-io on `node`; its report goes to QEMU's standard output.
    fn io(&mut self, node: &str, command: &str) {
        let line = format!("qemu-io {node} \"{command}\"");
        self.qmp()
            .execute("human-monitor-command", json!({ "command-line": line }))
            .unwrap();
    }

    /// Reads every pattern of the VMI through `node`.
    fn read_patterns(&mut self, node: &str) {
        for (pattern, offset, len) in PATTERNS {
            self.io(node, &format!("read -P {pattern} {offset} {len}"));
        }
    }

    /// Quits QEMU and returns what qemu-io printed.
    fn quit(mut self) -> String {
        let _ = self.qmp().execute("quit", json!({}));
        let _ = self.child.wait();
        fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reads(mount: &Mount) -> u64 {
    mount.status()["reads"].as_u64().unwrap()
}

/// The overlay of a VM, backed by the VMI on the mount.
fn overlay(env: &Env, backing: &Path) -> PathBuf {
    let overlay = env.path("overlay.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            s(backing),
            s(&overlay),
        ],
    );
    overlay
}

/// The chain as docs/design.md asks QEMU to be started for handoff.
fn blockdev_chain(backing: &Path, overlay: &Path) -> Vec<String> {
    [
        format!(
            "driver=file,node-name=base-file,filename={},read-only=on",
            s(backing)
        ),
        "driver=qcow2,node-name=base,file=base-file,read-only=on".into(),
        format!("driver=file,node-name=top-file,filename={}", s(overlay)),
        "driver=qcow2,node-name=top,file=top-file,backing=base".into(),
    ]
    .into_iter()
    .flat_map(|spec| ["-blockdev".to_string(), spec])
    .collect()
}

#[test]
fn a_vm_handed_off_reads_the_plain_file_and_outlives_the_mount() {
    let env = Env::new();
    let (images, mount) = setup(&env);
    let backing = mount.file("vmi.qcow2");
    let overlay = overlay(&env, &backing);
    let mut qemu = Qemu::start(&env, &blockdev_chain(&backing, &overlay));
    // A wrong pattern on purpose: proves a failed check shows in the log.
    qemu.io("top", "read -P 0x99 0 4096");
    qemu.read_patterns("top");
    let before = reads(&mount);
    assert!(before > 0, "the VM did not read through the mount");

    // Once QEMU has not read the mount's file for a second.
    let out = qemu.handoff(&images, &["--when-idle", "1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("now reads"), "{stdout}");

    // The VM reads and writes on; the mount sees none of it.
    qemu.read_patterns("top");
    qemu.io("top", "write -P 0x33 2M 64k");
    qemu.io("top", "read -P 0x33 2M 64k");
    assert_eq!(reads(&mount), before);
    // The mount goes away entirely (it would be busy were the file open).
    let unmounted = mount.unmount();
    assert!(
        unmounted.status.success(),
        "{}",
        String::from_utf8_lossy(&unmounted.stderr)
    );
    qemu.read_patterns("top");
    qemu.io("top", "read -P 0x33 2M 64k");
    let log = qemu.quit();
    assert_eq!(
        log.matches("Pattern verification failed").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches(" bytes at offset ").count(),
        // The control, patterns, patterns + write + read after handoff,
        // patterns + read after the unmount: each one done.
        1 + 3 + (3 + 1 + 1) + (3 + 1),
        "{log}"
    );

    // The overlay's header names the plain file: a restart keeps it.
    let info = Command::new("qemu-img")
        .args(["info", "--output=json", s(&overlay)])
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["backing-filename"], s(&images.join("vmi.qcow2")));
}

#[test]
fn chains_handoff_cannot_prove_or_move_are_refused_and_left_alone() {
    let env = Env::new();
    let (images, mount) = setup(&env);
    let backing = mount.file("vmi.qcow2");
    let overlay = overlay(&env, &backing);

    // A copy of the VMI elsewhere has the same bytes but is not the file
    // the mount serves: refused, and the VM still reads through the mount.
    let copy = env.path("copy");
    fs::create_dir(&copy).unwrap();
    fs::copy(images.join("vmi.qcow2"), copy.join("vmi.qcow2")).unwrap();
    let mut qemu = Qemu::start(&env, &blockdev_chain(&backing, &overlay));
    let out = qemu.handoff(&copy, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not the file the mount serves"), "{err}");
    let before = reads(&mount);
    qemu.read_patterns("top");
    assert!(reads(&mount) > before, "the refused handoff changed the VM");
    drop(qemu);

    // A VM started with -drive has nodes without names: refused.
    let drive = format!("file={},if=none,id=d0,format=qcow2", s(&overlay));
    let mut qemu = Qemu::start(&env, &["-drive".to_string(), drive]);
    let out = qemu.handoff(&images, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("-blockdev and a node-name"), "{err}");
    drop(qemu);
    mount.unmount();
}
