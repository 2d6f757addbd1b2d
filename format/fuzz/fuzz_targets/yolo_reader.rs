//! The `.yolo` reader on arbitrary bytes: it must return an error or a boot
//! image, never panic or allocate beyond the input, and what it accepts
//! must write back to the same bytes. Each input is also tried resealed
//! (trailer magic and checksum made valid), so the fuzzer reaches every
//! check behind the checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yolo_store_format::yolo::{BootImage, END_MAGIC};

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= 40 {
        let mut sealed = data.to_vec();
        let body = sealed.len() - 40;
        let sum = *blake3::hash(&sealed[..body]).as_bytes();
        sealed[body..body + 8].copy_from_slice(END_MAGIC);
        sealed[body + 8..].copy_from_slice(&sum);
        check(&sealed);
    }
});

fn check(bytes: &[u8]) {
    let Ok(image) = BootImage::read(bytes, bytes.len() as u64) else {
        return;
    };
    for file in &image.files {
        assert!(file.header.validate(image.block_size).is_ok());
        assert_eq!(
            file.data.len() as u64,
            file.header.data_len(image.block_size)
        );
    }
    let mut out = Vec::new();
    image
        .write_to(&mut out)
        .expect("an accepted image writes back");
    assert!(
        out == bytes,
        "an accepted image writes back to its own bytes"
    );
}
