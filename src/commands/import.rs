use std::path::{Path, PathBuf};
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use yolo_store_core::{import, BootImage, ImportOptions, ImportReport, Manifest, Store};

use crate::commands::{print_json, wait_for_writer};
use crate::human;

#[derive(clap::Args)]
pub struct Args {
    /// Boot images (.yolo) to import.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Register the boot image under this VMI name (one single-file image).
    #[arg(long)]
    name: Option<String>,
    /// Print the result as JSON, with each failed file and why.
    #[arg(long)]
    json: bool,
}

pub fn run(path: &Path, args: Args) -> anyhow::Result<ExitCode> {
    if args.name.is_some() && args.files.len() != 1 {
        anyhow::bail!("--name applies to a single boot image");
    }
    let files = distinct_files(&args.files);
    // Opened at the first boot image that parses: an import that fails
    // makes no store.
    let mut store = None;
    let total: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut reports = Vec::new();
    let mut replaced = Vec::new();
    let mut failed = Vec::new();
    let mut done = 0u64;
    for file in &files {
        bar.set_message(file.display().to_string());
        let result = open_image(file).and_then(|image| {
            let store = match &mut store {
                Some(store) => store,
                None => store.insert(wait_for_writer(path, || Store::open_or_create(path, None))?),
            };
            import_one(store, &image, args.name.as_deref(), &bar, done)
        });
        done += std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        bar.set_position(done);
        match result {
            Ok((report, names)) => {
                for name in names {
                    bar.suspend(|| eprintln!("yolo-store: replaced the boot image of {name:?}"));
                    replaced.push(name);
                }
                reports.push(report);
            }
            Err(err) => {
                let error = human::error_text(&err);
                // Name the file unless the error already does.
                let shown = file.display().to_string();
                bar.suspend(|| match error.contains(&shown) {
                    true => eprintln!("yolo-store: error: {error}"),
                    false => eprintln!("yolo-store: error: {shown}: {error}"),
                });
                failed.push(Failure {
                    file: file.clone(),
                    error,
                });
            }
        }
    }
    bar.finish_and_clear();
    let total = sum(&reports);
    if args.json {
        print_json(&serde_json::json!({
            "imports": reports,
            "total": total,
            "replaced": replaced,
            "failed": failed,
        }))?;
    } else if !reports.is_empty() {
        outln!(
            "imported {} VMI(s): {} logical, {} new ({} stored, {} chunks); dedup {}, compression {}",
            total.names.len(),
            human::bytes(total.logical_bytes),
            human::bytes(total.new_raw_bytes),
            human::bytes(total.new_stored_bytes),
            total.new_chunks,
            human::ratio(total.dedup_ratio()),
            human::ratio(total.compression_ratio()),
        );
    }
    if reports.is_empty() {
        anyhow::bail!(
            "nothing imported: {} boot image(s) given, all failed; the store is unchanged",
            failed.len()
        );
    }
    if !failed.is_empty() {
        eprintln!(
            "yolo-store: {} of {} boot image(s) failed; the store is unchanged for those",
            failed.len(),
            files.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `files` without repeats: a file given twice is imported once.
fn distinct_files(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut seen = std::collections::HashSet::new();
    let mut distinct = Vec::new();
    for file in files {
        let key = file.canonicalize().unwrap_or_else(|_| file.clone());
        if seen.insert(key) {
            distinct.push(file.clone());
        } else {
            eprintln!(
                "yolo-store: {} is given more than once; importing it once",
                file.display()
            );
        }
    }
    distinct
}

/// A boot image that could not be imported, and why (for `--json`).
#[derive(Serialize)]
struct Failure {
    file: PathBuf,
    error: String,
}

/// Imports one `.yolo`; returns the report and the names whose existing
/// boot image it replaced with a different one.
/// Reads a `.yolo`. A FIFO or device given by mistake is refused, not
/// waited on.
fn open_image(file: &Path) -> anyhow::Result<BootImage> {
    yolo_store_core::open_regular(file)?;
    Ok(BootImage::open(file)?)
}

fn import_one(
    store: &Store,
    image: &BootImage,
    name: Option<&str>,
    bar: &ProgressBar,
    base: u64,
) -> anyhow::Result<(ImportReport, Vec<String>)> {
    let names: Vec<String> = match name {
        Some(name) => vec![name.to_string()],
        None => image.files.iter().map(|f| f.header.name.clone()).collect(),
    };
    let before: Vec<Option<Manifest>> = names.iter().map(|n| store.manifest(n).ok()).collect();
    bar.set_position(base);
    let progress = |n: u64| bar.set_position(base + n);
    let report = import(
        store,
        image,
        &ImportOptions {
            name,
            progress: Some(&progress),
        },
    )?;
    let mut replaced = Vec::new();
    for (name, old) in names.into_iter().zip(before) {
        if old.is_some_and(|old| store.manifest(&name).ok() != Some(old)) {
            replaced.push(name);
        }
    }
    Ok((report, replaced))
}

/// The reports of several imports as one; a VMI imported twice (the same
/// file given twice) is counted once.
fn sum(reports: &[ImportReport]) -> ImportReport {
    let mut total = ImportReport::default();
    for r in reports {
        for name in &r.names {
            if !total.names.contains(name) {
                total.names.push(name.clone());
            }
        }
        total.logical_bytes += r.logical_bytes;
        total.chunks += r.chunks;
        total.new_chunks += r.new_chunks;
        total.new_raw_bytes += r.new_raw_bytes;
        total.new_stored_bytes += r.new_stored_bytes;
    }
    total
}
