//! One module per verb. Each has an `Args` (clap) and a `run` that calls
//! the library and prints the result, as text or as JSON.

pub mod capture;
pub mod export;
pub mod extract;
pub mod gc;
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
    let store = cli.store.as_path();
    match cli.command {
        Command::Init(args) => init::run(store, args),
        Command::Capture(args) => capture::run(args),
        Command::Import(args) => import::run(store, args),
        Command::Ls(args) => ls::run(store, args),
        Command::Stats(args) => stats::run(store, args),
        Command::Export(args) => export::run(store, args),
        Command::Extract(args) => extract::run(store, args),
        Command::Rm(args) => rm::run(store, args),
        Command::Gc(args) => gc::run(store, args),
        Command::Push(args) => push::run(store, args),
        Command::Pull(args) => pull::run(store, args),
        Command::Verify(args) => verify::run(store, args),
        Command::Mount(args) => mount::run(store, args),
        Command::Record(args) => record::run(args),
        Command::Status(args) => status::run(args),
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

pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}
