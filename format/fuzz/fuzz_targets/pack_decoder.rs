//! `yolo_store_format::fuzzing::pack_decoder` under libFuzzer: what it checks is
//! written there, once, and the corpus replay test runs the same check.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| yolo_store_format::fuzzing::pack_decoder(data));
