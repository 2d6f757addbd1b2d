//! One module per verb. Each has an `Args` (clap) and a `run` that calls
//! the library and prints the result, as text or as JSON.

/// `println!` that returns an error instead of panicking when standard
/// output is closed (`yolo-store ls | head -1`): `main` treats a broken
/// pipe as success.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?;
    }};
}

pub mod capture;
pub mod export;
pub mod extract;
pub mod gc;
pub mod handoff;
pub mod import;
pub mod init;
pub mod ls;
pub mod mount;
pub mod pull;
pub mod push;
pub mod record;
pub mod remote;
pub mod rm;
pub mod stats;
pub mod status;
pub mod verify;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;
use yolo_store_core::Store;

use crate::cli::{Cli, Command};

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let before = cli.store.as_ref();
    match cli.command {
        Command::Init(w) => init::run(&w.store.path(before), w.args),
        Command::Capture(args) => capture::run(args),
        Command::Import(w) => import::run(&w.store.path(before), w.args),
        Command::Ls(w) => ls::run(&w.store.path(before), w.args),
        Command::Stats(w) => stats::run(&w.store.path(before), w.args),
        Command::Export(w) => export::run(&w.store.path(before), w.args),
        Command::Extract(w) => extract::run(&w.store.path(before), w.args),
        Command::Rm(w) => rm::run(&w.store.path(before), w.args),
        Command::Gc(w) => gc::run(&w.store.path(before), w.args),
        Command::Push(w) => push::run(&w.store.path(before), w.args),
        Command::Pull(w) => pull::run(&w.store.path(before), w.args),
        Command::Verify(w) => verify::run(&w.store.path(before), w.args),
        Command::Mount(w) => mount::run(&w.store.path(before), w.args),
        Command::Record(args) => record::run(args),
        Command::Status(args) => status::run(args),
        Command::Handoff(args) => handoff::run(args),
    }
}

/// Opens the store for a verb that changes it.
pub fn open_for_writing(path: &Path) -> anyhow::Result<Store> {
    wait_for_writer(path, || Store::open(path))
}

/// Runs `open` until no other process holds the store for writing: RocksDB
/// admits one writer, and two verbs started together should both finish.
pub fn wait_for_writer(
    path: &Path,
    open: impl Fn() -> yolo_store_core::Result<Store>,
) -> anyhow::Result<Store> {
    let mut told = false;
    loop {
        match open() {
            Err(yolo_store_core::Error::Busy(_)) => {
                if !told {
                    eprintln!("yolo-store: waiting for another process writing the store");
                    told = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other.with_context(|| format!("opening store {}", path.display())),
        }
    }
}

/// Opens the store for a verb that only reads it; works beside a writer.
pub fn open_for_reading(path: &Path) -> anyhow::Result<Store> {
    Store::open_read_only(path).with_context(|| format!("opening store {}", path.display()))
}

/// Prints `value` as pretty JSON. Serialized first, so a closed pipe is a
/// plain I/O error (`main` treats it as success), not a serde error.
pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut body = serde_json::to_vec_pretty(value)?;
    body.push(b'\n');
    std::io::stdout().lock().write_all(&body)?;
    Ok(())
}

/// Prints a verb's one-line summary: on standard output, or on standard
/// error when standard output carries the verb's output itself (`-o -`).
pub fn summary(output: &Path, line: &str) -> anyhow::Result<()> {
    if yolo_store_core::is_stdout(output) {
        eprintln!("yolo-store: {line}");
    } else {
        outln!("{line}");
    }
    Ok(())
}

/// Refuses `--json` with `-o -`: both would go to standard output.
pub fn check_json_output(json: bool, output: &Path) -> anyhow::Result<()> {
    if json && yolo_store_core::is_stdout(output) {
        anyhow::bail!("--json and -o - would both write to standard output; choose one");
    }
    Ok(())
}
