//! Replays the fuzzers' corpus (store/fuzz/corpus, kept in the repository)
//! through the parsers on every test run, without libFuzzer: every input
//! the fuzzers found interesting must still be handled without a panic, and
//! a boot image the reader accepts must write back to its own bytes.

use std::path::Path;

use yolo_store_format::trace::{blocks_in_access_order, parse_trace};
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
fn the_yolo_reader_handles_its_corpus() {
    let mut accepted = 0;
    for bytes in inputs("yolo_reader") {
        if let Ok(image) = BootImage::read(&bytes[..], bytes.len() as u64) {
            let mut out = Vec::new();
            image.write_to(&mut out).expect("write back");
            assert!(out == bytes);
            accepted += 1;
        }
    }
    assert!(accepted >= 3, "the seed boot images parse");
}

#[test]
fn the_trace_parser_handles_its_corpus() {
    for bytes in inputs("trace_parser") {
        let text = &bytes[bytes.len().min(8)..];
        if let Ok(reads) = parse_trace(text) {
            let _ = blocks_in_access_order(&reads, 1 << 20, 4096);
        }
    }
}
