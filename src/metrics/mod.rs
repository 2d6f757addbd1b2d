//! `mount --metrics ADDR:PORT`: the mount's counters for Prometheus. The
//! numbers are the library's ([`yolo_store_core::ServeStats`], the snapshot
//! `.yolo-status` shows); this adapter only encodes them and answers HTTP.

mod encode;
mod http;

pub use encode::encode;
pub use http::{bind, serve};
