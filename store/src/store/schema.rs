//! The schema: column families, keys and the records RocksDB holds, and
//! how the database is configured. Private to the store module; the rest
//! of the core names a table by [`Table`].

use rocksdb::{BlockBasedOptions, ColumnFamilyDescriptor, DBCompressionType, LogLevel, Options};
use serde::{Deserialize, Serialize};

use crate::chunking::{Chunking, FASTCDC_VERSION};
use crate::id::ChunkId;
use crate::manifest::{varint, ChunkRef};
use crate::{Error, Result};

use super::*;

// The column families: their names are the schema's, private to this
// module; operations name a table by [`Table`].
pub(super) const CF_META: &str = Table::Meta.name();
pub(super) const CF_PACKS: &str = Table::Packs.name();
pub(super) const CF_REFS: &str = Table::Refs.name();
pub(super) const CF_MANIFESTS: &str = Table::Manifests.name();
pub(super) const CF_NUMBERS: &str = Table::Numbers.name();

/// The store's tables (RocksDB column families), as verify, repair and
/// their reports name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    Meta,
    Packs,
    Refs,
    Numbers,
    Manifests,
}

impl Table {
    pub(super) const fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Packs => "packs",
            Table::Refs => "refs",
            Table::Numbers => "numbers",
            Table::Manifests => "manifests",
        }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
pub(super) const CONFIG_KEY: &[u8] = b"config";
/// `meta` key of the next pack id (u64 LE). Kept, not derived from the last
/// pack, so an id is never reused after gc deletes the newest pack: a mount
/// may still hold the old pack under that id.
pub(super) const NEXT_PACK_KEY: &[u8] = b"next_pack";
/// Decoded packs `read_chunk` keeps, so reading a boot image's chunks in
/// order decodes each pack once (the mount does not use them).
pub(super) const PACK_CACHE: usize = 16;
/// `meta` key of the next chunk number (u64 LE), kept like `next_pack`.
pub(super) const NEXT_NUMBER_KEY: &[u8] = b"next_number";
/// 3: chunk numbers, compact refs records and manifests (docs/design.md,
/// *Versioning*).
pub const STORE_FORMAT: u32 = 3;

/// What a store was created with. Never changes afterwards: the chunking
/// decides chunk ids, so mixing two would stop deduplication silently.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    pub format: u32,
    pub chunking: Chunking,
    pub zstd_level: i32,
    pub fastcdc_version: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            format: STORE_FORMAT,
            chunking: Chunking::default(),
            zstd_level: 3,
            fastcdc_version: FASTCDC_VERSION.to_string(),
        }
    }
}

/// The `refs` record of a chunk: how many manifests reference it (0 means
/// garbage that `gc` may collect), its raw size, its share of its pack's
/// stored bytes, where it is (pack id and raw offset in the pack), and the
/// number manifests name it by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    pub refs: u64,
    pub raw_len: u32,
    pub stored_len: u32,
    pub pack: u64,
    pub offset: u32,
    pub number: u32,
}

impl ChunkInfo {
    /// Six varints: refs, raw_len, stored_len, pack, offset, number (about
    /// 12 bytes, against 28 fixed).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        for n in [
            self.refs,
            self.raw_len.into(),
            self.stored_len.into(),
            self.pack,
            self.offset.into(),
            self.number.into(),
        ] {
            varint(&mut out, n);
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = || Error::CorruptStore(format!("refs record {} does not decode", hex(bytes)));
        let mut at = 0;
        let mut fields = [0u64; 6];
        for field in &mut fields {
            *field = read_varint(bytes, &mut at).ok_or_else(bad)?;
        }
        if at != bytes.len() {
            return Err(bad());
        }
        let small = |n: u64| u32::try_from(n).map_err(|_| bad());
        Ok(ChunkInfo {
            refs: fields[0],
            raw_len: small(fields[1])?,
            stored_len: small(fields[2])?,
            pack: fields[3],
            offset: small(fields[4])?,
            number: small(fields[5])?,
        })
    }
}

/// The varint at `*at` of `bytes`, moving `*at` past it.
pub(super) fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        n |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// A `numbers` record: the chunk's id, then its length as a varint.
pub(super) fn encode_number_record(id: &ChunkId, raw_len: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(36);
    out.extend_from_slice(id.as_bytes());
    varint(&mut out, raw_len.into());
    out
}

pub(super) fn decode_number_record(bytes: &[u8]) -> Option<ChunkRef> {
    let id = ChunkId::from_slice(bytes.get(..32)?)?;
    let mut at = 32;
    let len = u32::try_from(read_varint(bytes, &mut at)?).ok()?;
    (at == bytes.len()).then_some(ChunkRef { id, len })
}

pub(super) fn number_key(number: u32) -> [u8; 4] {
    number.to_be_bytes()
}

pub(super) fn pack_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

pub(super) fn db_options(create: bool) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(create);
    opts.create_missing_column_families(create);
    opts.set_compression_type(DBCompressionType::None);
    opts.increase_parallelism(2);
    // The info log is for debugging a writer: warnings and errors only (an
    // import at info level wrote 250 KB, 1% of a small store), the last two
    // runs' kept.
    opts.set_log_level(LogLevel::Warn);
    opts.set_keep_log_file_num(1);
    // Packs and their chunks' refs records are flushed together or not at
    // all (see `flush_chunks`).
    opts.set_atomic_flush(true);
    opts
}

pub(super) fn cf_descriptors() -> Vec<ColumnFamilyDescriptor> {
    let plain = || {
        let mut o = Options::default();
        o.set_compression_type(DBCompressionType::None);
        o
    };
    let mut packs = plain();
    // Packs are already zstd-compressed: keep them in blob files, compress
    // nothing twice, and let compaction drop dead blobs.
    packs.set_enable_blob_files(true);
    packs.set_min_blob_size(0);
    packs.set_blob_file_size(256 << 20);
    packs.set_blob_compression_type(DBCompressionType::None);
    packs.set_enable_blob_gc(true);
    packs.set_blob_gc_age_cutoff(0.25);
    // Every import asks `refs` whether each of its chunks exists, most of
    // them absent on a first import: a bloom filter answers those without
    // reading a data block.
    let mut refs = plain();
    let mut table = BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    refs.set_block_based_table_factory(&table);
    vec![
        ColumnFamilyDescriptor::new(CF_META, plain()),
        ColumnFamilyDescriptor::new(CF_PACKS, packs),
        ColumnFamilyDescriptor::new(CF_REFS, refs),
        ColumnFamilyDescriptor::new(CF_NUMBERS, plain()),
        ColumnFamilyDescriptor::new(CF_MANIFESTS, plain()),
    ]
}
