//! yolo-store's parsers of untrusted bytes, and the types they produce:
//! the `.yolo` boot-image format, read traces, packs, the chunk codec, ids,
//! VMI names, chunking, and the remote's layout-2 objects. Everything that
//! decodes bytes from a file, the store or a remote lives here, with every
//! length bounded before it sizes a buffer.
//!
//! No RocksDB: this crate builds alone in seconds, so `format/fuzz` fuzzes
//! it by normal dependency. `yolo-store-core` re-exports what its users
//! need.

pub mod chunking;
pub mod codec;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod id;
pub mod name;
pub mod pack;
pub mod remote;
pub mod trace;
pub mod yolo;

pub use error::{
    BootImageFault, ChunkFault, ChunkingFault, FormatError, ObjectFault, PackFault, Result,
    TraceLineFault, WriterMisuse,
};
