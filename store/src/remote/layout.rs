//! Layout 2 on the wire, in one place (docs/remote.md specifies it byte by
//! byte): pack objects, index objects, and compact manifests that reference
//! chunks by their position in a pack. Every decoder here bounds what it
//! allocates by the bytes it was given.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;

use crate::id::{ChunkId, ManifestHash};
use crate::manifest::{ChunkRef, Manifest};

/// A pack object's name: BLAKE3 of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct PackId(pub [u8; 32]);

impl PackId {
    pub(super) fn of(bytes: &[u8]) -> Self {
        PackId(*blake3::hash(bytes).as_bytes())
    }

    pub(super) fn to_hex(self) -> String {
        ChunkId(self.0).to_hex()
    }

    pub(super) fn key(self) -> String {
        let hex = self.to_hex();
        format!("packs/{}/{hex}", &hex[..2])
    }

    pub(super) fn of_key(key: &str) -> Option<Self> {
        let hex = key.strip_prefix("packs/")?.split_once('/')?.1;
        hex.parse::<ChunkId>().ok().map(|id| PackId(id.0))
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
pub(super) struct PackEntry {
    pub id: ChunkId,
    pub raw_len: u32,
    pub stored_len: u32,
}

/// What the index says of one pack: its entries in pack order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PackDesc {
    pub id: PackId,
    pub entries: Vec<PackEntry>,
}

impl PackDesc {
    pub(super) fn len(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.stored_len)).sum()
    }

    /// Byte offset of each entry in the pack.
    pub(super) fn offsets(&self) -> Vec<u64> {
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
pub(super) const MAX_PACK: u64 = 256 << 20;
pub(super) const MAX_OBJECT: u64 = 256 << 20;
/// Packs are cut at this many stored bytes.
pub(super) const PACK_TARGET: usize = 4 << 20;

const INDEX_MAGIC: &[u8; 4] = b"YRIX";
const MANIFEST_MAGIC: &[u8; 4] = b"YRMF";
const FORMAT: u8 = 1;

fn unzstd(object: &[u8]) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    zstd::stream::read::Decoder::new(object)
        .and_then(|d| d.take(MAX_OBJECT + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("not a zstd frame: {e}"))?;
    if bytes.len() as u64 > MAX_OBJECT {
        return Err(format!("larger than {MAX_OBJECT} bytes"));
    }
    Ok(bytes)
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    // Level 3 cannot fail on a buffer in memory; fall back to a raw frame
    // rather than lose the object.
    zstd::bulk::compress(bytes, 3)
        .unwrap_or_else(|_| zstd::stream::encode_all(bytes, 0).unwrap_or_default())
}

/// An index object: a zstd frame of `YRIX`, format byte, pack count u32,
/// then per pack its id, entry count u32 and entries (chunk id, raw length
/// u32, stored length u32), all little-endian. Named by BLAKE3 of the
/// object's (compressed) bytes.
pub(super) fn encode_index(packs: &[PackDesc]) -> Vec<u8> {
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

pub(super) fn decode_index(object: &[u8], max_raw: u32) -> Result<Vec<PackDesc>, String> {
    let bytes = unzstd(object)?;
    let mut r = Reader::new(&bytes);
    if r.take::<4>()? != *INDEX_MAGIC {
        return Err("not an index object".into());
    }
    let format = r.take::<1>()?[0];
    if format != FORMAT {
        return Err(format!("index format {format} is unknown to this build"));
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
                return Err(format!(
                    "chunk {} claims {} raw / {} stored bytes, beyond this remote's chunking",
                    entry.id.to_hex(),
                    entry.raw_len,
                    entry.stored_len
                ));
            }
            entries.push(entry);
        }
        let pack = PackDesc { id, entries };
        if pack.len() > MAX_PACK {
            return Err(format!(
                "pack {} is larger than {MAX_PACK} bytes",
                id.to_hex()
            ));
        }
        packs.push(pack);
    }
    if !r.done() {
        return Err("trailing bytes in the index object".into());
    }
    Ok(packs)
}

/// The remote's index: every pack every index object describes, merged.
#[derive(Default)]
pub(super) struct Index {
    pub packs: HashMap<PackId, PackDesc>,
    /// Where each chunk is (one of its places, if several).
    pub chunks: HashMap<ChunkId, (PackId, u32)>,
    /// The index objects read, by key.
    pub objects: Vec<String>,
}

impl Index {
    pub(super) fn add(&mut self, pack: PackDesc) {
        for (pos, e) in pack.entries.iter().enumerate() {
            self.chunks.entry(e.id).or_insert((pack.id, pos as u32));
        }
        self.packs.insert(pack.id, pack);
    }
}

/// A manifest on the wire: a zstd frame of `YRMF`, format byte, block
/// size u32, file size u64, identity (32 bytes), block count u64, the
/// blocks as zigzag varint deltas, then the chunk list as runs over a pack
/// table: pack count u32 and their ids, run count u32, and per run (pack
/// number, first position, length) as varints. A run is consecutive
/// entries of one pack. Chunk ids and lengths come from the index; the
/// manifest they rebuild must hash to the BLAKE3 in the object's name,
/// which is what makes 36 bytes per chunk reference unnecessary.
pub(super) fn encode_manifest(manifest: &Manifest, index: &Index) -> Result<Vec<u8>, ChunkId> {
    let mut out = Vec::new();
    out.extend_from_slice(MANIFEST_MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(&manifest.block_size.to_le_bytes());
    out.extend_from_slice(&manifest.file_size.to_le_bytes());
    out.extend_from_slice(&manifest.identity.0);
    out.extend_from_slice(&(manifest.blocks.len() as u64).to_le_bytes());
    let mut prev = 0i64;
    for &b in &manifest.blocks {
        let delta = (b as i64).wrapping_sub(prev);
        varint(&mut out, ((delta << 1) ^ (delta >> 63)) as u64);
        prev = b as i64;
    }
    let mut table: Vec<PackId> = Vec::new();
    let mut numbers: HashMap<PackId, u32> = HashMap::new();
    let mut runs: Vec<(u32, u32, u32)> = Vec::new();
    for chunk in &manifest.chunks {
        let &(pack, pos) = index.chunks.get(&chunk.id).ok_or(chunk.id)?;
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

/// A chunk reference on the wire: the pack and position it names.
pub(super) type Place = (PackId, u32);

/// Rebuilds a manifest from its wire form and the index, and checks it
/// against the hash in its name. Returns it with the place of each chunk.
pub(super) fn decode_manifest(
    hash: &ManifestHash,
    object: &[u8],
    index: &Index,
) -> Result<(Manifest, Vec<Place>), String> {
    let bytes = unzstd(object)?;
    let mut r = Reader::new(&bytes);
    if r.take::<4>()? != *MANIFEST_MAGIC {
        return Err("not a manifest object".into());
    }
    let format = r.take::<1>()?[0];
    if format != FORMAT {
        return Err(format!("manifest format {format} is unknown to this build"));
    }
    let block_size = r.u32()?;
    let file_size = u64::from_le_bytes(r.take()?);
    let identity = crate::id::FileIdentity(r.take()?);
    let n = r.count64(1)?;
    let mut blocks = Vec::with_capacity(n);
    let mut prev = 0i64;
    for _ in 0..n {
        let z = r.varint()?;
        let delta = ((z >> 1) as i64) ^ -((z & 1) as i64);
        prev = prev.wrapping_add(delta);
        blocks.push(prev as u64);
    }
    let packs = r.count(32)?;
    let mut table = Vec::with_capacity(packs);
    for _ in 0..packs {
        let id = PackId(r.take()?);
        let desc = index
            .packs
            .get(&id)
            .ok_or_else(|| format!("references pack {}, which no index lists", id.to_hex()))?;
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
            .ok_or("a run names a pack outside the table")?;
        let end = first.checked_add(len).ok_or("a run overflows")?;
        if end > desc.entries.len() as u64 {
            return Err(format!(
                "a run goes past the end of pack {}",
                desc.id.to_hex()
            ));
        }
        for pos in first..end {
            let e = desc.entries[pos as usize];
            chunks.push(ChunkRef {
                id: e.id,
                len: e.raw_len,
            });
            places.push((desc.id, pos as u32));
        }
    }
    if !r.done() {
        return Err("trailing bytes in the manifest object".into());
    }
    let manifest = Manifest {
        block_size,
        file_size,
        identity,
        blocks,
        chunks,
    };
    // The one root hash: the rebuilt manifest's bytes, as the local store
    // keeps them, must hash to the name. Decoding them checks the rest.
    let encoded = manifest.encode();
    if blake3::hash(&encoded).as_bytes() != &hash.0 {
        return Err("rebuilt through the index, it does not match the BLAKE3 in its name".into());
    }
    let manifest = Manifest::decode(&encoded).map_err(|e| e.to_string())?;
    Ok((manifest, places))
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

    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let slice = self
            .bytes
            .get(self.at..self.at + N)
            .ok_or("truncated object")?;
        self.at += N;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take()?))
    }

    /// A u32 count of items of at least `item_len` bytes each, bounded by
    /// the bytes left, so a hostile count allocates nothing.
    fn count(&mut self, item_len: usize) -> Result<usize, String> {
        let n = self.u32()? as usize;
        self.bounded(n, item_len)
    }

    fn count64(&mut self, item_len: usize) -> Result<usize, String> {
        let n = u64::from_le_bytes(self.take()?);
        self.bounded(usize::try_from(n).unwrap_or(usize::MAX), item_len)
    }

    fn bounded(&self, n: usize, item_len: usize) -> Result<usize, String> {
        if n.saturating_mul(item_len) > self.bytes.len() - self.at {
            return Err("truncated object".into());
        }
        Ok(n)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.bytes.get(self.at).ok_or("truncated object")?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("a varint is too long".into())
    }

    fn done(&self) -> bool {
        self.at == self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::FileIdentity;

    fn entry(i: u8) -> PackEntry {
        PackEntry {
            id: ChunkId::of(&[i]),
            raw_len: 4096,
            stored_len: 100 + i as u32,
        }
    }

    #[test]
    fn index_and_manifest_round_trip_and_tampering_is_caught() {
        let packs = vec![
            PackDesc {
                id: PackId::of(b"p1"),
                entries: (0..10).map(entry).collect(),
            },
            PackDesc {
                id: PackId::of(b"p2"),
                entries: (10..13).map(entry).collect(),
            },
        ];
        let object = encode_index(&packs);
        assert_eq!(decode_index(&object, 4096).unwrap(), packs);
        assert!(decode_index(&object, 4095).is_err(), "raw length bound");
        let mut index = Index::default();
        for p in packs {
            index.add(p);
        }
        let chunks: Vec<ChunkRef> = [3u8, 4, 5, 11, 0, 12, 3]
            .iter()
            .map(|&i| ChunkRef {
                id: ChunkId::of(&[i]),
                len: 4096,
            })
            .collect();
        let manifest = Manifest {
            block_size: 4096,
            file_size: 100 * 4096,
            identity: FileIdentity([7; 32]),
            blocks: vec![9, 3, 4, 50, 51, 0, 99],
            chunks,
        };
        let wire = encode_manifest(&manifest, &index).unwrap();
        let (back, places) = decode_manifest(&manifest.hash(), &wire, &index).unwrap();
        assert_eq!(back, manifest);
        assert_eq!(places.len(), 7);
        assert!(decode_manifest(&ManifestHash([0; 32]), &wire, &index).is_err());
        // A manifest that needs a chunk the index lacks cannot be encoded.
        let mut lacking = manifest.clone();
        lacking.chunks[0].id = ChunkId::of(b"nowhere");
        assert!(encode_manifest(&lacking, &index).is_err());
    }

    /// Random damage to the inner bytes of valid objects (re-wrapped in
    /// zstd, so the parsers see it): every decoder answers, none panics,
    /// and a damaged manifest never passes its hash.
    #[test]
    fn damaged_objects_are_refused_without_panicking() {
        let packs = vec![PackDesc {
            id: PackId::of(b"p"),
            entries: (0..20).map(entry).collect(),
        }];
        let mut index = Index::default();
        index.add(packs[0].clone());
        let manifest = Manifest {
            block_size: 4096,
            file_size: 64 * 4096,
            identity: FileIdentity([1; 32]),
            blocks: (0..20).rev().collect(),
            chunks: (0..20u8)
                .map(|i| ChunkRef {
                    id: ChunkId::of(&[i]),
                    len: 4096,
                })
                .collect(),
        };
        let inner_index = unzstd(&encode_index(&packs)).unwrap();
        let inner_manifest = unzstd(&encode_manifest(&manifest, &index).unwrap()).unwrap();
        let hash = manifest.hash();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..4000 {
            let (inner, is_index) = if round % 2 == 0 {
                (&inner_index, true)
            } else {
                (&inner_manifest, false)
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
            if is_index {
                let _ = decode_index(&object, 4096);
            } else if bytes != *inner {
                if let Ok((m, _)) = decode_manifest(&hash, &object, &index) {
                    assert_eq!(m, manifest, "a damaged manifest passed as another");
                }
            }
        }
    }
}
