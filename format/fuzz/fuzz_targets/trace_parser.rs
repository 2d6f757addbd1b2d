//! The trace parser on arbitrary text: an error naming a line, or reads
//! that turn into distinct in-file block ids, never a panic. The first 8
//! bytes pick the file size and block size the reads are checked against.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yolo_store_format::trace::{blocks_in_access_order, parse_trace};

fuzz_target!(|data: &[u8]| {
    let (sizes, text) = data.split_at(data.len().min(8));
    let mut raw = [0u8; 8];
    raw[..sizes.len()].copy_from_slice(sizes);
    // Up to 256 MiB: large enough for every branch, small enough that a
    // trace spanning the whole file stays fast to expand.
    let file_size = u64::from(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) >> 4);
    let block_size = 512u32 << (raw[4] % 12);
    let Ok(reads) = parse_trace(text) else {
        return;
    };
    if let Ok(blocks) = blocks_in_access_order(&reads, file_size, block_size) {
        let distinct: std::collections::HashSet<_> = blocks.iter().collect();
        assert_eq!(distinct.len(), blocks.len(), "block ids are distinct");
        let count = file_size.div_ceil(u64::from(block_size));
        assert!(
            blocks.iter().all(|&b| b < count),
            "block ids are in the file"
        );
    }
});
