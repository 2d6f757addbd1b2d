//! `yolo-store handoff`: moves a running VM's backing file off the mount,
//! onto the plain file in the images directory (the paper's future work:
//! once booted, a VM no longer needs its boot image). Through QEMU's QMP:
//! a node for the plain file is added, the overlay is reopened on it, the
//! overlay's header is made to name it (so a restart keeps it), and the
//! nodes that read through the mount are deleted.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::{json, Value};
use yolo_store_core::FileVersion;

use crate::commands::status::yolo_mount_point;
use crate::fuse::SOURCE_XATTR;
use crate::qmp::Qmp;

#[derive(clap::Args)]
pub struct Args {
    /// QEMU's QMP socket (`-qmp unix:PATH,server=on,wait=off`).
    #[arg(long, value_name = "PATH")]
    qmp: PathBuf,
    /// The images directory the mount serves: the VM is switched to the
    /// same file there.
    #[arg(long, value_name = "DIR")]
    images: PathBuf,
    /// Wait this long before switching (a boot's reads are over by then).
    #[arg(long, value_name = "SECONDS", conflicts_with = "when_idle")]
    after: Option<u64>,
    /// Switch once the VM has not read its backing file through the mount
    /// for this many seconds in a row.
    #[arg(long, value_name = "SECONDS")]
    when_idle: Option<u64>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let images = args
        .images
        .canonicalize()
        .with_context(|| format!("images directory {}", args.images.display()))?;
    let mut qmp = Qmp::connect(&args.qmp)?;
    let plan = plan(&graph(&mut qmp)?, &mount_place)?;
    if plan.is_empty() {
        outln!("nothing to hand off: no backing file of this VM is on a yolo-store mount");
        return Ok(ExitCode::SUCCESS);
    }
    // Every switch is checked before any is made.
    let mut plain = Vec::new();
    for switch in &plan {
        plain.push(check_same_file(switch, &images)?);
    }
    if let Some(seconds) = args.after {
        std::thread::sleep(Duration::from_secs(seconds));
    }
    if let Some(seconds) = args.when_idle {
        wait_until_idle(&mut qmp, &plan, Duration::from_secs(seconds))?;
    }
    for (switch, plain) in plan.iter().zip(&plain) {
        switch_backing(&mut qmp, switch, plain)?;
        outln!(
            "{}: overlay node '{}' now reads {} (the mount no longer serves this VM's backing file)",
            switch.mount_file.display(),
            switch.overlay,
            plain.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// QEMU's block graph: nodes with their driver and file, and the edges
/// between them.
#[derive(Debug, Default)]
pub struct Graph {
    pub nodes: HashMap<String, Node>,
    /// (parent, child, role): role is "file", "backing", ...
    pub edges: Vec<(String, String, String)>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Node {
    #[serde(rename = "node-name")]
    pub name: String,
    pub drv: String,
    #[serde(rename = "file")]
    pub filename: String,
    pub ro: bool,
}

impl Graph {
    fn parent(&self, child: &str, role: &str) -> Option<&str> {
        self.edges
            .iter()
            .find(|(_, c, r)| c == child && r == role)
            .map(|(p, _, _)| p.as_str())
            .filter(|p| self.nodes.contains_key(*p))
    }

    fn children<'a>(&'a self, parent: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.edges
            .iter()
            .filter(move |(p, _, _)| p == parent)
            .map(|(_, c, r)| (c.as_str(), r.as_str()))
    }

    fn child<'a>(&'a self, parent: &'a str, role: &str) -> Option<&'a str> {
        self.children(parent)
            .find(|(_, r)| *r == role)
            .map(|(c, _)| c)
    }
}

/// One backing file to move: `overlay`'s backing node `backing` (a format
/// node over `file`, or `file` itself for a raw image) reads `mount_file`.
#[derive(Debug, PartialEq)]
pub struct Switch {
    pub overlay: String,
    pub backing: String,
    pub file: String,
    /// The root of the overlay's chain (QMP's `device` for
    /// change-backing-file).
    pub root: String,
    pub mount_file: PathBuf,
    /// `mount_file` relative to its mountpoint.
    pub rel: PathBuf,
}

/// Which backing files to move, or why the chain is not one handoff can
/// move. `place` says whether a filename is on a yolo-store mount, and
/// where relative to its mountpoint.
pub fn plan(
    graph: &Graph,
    place: &dyn Fn(&Path) -> Option<PathBuf>,
) -> anyhow::Result<Vec<Switch>> {
    let mut names: Vec<&String> = graph.nodes.keys().collect();
    names.sort();
    let mut plan = Vec::new();
    for name in names {
        let node = &graph.nodes[name];
        if node.drv != "file" {
            continue;
        }
        let Some(rel) = place(Path::new(&node.filename)) else {
            continue;
        };
        let backing = graph.parent(name, "file").unwrap_or(name);
        let Some(overlay) = graph.parent(backing, "backing") else {
            bail!(
                "{} is on a yolo-store mount but is not the backing file of an overlay (node '{backing}'); handoff moves only read-only backing files",
                node.filename
            );
        };
        for n in [overlay, backing, name.as_str()] {
            if n.starts_with('#') {
                bail!(
                    "node '{n}' has no name of its own: start QEMU with -blockdev and a node-name for every node of the chain (docs/design.md, Handoff)"
                );
            }
        }
        if !graph.nodes[backing].ro {
            bail!(
                "backing node '{backing}' is writable; handoff moves only read-only backing files"
            );
        }
        if let Some((child, role)) = graph
            .children(overlay)
            .find(|(_, r)| !["file", "backing"].contains(r))
        {
            bail!("overlay node '{overlay}' has a '{role}' child ('{child}'); handoff can reopen only a file and a backing");
        }
        if graph.child(overlay, "file").is_none() {
            bail!("overlay node '{overlay}' has no file child");
        }
        let mut root = overlay;
        while let Some(parent) = graph.parent(root, "backing") {
            root = parent;
        }
        plan.push(Switch {
            overlay: overlay.to_string(),
            backing: backing.to_string(),
            file: name.clone(),
            root: root.to_string(),
            mount_file: PathBuf::from(&node.filename),
            rel,
        });
    }
    Ok(plan)
}

fn graph(qmp: &mut Qmp) -> anyhow::Result<Graph> {
    let nodes: Vec<Node> =
        serde_json::from_value(qmp.execute("query-named-block-nodes", json!({ "flat": true }))?)
            .context("reading query-named-block-nodes")?;
    let raw = qmp.execute("x-debug-query-block-graph", json!({}))?;
    // The debug graph names nodes by id; block-driver nodes carry their
    // node name.
    let mut name_of = HashMap::new();
    for n in raw["nodes"].as_array().into_iter().flatten() {
        if let (Some(id), Some(name)) = (n["id"].as_u64(), n["name"].as_str()) {
            name_of.insert(id, name.to_string());
        }
    }
    let mut edges = Vec::new();
    for e in raw["edges"].as_array().into_iter().flatten() {
        let (Some(p), Some(c), Some(role)) = (
            e["parent"].as_u64(),
            e["child"].as_u64(),
            e["name"].as_str(),
        ) else {
            continue;
        };
        if let (Some(p), Some(c)) = (name_of.get(&p), name_of.get(&c)) {
            edges.push((p.clone(), c.clone(), role.to_string()));
        }
    }
    Ok(Graph {
        nodes: nodes.into_iter().map(|n| (n.name.clone(), n)).collect(),
        edges,
    })
}

/// Where `file` is relative to the yolo-store mount it is on, if it is.
fn mount_place(file: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(file).ok()?.dev();
    let point = yolo_mount_point(dev).ok()??;
    let file = file.canonicalize().ok()?;
    file.strip_prefix(&point).ok().map(Path::to_path_buf)
}

/// The plain file for `switch`, once it is known to be the very file the
/// mount serves under that name: same device and inode, size and times.
fn check_same_file(switch: &Switch, images: &Path) -> anyhow::Result<PathBuf> {
    let plain = images.join(&switch.rel);
    let served: FileVersion = source_of(&switch.mount_file)?.parse()?;
    let meta = std::fs::metadata(&plain).with_context(|| format!("{}", plain.display()))?;
    let here = FileVersion::of(&meta);
    if !served.same_file(&here) {
        bail!(
            "{} is not the file the mount serves as {} (is --images the mount's images directory?)",
            plain.display(),
            switch.mount_file.display()
        );
    }
    if served != here {
        bail!(
            "{} changed since the mount saw it; not switching",
            plain.display()
        );
    }
    Ok(plain)
}

/// The mount's [`SOURCE_XATTR`] of `file`.
fn source_of(file: &Path) -> anyhow::Result<String> {
    let path = CString::new(file.as_os_str().as_bytes())?;
    let name = CString::new(SOURCE_XATTR)?;
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and `buf` is writable for its length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("asking the mount which file {} is", file.display()));
    }
    buf.truncate(n as usize);
    Ok(String::from_utf8(buf)?)
}

/// Waits until none of the plan's mount files has been read for `quiet`.
fn wait_until_idle(qmp: &mut Qmp, plan: &[Switch], quiet: Duration) -> anyhow::Result<()> {
    let reads = |qmp: &mut Qmp| -> anyhow::Result<u64> {
        let stats = qmp.execute("query-blockstats", json!({ "query-nodes": true }))?;
        Ok(stats
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| plan.iter().any(|p| s["node-name"] == p.file.as_str()))
            .filter_map(|s| s["stats"]["rd_operations"].as_u64())
            .sum())
    };
    let mut last = reads(qmp)?;
    let mut since = Instant::now();
    while since.elapsed() < quiet {
        std::thread::sleep(Duration::from_millis(500));
        let now = reads(qmp)?;
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    Ok(())
}

fn switch_backing(qmp: &mut Qmp, switch: &Switch, plain: &Path) -> anyhow::Result<()> {
    let graph = graph(qmp)?;
    let node = |name: &str| -> anyhow::Result<Node> {
        graph
            .nodes
            .get(name)
            .cloned()
            .with_context(|| format!("node '{name}' went away"))
    };
    let backing = node(&switch.backing)?;
    let overlay = node(&switch.overlay)?;
    let plain_name = plain.to_string_lossy();
    let new_file = format!("{}-plain", switch.file);
    let new_backing = if switch.backing == switch.file {
        json!({ "driver": "file", "node-name": new_file, "filename": plain_name, "read-only": true })
    } else {
        // The backing keeps its own backing, if it has one.
        let below: Value = graph
            .child(&switch.backing, "backing")
            .map_or(Value::Null, |b| json!(b));
        json!({
            "driver": backing.drv,
            "node-name": format!("{}-plain", switch.backing),
            "read-only": true,
            "backing": below,
            "file": { "driver": "file", "node-name": new_file, "filename": plain_name, "read-only": true },
        })
    };
    let new_name = new_backing["node-name"].clone();
    qmp.execute("blockdev-add", new_backing)?;
    let overlay_file = graph
        .child(&switch.overlay, "file")
        .context("the overlay lost its file")?;
    let reopened = qmp.execute(
        "blockdev-reopen",
        json!({ "options": [{
            "driver": overlay.drv,
            "node-name": switch.overlay,
            "read-only": overlay.ro,
            "file": overlay_file,
            "backing": new_name,
        }] }),
    );
    if let Err(e) = reopened {
        // Leave QEMU as it was: the new node unused is removed again.
        let _ = qmp.execute("blockdev-del", json!({ "node-name": new_name }));
        return Err(e);
    }
    qmp.execute(
        "change-backing-file",
        json!({ "device": switch.root, "image-node-name": switch.overlay, "backing-file": plain_name }),
    )
    .context("the VM reads the plain file now, but its overlay's header still names the mount")?;
    // The old nodes are unused now; deleting them closes the mount's file.
    // A file node created inside its format node goes with it.
    qmp.execute("blockdev-del", json!({ "node-name": switch.backing }))?;
    if switch.file != switch.backing && graph_has(qmp, &switch.file)? {
        qmp.execute("blockdev-del", json!({ "node-name": switch.file }))?;
    }
    Ok(())
}

fn graph_has(qmp: &mut Qmp, name: &str) -> anyhow::Result<bool> {
    Ok(graph(qmp)?.nodes.contains_key(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, drv: &str, file: &str, ro: bool) -> (String, Node) {
        (
            name.to_string(),
            Node {
                name: name.to_string(),
                drv: drv.to_string(),
                filename: file.to_string(),
                ro,
            },
        )
    }

    fn edge(p: &str, c: &str, role: &str) -> (String, String, String) {
        (p.to_string(), c.to_string(), role.to_string())
    }

    fn on_mount(file: &Path) -> Option<PathBuf> {
        file.strip_prefix("/mnt").ok().map(Path::to_path_buf)
    }

    /// overlay (qcow2 on /var/vm) backed by base (qcow2 on the mount).
    fn chain() -> Graph {
        Graph {
            nodes: [
                node("top", "qcow2", "/var/vm/o.qcow2", false),
                node("top-file", "file", "/var/vm/o.qcow2", false),
                node("base", "qcow2", "/mnt/vmi.qcow2", true),
                node("base-file", "file", "/mnt/vmi.qcow2", true),
            ]
            .into(),
            edges: vec![
                edge("top", "top-file", "file"),
                edge("top", "base", "backing"),
                edge("base", "base-file", "file"),
            ],
        }
    }

    #[test]
    fn a_qcow2_chain_on_the_mount_is_moved_and_nothing_else() {
        let plan = plan(&chain(), &on_mount).unwrap();
        assert_eq!(
            plan,
            vec![Switch {
                overlay: "top".into(),
                backing: "base".into(),
                file: "base-file".into(),
                root: "top".into(),
                mount_file: "/mnt/vmi.qcow2".into(),
                rel: "vmi.qcow2".into(),
            }]
        );
        assert!(plan_of(Graph::default()).unwrap().is_empty());
    }

    fn plan_of(graph: Graph) -> anyhow::Result<Vec<Switch>> {
        plan(&graph, &on_mount)
    }

    #[test]
    fn chains_handoff_cannot_move_are_refused_with_the_reason() {
        let refused = |graph: Graph, why: &str| {
            let err = plan_of(graph).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        };
        // Auto-named nodes (-drive): blockdev-reopen needs names.
        let mut g = chain();
        let (_, mut n) = g.nodes.remove_entry("base").unwrap();
        n.name = "#block123".into();
        g.nodes.insert("#block123".into(), n);
        for e in &mut g.edges {
            for end in [&mut e.0, &mut e.1] {
                if end == "base" {
                    *end = "#block123".into();
                }
            }
        }
        refused(g, "node-name");
        // The mount's file used directly by a device, not as a backing.
        let mut g = chain();
        g.edges.retain(|e| e.2 != "backing");
        refused(g, "not the backing file of an overlay");
        // A writable backing.
        let mut g = chain();
        g.nodes.get_mut("base").unwrap().ro = false;
        refused(g, "writable");
        // An overlay with an external data file.
        let mut g = chain();
        g.edges.push(edge("top", "data", "data-file"));
        refused(g, "'data-file' child");
    }
}
