//! The parser modules of yolo-store-core, compiled from the core's own
//! source files: what the fuzzers exercise is the code that ships, not a
//! copy. These modules depend only on each other, blake3 and thiserror.

#[path = "../../src/error.rs"]
mod error;
#[path = "../../src/format.rs"]
pub mod format;
#[path = "../../src/id.rs"]
pub mod id;
#[path = "../../src/name.rs"]
pub mod name;
#[path = "../../src/trace.rs"]
pub mod trace;

pub use error::{Error, Result};
