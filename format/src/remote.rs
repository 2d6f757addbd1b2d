//! The remote's layout 2 on the wire, in one place (docs/remote.md
//! specifies it byte by byte): pack objects, index objects, and compact
//! manifests that reference chunks by their position in a pack. Every
//! decoder here bounds what it allocates by the bytes it was given. The
//! store (`yolo-store-core`, `remote/`) moves these objects and checks a
//! manifest against the hash in its name.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;

use crate::id::{ChunkId, FileIdentity};
use crate::yolo::{block_len, validate_block_size};
use crate::{ObjectFault, Result};

/// A pack object's name: BLAKE3 of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackId(pub [u8; 32]);

impl PackId {
    pub fn of(bytes: &[u8]) -> Self {
        PackId(*blake3::hash(bytes).as_bytes())
    }

    pub fn to_hex(self) -> String {
        ChunkId(self.0).to_hex()
    }

    pub fn key(self) -> String {
        let hex = self.to_hex();
        format!("packs/{}/{hex}", &hex[..2])
    }

    pub fn of_key(key: &str) -> Option<Self> {
        let hex = key.strip_prefix("packs/")?.split_once('/')?.1;
        hex.parse::<ChunkId>().ok().map(|id| PackId(id.0))
    }
}

impl fmt::Display for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackId({})", &self.to_hex()[..16])
    }
}

/// One chunk in a pack: its id, raw length and the length of its stored
/// value (codec byte, raw length, payload: `codec::encode_chunk`). Its
/// offset is the sum of the stored lengths before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub id: ChunkId,
    pub raw_len: u32,
    pub stored_len: u32,
}

/// What the index says of one pack: its entries in pack order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackDesc {
    pub id: PackId,
    pub entries: Vec<PackEntry>,
}

impl PackDesc {
    /// The pack object's length: its entries' stored lengths.
    pub fn len(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.stored_len)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Byte offset of each entry in the pack.
    pub fn offsets(&self) -> Vec<u64> {
        let mut at = 0u64;
        self.entries
            .iter()
            .map(|e| {
                let o = at;
                at += u64::from(e.stored_len);
                o
            })
            .collect()
    }
}

/// Largest pack a remote may hand us, and the largest decoded index or
/// manifest object.
pub const MAX_PACK: u64 = 256 << 20;
pub const MAX_OBJECT: u64 = 256 << 20;
/// Packs are cut at this many stored bytes.
pub const PACK_TARGET: usize = 4 << 20;

const INDEX_MAGIC: &[u8; 4] = b"YRIX";
const MANIFEST_MAGIC: &[u8; 4] = b"YRMF";
const FORMAT: u8 = 1;

/// The bytes inside an index or manifest object's zstd frame.
pub fn unzstd(object: &[u8]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    zstd::stream::read::Decoder::new(object)
        .and_then(|d| d.take(MAX_OBJECT + 1).read_to_end(&mut bytes))
        .map_err(ObjectFault::NotZstd)?;
    if bytes.len() as u64 > MAX_OBJECT {
        return Err(ObjectFault::TooLarge.into());
    }
    Ok(bytes)
}

/// One zstd frame of `bytes`: how index and manifest objects travel.
pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    // Level 3 cannot fail on a buffer in memory; fall back to a raw frame
    // rather than lose the object.
    zstd::bulk::compress(bytes, 3)
        .unwrap_or_else(|_| zstd::stream::encode_all(bytes, 0).unwrap_or_default())
}

/// An index object: a zstd frame of `YRIX`, format byte, pack count u32,
/// then per pack its id, entry count u32 and entries (chunk id, raw length
/// u32, stored length u32), all little-endian. Named by BLAKE3 of the
/// object's (compressed) bytes.
pub fn encode_index(packs: &[PackDesc]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(INDEX_MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for pack in packs {
        out.extend_from_slice(&pack.id.0);
        out.extend_from_slice(&(pack.entries.len() as u32).to_le_bytes());
        for e in &pack.entries {
            out.extend_from_slice(e.id.as_bytes());
            out.extend_from_slice(&e.raw_len.to_le_bytes());
            out.extend_from_slice(&e.stored_len.to_le_bytes());
        }
    }
    zstd(&out)
}

pub fn decode_index(object: &[u8], max_raw: u32) -> Result<Vec<PackDesc>> {
    let bytes = unzstd(object)?;
    let mut r = Reader::new(&bytes);
    if r.take::<4>()? != *INDEX_MAGIC {
        return Err(ObjectFault::NotIndex.into());
    }
    let format = r.take::<1>()?[0];
    if format != FORMAT {
        return Err(ObjectFault::IndexFormat(format).into());
    }
    let n = r.count(36)?;
    let mut packs = Vec::with_capacity(n);
    for _ in 0..n {
        let id = PackId(r.take()?);
        let m = r.count(40)?;
        let mut entries = Vec::with_capacity(m);
        for _ in 0..m {
            let entry = PackEntry {
                id: ChunkId(r.take()?),
                raw_len: r.u32()?,
                stored_len: r.u32()?,
            };
            // A stored value is a 5-byte header and at most the raw bytes
            // (encode_chunk stores raw when zstd does not shrink them).
            if entry.raw_len > max_raw || entry.stored_len as u64 > entry.raw_len as u64 + 5 {
                return Err(ObjectFault::BeyondChunking {
                    id: entry.id,
                    raw_len: entry.raw_len,
                    stored_len: entry.stored_len,
                }
                .into());
            }
            entries.push(entry);
        }
        let pack = PackDesc { id, entries };
        if pack.len() > MAX_PACK {
            return Err(ObjectFault::PackTooLarge(id).into());
        }
        packs.push(pack);
    }
    if !r.done() {
        return Err(ObjectFault::IndexTrailing.into());
    }
    Ok(packs)
}

/// The remote's index: every pack every index object describes, merged.
#[derive(Default)]
pub struct Index {
    pub packs: HashMap<PackId, PackDesc>,
    /// Where each chunk is (one of its places, if several).
    pub chunks: HashMap<ChunkId, (PackId, u32)>,
    /// The index objects read, by key.
    pub objects: Vec<String>,
}

impl Index {
    pub fn add(&mut self, pack: PackDesc) {
        for (pos, e) in pack.entries.iter().enumerate() {
            self.chunks.entry(e.id).or_insert((pack.id, pos as u32));
        }
        self.packs.insert(pack.id, pack);
    }
}

/// What a manifest says of its file, beside its blocks and chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestHead {
    pub block_size: u32,
    pub file_size: u64,
    pub identity: FileIdentity,
}

/// A manifest object decoded through the index, before anything is
/// checked beyond its syntax and its references: the store rebuilds its
/// own manifest from it and checks that against the hash in the object's
/// name (the encoding that is hashed is the store's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteManifest {
    pub head: ManifestHead,
    /// Block ids in first-access order, as the object gives them.
    pub blocks: Vec<u64>,
    /// The chunks of the block stream, in order: the index entry each run
    /// names (chunk id, raw length) ...
    pub chunks: Vec<PackEntry>,
    /// ... and where that entry is.
    pub places: Vec<Place>,
}

/// A manifest on the wire: a zstd frame of `YRMF`, format byte, block
/// size u32, file size u64, identity (32 bytes), block count u64, the
/// blocks as zigzag varint deltas, then the chunk list as runs over a pack
/// table: pack count u32 and their ids, run count u32, and per run (pack
/// number, first position, length) as varints. A run is consecutive
/// entries of one pack. Chunk ids and lengths come from the index; the
/// manifest they rebuild must hash to the BLAKE3 in the object's name,
/// which is what makes 36 bytes per chunk reference unnecessary. A chunk
/// the index does not hold is returned as the error.
pub fn encode_manifest(
    head: ManifestHead,
    blocks: &[u64],
    chunks: impl IntoIterator<Item = ChunkId>,
    index: &Index,
) -> Result<Vec<u8>, ChunkId> {
    let mut out = Vec::new();
    out.extend_from_slice(MANIFEST_MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(&head.block_size.to_le_bytes());
    out.extend_from_slice(&head.file_size.to_le_bytes());
    out.extend_from_slice(&head.identity.0);
    out.extend_from_slice(&(blocks.len() as u64).to_le_bytes());
    let mut prev = 0i64;
    for &b in blocks {
        let delta = (b as i64).wrapping_sub(prev);
        varint(&mut out, ((delta << 1) ^ (delta >> 63)) as u64);
        prev = b as i64;
    }
    let mut table: Vec<PackId> = Vec::new();
    let mut numbers: HashMap<PackId, u32> = HashMap::new();
    let mut runs: Vec<(u32, u32, u32)> = Vec::new();
    for id in chunks {
        let &(pack, pos) = index.chunks.get(&id).ok_or(id)?;
        let number = *numbers.entry(pack).or_insert_with(|| {
            table.push(pack);
            table.len() as u32 - 1
        });
        match runs.last_mut() {
            Some((p, first, len)) if *p == number && *first + *len == pos => *len += 1,
            _ => runs.push((number, pos, 1)),
        }
    }
    out.extend_from_slice(&(table.len() as u32).to_le_bytes());
    for pack in &table {
        out.extend_from_slice(&pack.0);
    }
    out.extend_from_slice(&(runs.len() as u32).to_le_bytes());
    for (p, first, len) in runs {
        varint(&mut out, p.into());
        varint(&mut out, first.into());
        varint(&mut out, len.into());
    }
    Ok(zstd(&out))
}

/// The shortest chunk any chunking cuts, but at a short block or the end
/// of the stream: FastCDC's smallest minimum (fixed chunks are at least
/// 512 bytes).
const MIN_CUT: u64 = fastcdc::v2020::MINIMUM_MIN as u64;

/// A chunk reference on the wire: the pack and position it names.
pub type Place = (PackId, u32);

/// Decodes a manifest object through the index: every run must name
/// entries the index lists. Its hash is the caller's to check.
pub fn decode_manifest(object: &[u8], index: &Index) -> Result<RemoteManifest> {
    let bytes = unzstd(object)?;
    let mut r = Reader::new(&bytes);
    if r.take::<4>()? != *MANIFEST_MAGIC {
        return Err(ObjectFault::NotManifest.into());
    }
    let format = r.take::<1>()?[0];
    if format != FORMAT {
        return Err(ObjectFault::ManifestFormat(format).into());
    }
    let head = ManifestHead {
        block_size: r.u32()?,
        file_size: u64::from_le_bytes(r.take()?),
        identity: FileIdentity(r.take()?),
    };
    validate_block_size(head.block_size)?;
    let n = r.count64(1)?;
    let mut blocks = Vec::with_capacity(n);
    let mut prev = 0i64;
    for _ in 0..n {
        let z = r.varint()?;
        let delta = ((z >> 1) as i64) ^ -((z & 1) as i64);
        prev = prev.wrapping_add(delta);
        blocks.push(prev as u64);
    }
    // What the blocks hold bounds the chunks the runs may name: their bytes
    // add up to it (checked in full by the store), and no chunking cuts
    // more than one chunk per MIN_CUT bytes but for a file's short last
    // block and the stream's end. Checked while the runs are expanded, so
    // a few bytes of runs over a large pack allocate nothing.
    let stream: u64 = blocks
        .iter()
        .map(|&b| block_len(head.file_size, head.block_size, b) as u64)
        .sum();
    let max_chunks = stream / MIN_CUT + 2;
    let beyond = || ObjectFault::ChunksBeyondBlocks { stream };
    let mut bytes_named = 0u64;
    let packs = r.count(32)?;
    let mut table = Vec::with_capacity(packs);
    for _ in 0..packs {
        let id = PackId(r.take()?);
        let desc = index.packs.get(&id).ok_or(ObjectFault::UnknownPack(id))?;
        table.push(desc);
    }
    let runs = r.count(3)?;
    let mut chunks = Vec::new();
    let mut places = Vec::new();
    for _ in 0..runs {
        let p = r.varint()?;
        let first = r.varint()?;
        let len = r.varint()?;
        let desc = usize::try_from(p)
            .ok()
            .and_then(|p| table.get(p))
            .ok_or(ObjectFault::RunOutsideTable)?;
        let end = first.checked_add(len).ok_or(ObjectFault::RunOverflow)?;
        if end > desc.entries.len() as u64 {
            return Err(ObjectFault::RunPastEnd(desc.id).into());
        }
        for pos in first..end {
            let entry = desc.entries[pos as usize];
            bytes_named += u64::from(entry.raw_len);
            if bytes_named > stream || chunks.len() as u64 >= max_chunks {
                return Err(beyond().into());
            }
            chunks.push(entry);
            places.push((desc.id, pos as u32));
        }
    }
    if !r.done() {
        return Err(ObjectFault::ManifestTrailing.into());
    }
    Ok(RemoteManifest {
        head,
        blocks,
        chunks,
        places,
    })
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        let slice = self
            .bytes
            .get(self.at..self.at + N)
            .ok_or(ObjectFault::Truncated)?;
        self.at += N;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take()?))
    }

    /// A u32 count of items of at least `item_len` bytes each, bounded by
    /// the bytes left, so a hostile count allocates nothing.
    fn count(&mut self, item_len: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        self.bounded(n, item_len)
    }

    fn count64(&mut self, item_len: usize) -> Result<usize> {
        let n = u64::from_le_bytes(self.take()?);
        self.bounded(usize::try_from(n).unwrap_or(usize::MAX), item_len)
    }

    fn bounded(&self, n: usize, item_len: usize) -> Result<usize> {
        if n.saturating_mul(item_len) > self.bytes.len() - self.at {
            return Err(ObjectFault::Truncated.into());
        }
        Ok(n)
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.bytes.get(self.at).ok_or(ObjectFault::Truncated)?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(ObjectFault::VarintTooLong.into())
    }

    fn done(&self) -> bool {
        self.at == self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u8) -> PackEntry {
        PackEntry {
            id: ChunkId::of(&[i]),
            raw_len: 4096,
            stored_len: 100 + i as u32,
        }
    }

    fn packs() -> Vec<PackDesc> {
        vec![
            PackDesc {
                id: PackId::of(b"p1"),
                entries: (0..10).map(entry).collect(),
            },
            PackDesc {
                id: PackId::of(b"p2"),
                entries: (10..13).map(entry).collect(),
            },
        ]
    }

    fn head() -> ManifestHead {
        ManifestHead {
            block_size: 4096,
            file_size: 100 * 4096,
            identity: FileIdentity([7; 32]),
        }
    }

    #[test]
    fn index_round_trips_and_bounds_raw_lengths() {
        let object = encode_index(&packs());
        assert_eq!(decode_index(&object, 4096).unwrap(), packs());
        assert!(matches!(
            decode_index(&object, 4095),
            Err(crate::FormatError::RemoteObject(
                ObjectFault::BeyondChunking { .. }
            ))
        ));
    }

    #[test]
    fn manifest_round_trips_through_the_index_in_runs() {
        let mut index = Index::default();
        for p in packs() {
            index.add(p);
        }
        let ids: Vec<ChunkId> = [3u8, 4, 5, 11, 0, 12, 3]
            .iter()
            .map(|&i| ChunkId::of(&[i]))
            .collect();
        let blocks = vec![9, 3, 4, 50, 51, 0, 99, u64::MAX, 0];
        let wire = encode_manifest(head(), &blocks, ids.iter().copied(), &index).unwrap();
        let back = decode_manifest(&wire, &index).unwrap();
        assert_eq!((back.head, &back.blocks), (head(), &blocks));
        assert_eq!(back.chunks.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
        assert_eq!(back.places[0], (PackId::of(b"p1"), 3));
        assert_eq!(back.places[3], (PackId::of(b"p2"), 1));
        // A chunk the index lacks cannot be encoded; a pack it lacks
        // cannot be decoded.
        let nowhere = ChunkId::of(b"nowhere");
        assert_eq!(
            encode_manifest(head(), &blocks, [nowhere], &index),
            Err(nowhere)
        );
        assert!(matches!(
            decode_manifest(&wire, &Index::default()),
            Err(crate::FormatError::RemoteObject(ObjectFault::UnknownPack(
                _
            )))
        ));
    }

    /// A few bytes of runs that name a large pack again and again describe
    /// far more chunks than the blocks hold data: refused while decoding,
    /// before the chunk list grows (it grew runs x entries, unbounded by
    /// the object's size).
    #[test]
    fn runs_cannot_describe_more_data_than_the_blocks() {
        let mut index = Index::default();
        index.add(PackDesc {
            id: PackId([9; 32]),
            entries: (0..1000u32)
                .map(|i| PackEntry {
                    id: ChunkId::of(&i.to_le_bytes()),
                    raw_len: 4096,
                    stored_len: 10,
                })
                .collect(),
        });
        let mut inner = Vec::new();
        inner.extend_from_slice(MANIFEST_MAGIC);
        inner.push(FORMAT);
        inner.extend_from_slice(&4096u32.to_le_bytes());
        inner.extend_from_slice(&(1u64 << 30).to_le_bytes());
        inner.extend_from_slice(&[0; 32]);
        inner.extend_from_slice(&1u64.to_le_bytes());
        inner.push(0); // block 0: 4 KiB of data
        inner.extend_from_slice(&1u32.to_le_bytes());
        inner.extend_from_slice(&[9; 32]);
        inner.extend_from_slice(&1000u32.to_le_bytes());
        for _ in 0..1000 {
            inner.extend_from_slice(&[0, 0, 0xe8, 0x07]); // pack 0, from 0, 1000 entries
        }
        // Not unwrap_err: before the bound, the Ok held a million chunks.
        let refused = decode_manifest(&zstd(&inner), &index).err();
        assert!(
            matches!(
                refused,
                Some(crate::FormatError::RemoteObject(
                    ObjectFault::ChunksBeyondBlocks { .. }
                ))
            ),
            "{refused:?}"
        );
    }

    /// Random damage to the inner bytes of valid objects (re-wrapped in
    /// zstd, so the parsers see it): every decoder answers, none panics.
    /// (The fuzz targets `remote_index` and `remote_manifest` do the same
    /// at length.)
    #[test]
    fn damaged_objects_are_refused_without_panicking() {
        let mut index = Index::default();
        for p in packs() {
            index.add(p);
        }
        let ids = (0..13u8).rev().map(|i| ChunkId::of(&[i]));
        let blocks: Vec<u64> = (0..13).rev().collect();
        let inner_index = unzstd(&encode_index(&packs())).unwrap();
        let inner_manifest =
            unzstd(&encode_manifest(head(), &blocks, ids, &index).unwrap()).unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..4000 {
            let inner = if round % 2 == 0 {
                &inner_index
            } else {
                &inner_manifest
            };
            let mut bytes = inner.clone();
            match next() % 3 {
                0 => bytes.truncate((next() as usize) % bytes.len()),
                1 => {
                    for _ in 0..1 + next() % 4 {
                        let at = (next() as usize) % bytes.len();
                        bytes[at] = next() as u8;
                    }
                }
                _ => {
                    let at = (next() as usize) % bytes.len();
                    bytes[at..].iter_mut().take(4).for_each(|b| *b = 0xff);
                }
            }
            let object = zstd(&bytes);
            let _ = decode_index(&object, 4096);
            let _ = decode_manifest(&object, &index);
        }
    }
}
