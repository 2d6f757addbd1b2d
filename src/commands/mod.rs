//! One module per verb. Each has an `Args` (clap) and a `run` that calls
//! the library and prints the result, as text or as JSON.

pub mod capture;
pub mod export;
pub mod extract;
pub mod gc;
pub mod import;
pub mod init;
pub mod ls;
pub mod rm;
pub mod stats;
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
        Command::Verify(args) => verify::run(store, args),
    }
}

/// Opens the store for a verb that changes it.
pub fn open_for_writing(path: &Path) -> anyhow::Result<Store> {
    Store::open(path).with_context(|| format!("opening store {}", path.display()))
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
