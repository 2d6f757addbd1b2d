//! Replays the fuzzers' corpora (format/fuzz/corpus, kept in the
//! repository) through the fuzz targets' own checks on every test run,
//! without libFuzzer: every input the fuzzers found interesting must still
//! pass, and every target must have a corpus.

use std::path::Path;

use yolo_store_format::fuzzing::TARGETS;
use yolo_store_format::yolo::BootImage;

fn inputs(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    files
        .iter()
        .map(|f| std::fs::read(f).expect("read corpus file"))
        .collect()
}

#[test]
fn every_target_passes_its_corpus() {
    for (target, check) in TARGETS {
        for bytes in inputs(target) {
            check(&bytes);
        }
    }
}

#[test]
fn every_target_has_a_fuzz_binary_and_a_corpus() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for (target, _) in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "{target} is not a fuzz binary"
        );
        assert!(!inputs(target).is_empty());
    }
}

/// The seeds are real boot images: the replay reaches past the checksum.
#[test]
fn the_yolo_corpus_holds_images_the_reader_accepts() {
    let accepted = inputs("yolo_reader")
        .iter()
        .filter(|b| BootImage::read(&b[..], b.len() as u64).is_ok())
        .count();
    assert!(accepted >= 3, "the seed boot images parse");
}
