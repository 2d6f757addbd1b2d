//! What a parser of untrusted bytes can refuse, as types: one kind per
//! way an input is wrong, each with the message a user sees. The core's
//! `Error` wraps [`FormatError`]; callers that care about a kind match it
//! instead of reading text.

use std::path::PathBuf;

use crate::id::ChunkId;
use crate::remote::PackId;
use crate::yolo::{MAX_BLOCK_SIZE, MAX_FILES, MIN_BLOCK_SIZE, VERSION};

pub type Result<T, E = FormatError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Reading or writing the bytes failed (not their content).
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A `.yolo` boot image (read from a stream, or a header built in
    /// memory) breaks the format.
    #[error("invalid boot image: {0}")]
    BootImage(BootImageFault),

    /// The same, in a named file.
    #[error("invalid boot image: {path}: {fault}")]
    BootImageFile {
        path: PathBuf,
        fault: BootImageFault,
    },

    /// A `.yolo` writer was used out of order.
    #[error("{0}")]
    Writer(WriterMisuse),

    #[error("trace line {line}: {fault}")]
    Trace { line: usize, fault: TraceLineFault },

    /// A read of a trace starts past the end of the file it is for.
    #[error(
        "read {read} of the trace starts at {offset} past the end of the {file_size}-byte file"
    )]
    ReadPastEnd {
        read: usize,
        offset: u64,
        file_size: u64,
    },

    #[error(
        "the trace touches more than {max} blocks (read {read}); a boot \
         image holds the blocks a boot reads, not a whole disk",
        max = crate::trace::MAX_TRACE_BLOCKS
    )]
    TraceTooLarge { read: usize },

    #[error("invalid name {name:?}: {why}")]
    Name { name: String, why: &'static str },

    #[error("{0}")]
    Chunking(ChunkingFault),

    /// A chunk value (alone, or in its pack) is not the chunk its id names.
    #[error("chunk {id} is corrupt: {why}")]
    CorruptChunk { id: ChunkId, why: ChunkFault },

    /// A stored pack cannot be decoded.
    #[error("{0}")]
    Pack(PackFault),

    /// A remote index or manifest object (layout 2) cannot be decoded.
    #[error("{0}")]
    RemoteObject(ObjectFault),

    /// Not a 64-digit hex id.
    #[error("{0:?} is not 64 hex digits")]
    Hex(String),
}

impl FormatError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<BootImageFault> for FormatError {
    fn from(fault: BootImageFault) -> Self {
        FormatError::BootImage(fault)
    }
}

impl From<PackFault> for FormatError {
    fn from(fault: PackFault) -> Self {
        FormatError::Pack(fault)
    }
}

impl From<ObjectFault> for FormatError {
    fn from(fault: ObjectFault) -> Self {
        FormatError::RemoteObject(fault)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BootImageFault {
    #[error("{0} bytes is too short for a boot image")]
    TooShort(u64),
    #[error("not a .yolo boot image (bad magic)")]
    BadMagic,
    #[error("format version {0} is not supported (this build reads version {VERSION})")]
    Version(u16),
    #[error("unknown flags set")]
    Flags,
    #[error("block size {0} is not a power of two between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE}")]
    BlockSize(u32),
    #[error("file count {0} is outside 1..={MAX_FILES}")]
    FileCount(u32),
    #[error("reserved header field is not zero")]
    Reserved,
    #[error("file {0:?} appears twice")]
    FileTwice(String),
    #[error("name length {0} is invalid")]
    NameLength(usize),
    #[error("file name is not UTF-8")]
    NameNotUtf8,
    /// A name that is not a safe relative path (the same check as
    /// everywhere: [`FormatError::Name`]).
    #[error("invalid name {name:?}: {why}")]
    Name { name: String, why: &'static str },
    #[error("{name}: unknown identity kind {kind}")]
    IdentityKind { name: String, kind: u8 },
    #[error("{name}: {count} blocks declared but a {file_size}-byte file has only {max}")]
    TooManyBlocks {
        name: String,
        count: u64,
        file_size: u64,
        max: u64,
    },
    #[error("{name}: {count} block ids declared but the file is truncated")]
    BlockIdsTruncated { name: String, count: u64 },
    #[error("{name}: block {id} is past the end of a {file_size}-byte file")]
    BlockPastEnd {
        name: String,
        id: u64,
        file_size: u64,
    },
    #[error("{name}: block {id} appears twice")]
    BlockTwice { name: String, id: u64 },
    #[error("truncated in {0}")]
    Truncated(&'static str),
    #[error("bad trailer magic")]
    BadTrailer,
    #[error("checksum mismatch: the file is corrupt")]
    Checksum,
    #[error("{0} unexpected bytes after the trailer")]
    TrailingBytes(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum WriterMisuse {
    #[error("a boot image holds 1..={MAX_FILES} files, not {0}")]
    FileCount(u32),
    #[error("boot image writer: file data incomplete or too many files")]
    FileOrder,
    #[error("boot image writer: more block data than the header declares")]
    TooMuchData,
    #[error("boot image writer: finished before all declared data was written")]
    Unfinished,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceLineFault {
    /// The line could not be read (not UTF-8, or the read failed).
    #[error("{0}")]
    Read(std::io::Error),
    #[error("expected `OFFSET LENGTH`, got {0:?}")]
    Syntax(String),
    #[error("bad offset {0:?}")]
    Offset(String),
    #[error("bad length {0:?}")]
    Length(String),
    #[error("offset + length overflows")]
    Overflow,
}

#[derive(Debug, thiserror::Error)]
pub enum ChunkingFault {
    #[error("fixed chunk size {0} is not a power of two between 512 and 1 MiB")]
    FixedSize(u32),
    #[error(
        "FastCDC sizes {0} are out of range (min {min_lo}..{min_hi}, avg {avg_lo}..{avg_hi}, \
         max {max_lo}..{max_hi}, min <= avg <= max)",
        min_lo = fastcdc::v2020::MINIMUM_MIN,
        min_hi = fastcdc::v2020::MINIMUM_MAX,
        avg_lo = fastcdc::v2020::AVERAGE_MIN,
        avg_hi = fastcdc::v2020::AVERAGE_MAX,
        max_lo = fastcdc::v2020::MAXIMUM_MIN,
        max_hi = fastcdc::v2020::MAXIMUM_MAX
    )]
    FastcdcRange(crate::chunking::Chunking),
    #[error("chunking {0:?}: expected fixed:SIZE or fastcdc:MIN:AVG:MAX")]
    Syntax(String),
}

/// Why a chunk's bytes are not the chunk its id names.
#[derive(Debug, thiserror::Error)]
pub enum ChunkFault {
    #[error("{0}-byte value is too short")]
    TooShort(usize),
    #[error("header gives {len} bytes, more than the {max} a chunk may hold")]
    TooLong { len: usize, max: u32 },
    #[error("zstd: {0}")]
    Zstd(std::io::Error),
    #[error("unknown codec {0}")]
    UnknownCodec(u8),
    #[error("{got} bytes, header says {header}")]
    Length { got: usize, header: usize },
    #[error("its pack has no chunk at offset {0}")]
    NotInPack(u32),
    #[error("content does not match its BLAKE3 id")]
    NotItsId,
}

#[derive(Debug, thiserror::Error)]
pub enum PackFault {
    #[error("{0}-byte pack is too short")]
    TooShort(usize),
    #[error("pack claims {raw_len} bytes, more than a pack holds ({max})")]
    TooLarge { raw_len: usize, max: usize },
    #[error("pack claims {count} chunks in {len} bytes")]
    TooManyChunks { count: usize, len: usize },
    #[error("pack chunk of {len} bytes, more than {max}")]
    ChunkTooLong { len: u32, max: u32 },
    #[error("pack chunk lengths add up to more than its length")]
    LengthsOverflow,
    #[error("pack chunk lengths add up to {sum} bytes, header says {header}")]
    LengthsDisagree { sum: usize, header: usize },
    #[error("zstd: {0}")]
    Zstd(std::io::Error),
    #[error("unknown pack codec {0}")]
    UnknownCodec(u8),
    #[error("pack holds {got} bytes, header says {header}")]
    Holds { got: usize, header: usize },
}

/// Why a remote index or manifest object is refused.
#[derive(Debug, thiserror::Error)]
pub enum ObjectFault {
    #[error("not a zstd frame: {0}")]
    NotZstd(std::io::Error),
    #[error("larger than {max} bytes", max = crate::remote::MAX_OBJECT)]
    TooLarge,
    #[error("truncated object")]
    Truncated,
    #[error("a varint is too long")]
    VarintTooLong,
    #[error("not an index object")]
    NotIndex,
    #[error("index format {0} is unknown to this build")]
    IndexFormat(u8),
    #[error("chunk {id} claims {raw_len} raw / {stored_len} stored bytes, beyond this remote's chunking")]
    BeyondChunking {
        id: ChunkId,
        raw_len: u32,
        stored_len: u32,
    },
    #[error("pack {0} is larger than {max} bytes", max = crate::remote::MAX_PACK)]
    PackTooLarge(PackId),
    #[error("trailing bytes in the index object")]
    IndexTrailing,
    #[error("not a manifest object")]
    NotManifest,
    #[error("manifest format {0} is unknown to this build")]
    ManifestFormat(u8),
    #[error("references pack {0}, which no index lists")]
    UnknownPack(PackId),
    #[error("a run names a pack outside the table")]
    RunOutsideTable,
    #[error("a run overflows")]
    RunOverflow,
    #[error("a run goes past the end of pack {0}")]
    RunPastEnd(PackId),
    /// The chunks the runs name hold more bytes than the blocks do, or are
    /// more than any chunking cuts from them.
    #[error("its chunks hold more than the {stream} bytes of its blocks")]
    ChunksBeyondBlocks { stream: u64 },
    #[error("trailing bytes in the manifest object")]
    ManifestTrailing,
    /// The manifest rebuilt through the index does not hash to the name
    /// it was fetched by (checked by the store, which owns the encoding
    /// that is hashed).
    #[error("rebuilt through the index, it does not match the BLAKE3 in its name")]
    NotItsName,
}
