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
    Ok(yolo_mount_point(dev)?.is_some())
}

/// Where device `dev` is mounted, if it is a yolo-store filesystem.
pub fn yolo_mount_point(dev: u64) -> anyhow::Result<Option<PathBuf>> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let wanted = format!("{}:{}", libc::major(dev), libc::minor(dev));
    // Fields: id parent MAJOR:MINOR root point options [optional...] - FSTYPE SOURCE super
    Ok(mountinfo.lines().find_map(|line| {
        let mut fields = line.split(' ');
        let device = fields.nth(2);
        let point = fields.nth(1)?;
        let mut tail = line.split(" - ").nth(1).unwrap_or("").split(' ');
        let (fstype, source) = (tail.next().unwrap_or(""), tail.next());
        (device == Some(wanted.as_str()) && FSTYPES.contains(&fstype) && source == Some(SOURCE))
            .then(|| PathBuf::from(unescape_octal(point)))
    }))
}

/// mountinfo writes a space, tab, newline and backslash in a path as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], code) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(super::unescape_octal(r"/mnt/a\040b\134c"), r"/mnt/a b\c");
        assert_eq!(super::unescape_octal(r"/plain\9"), r"/plain\9");
    }
}
