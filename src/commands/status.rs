use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use yolo_store_core::{open_file_in, STATUS_FILE};

#[derive(clap::Args)]
pub struct Args {
    /// A running mount (`yolo-store mount` or `record`): the mountpoint
    /// itself, not a symlink to it.
    mountpoint: PathBuf,
}

/// What a yolo-store mount shows in /proc/self/mountinfo: FUSE (with our
/// subtype where the mount helper keeps it) and our source name.
const FSTYPES: [&str; 2] = ["fuse", "fuse.yolo"];
const SOURCE: &str = "yolo-store";

/// Prints the counters of a running mount, read from its virtual status
/// file (JSON). Only a yolo-store mount's own file is read: the mountpoint
/// and the file are opened without following links, and the file must
/// live on a filesystem of our type, so `status` of another directory (or
/// a link to /etc) prints nothing of it.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let body = read_body(&args.mountpoint)?;
    writeln!(std::io::stdout().lock(), "{}", body.trim_end())?;
    Ok(ExitCode::SUCCESS)
}

/// The status of the mount at `mountpoint`, parsed.
pub fn read_status(mountpoint: &Path) -> anyhow::Result<serde_json::Value> {
    let body = read_body(mountpoint)?;
    serde_json::from_str(&body)
        .with_context(|| format!("parsing {}", mountpoint.join(STATUS_FILE).display()))
}

fn read_body(mountpoint: &Path) -> anyhow::Result<String> {
    let not_ours = || {
        format!(
            "{} is not a yolo-store mount (give the mountpoint itself, not a symlink)",
            mountpoint.display()
        )
    };
    let mut file = open_file_in(mountpoint, STATUS_FILE).with_context(not_ours)?;
    let dev = file.metadata().with_context(not_ours)?.dev();
    if !is_yolo_mount(dev)? {
        anyhow::bail!(not_ours());
    }
    let mut body = String::new();
    file.read_to_string(&mut body)
        .with_context(|| format!("reading {}", mountpoint.join(STATUS_FILE).display()))?;
    Ok(body)
}

/// Whether device `dev` is a mounted yolo-store filesystem.
fn is_yolo_mount(dev: u64) -> anyhow::Result<bool> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let wanted = format!("{}:{}", libc::major(dev), libc::minor(dev));
    // Fields: id parent MAJOR:MINOR root point options [optional...] - FSTYPE SOURCE super
    Ok(mountinfo.lines().any(|line| {
        let device = line.split(' ').nth(2);
        let mut tail = line.split(" - ").nth(1).unwrap_or("").split(' ');
        let (fstype, source) = (tail.next().unwrap_or(""), tail.next());
        device == Some(wanted.as_str()) && FSTYPES.contains(&fstype) && source == Some(SOURCE)
    }))
}
