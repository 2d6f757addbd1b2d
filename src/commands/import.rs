use std::path::{Path, PathBuf};
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use yolo_store_core::{import, BootImage, ImportOptions, ImportReport, Store};

use crate::commands::wait_for_writer;
use crate::human;

#[derive(clap::Args)]
pub struct Args {
    /// Boot images (.yolo) to import.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Register the boot image under this VMI name (one single-file image).
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    json: bool,
}

pub fn run(path: &Path, args: Args) -> anyhow::Result<ExitCode> {
    if args.name.is_some() && args.files.len() != 1 {
        anyhow::bail!("--name applies to a single boot image");
    }
    // Opened at the first boot image that parses: an import that fails
    // makes no store.
    let mut store = None;
    let total: u64 = args
        .files
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
    let mut failed = 0;
    let mut done = 0u64;
    for file in &args.files {
        bar.set_message(file.display().to_string());
        let result = match BootImage::open(file) {
            Ok(image) => {
                let store = match &mut store {
                    Some(store) => store,
                    None => {
                        store.insert(wait_for_writer(path, || Store::open_or_create(path, None))?)
                    }
                };
                import_one(store, &image, args.name.as_deref(), &bar, done)
            }
            Err(e) => Err(e.into()),
        };
        done += std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        bar.set_position(done);
        match result {
            Ok(report) => reports.push(report),
            Err(err) => {
                failed += 1;
                bar.suspend(|| eprintln!("yolo-store: error: {}: {err:#}", file.display()));
            }
        }
    }
    bar.finish_and_clear();
    let total = sum(&reports);
    if args.json {
        crate::commands::print_json(
            &serde_json::json!({ "imports": reports, "total": total, "failed": failed }),
        )?;
    } else {
        println!(
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
    if failed > 0 {
        eprintln!(
            "yolo-store: {failed} of {} boot image(s) failed; the store is unchanged for those",
            args.files.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn import_one(
    store: &Store,
    image: &BootImage,
    name: Option<&str>,
    bar: &ProgressBar,
    base: u64,
) -> anyhow::Result<ImportReport> {
    bar.set_position(base);
    let progress = |n: u64| bar.set_position(base + n);
    Ok(import(
        store,
        image,
        &ImportOptions {
            name,
            progress: Some(&progress),
        },
    )?)
}

fn sum(reports: &[ImportReport]) -> ImportReport {
    let mut total = ImportReport::default();
    for r in reports {
        total.names.extend(r.names.iter().cloned());
        total.logical_bytes += r.logical_bytes;
        total.chunks += r.chunks;
        total.new_chunks += r.new_chunks;
        total.new_raw_bytes += r.new_raw_bytes;
        total.new_stored_bytes += r.new_stored_bytes;
    }
    total
}
