//! What each fuzz target checks, in one place: `format/fuzz` runs these
//! under libFuzzer, and `tests/fuzz_corpus.rs` replays the kept corpora
//! through them on every test run. Each takes arbitrary bytes and panics
//! only on a broken promise of a parser. Built with the `fuzzing` feature.

use std::collections::HashSet;
use std::sync::OnceLock;

use crate::codec::{decode_chunk, encode_chunk};
use crate::id::ChunkId;
use crate::pack::{decode_pack, encode_pack, PACK_BYTES};
use crate::remote::{
    decode_index, decode_manifest, encode_index, encode_manifest, unzstd, zstd, Index, PackDesc,
    PackEntry, PackId, MAX_PACK,
};
use crate::trace::{blocks_in_access_order, parse_trace};
use crate::yolo::{block_len, BootImage, END_MAGIC};

/// A target's check: panics on a broken promise of a parser.
pub type Check = fn(&[u8]);

/// The fuzz targets, by name (a corpus directory each).
pub const TARGETS: [(&str, Check); 6] = [
    ("yolo_reader", yolo_reader),
    ("trace_parser", trace_parser),
    ("pack_decoder", pack_decoder),
    ("chunk_codec", chunk_codec),
    ("remote_index", remote_index),
    ("remote_manifest", remote_manifest),
];

/// The chunking maximum a target checks against, picked by a byte.
fn max_len(pick: u8) -> u32 {
    512 << (pick % 12)
}

/// The `.yolo` reader: an error or a boot image, never a panic or an
/// allocation beyond the input, and what it accepts writes back to the
/// same bytes. Each input is also tried resealed (trailer magic and
/// checksum made valid), so every check behind the checksum is reached.
pub fn yolo_reader(data: &[u8]) {
    read_back(data);
    if data.len() >= 40 {
        let mut sealed = data.to_vec();
        let body = sealed.len() - 40;
        let sum = *blake3::hash(&sealed[..body]).as_bytes();
        sealed[body..body + 8].copy_from_slice(END_MAGIC);
        sealed[body + 8..].copy_from_slice(&sum);
        read_back(&sealed);
    }
}

fn read_back(bytes: &[u8]) {
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

/// The trace parser: an error naming a line, or reads that turn into
/// distinct in-file block ids, never a panic. The first 8 bytes pick the
/// file size (up to 256 MiB: every branch, and fast to expand) and block
/// size the reads are checked against.
pub fn trace_parser(data: &[u8]) {
    let (sizes, text) = data.split_at(data.len().min(8));
    let mut raw = [0u8; 8];
    raw[..sizes.len()].copy_from_slice(sizes);
    let file_size = u64::from(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) >> 4);
    let block_size = 512u32 << (raw[4] % 12);
    let Ok(reads) = parse_trace(text) else {
        return;
    };
    if let Ok(blocks) = blocks_in_access_order(&reads, file_size, block_size) {
        let distinct: HashSet<_> = blocks.iter().collect();
        assert_eq!(distinct.len(), blocks.len(), "block ids are distinct");
        let count = file_size.div_ceil(u64::from(block_size));
        assert!(
            blocks.iter().all(|&b| b < count),
            "block ids are in the file"
        );
    }
}

/// The pack decoder: an error or a pack, never a panic or an allocation
/// past what a pack may hold. An accepted pack's chunks are each found at
/// their offset under their own id, and encode again (zstd this time) to a
/// pack that decodes to the same chunks. The first byte picks the chunking
/// maximum.
pub fn pack_decoder(data: &[u8]) {
    let Some((&pick, stored)) = data.split_first() else {
        return;
    };
    let max_chunk = max_len(pick);
    let Ok(pack) = decode_pack(stored, max_chunk) else {
        return;
    };
    let chunks: Vec<&[u8]> = pack.chunks().collect();
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    assert!(total <= PACK_BYTES + max_chunk as usize, "a pack's bound");
    assert!(chunks.iter().all(|c| c.len() <= max_chunk as usize));
    for (id, offset, raw) in pack.identified() {
        assert_eq!(pack.checked(&id, offset).ok(), Some(raw), "found by id");
    }
    let (again, offsets) = encode_pack(&chunks, 1);
    let back = decode_pack(&again, max_chunk).expect("an encoded pack decodes");
    assert_eq!(back.chunks().collect::<Vec<_>>(), chunks);
    assert_eq!(offsets.len(), chunks.len());
}

/// The chunk codec (a remote's chunk value: codec byte, raw length,
/// payload): an error, or bytes that hash to the id asked for and fit the
/// chunking maximum, never a panic or an allocation past that maximum.
/// Two ids are asked for: the payload's own (so a raw value can be
/// accepted) and a fixed one. The same bytes also go through encode then
/// decode, which must give them back. The first byte picks the chunking
/// maximum and the zstd level.
pub fn chunk_codec(data: &[u8]) {
    let Some((&pick, stored)) = data.split_first() else {
        return;
    };
    let max = max_len(pick);
    let payload = stored.get(5..).unwrap_or_default();
    for id in [ChunkId::of(payload), ChunkId([0; 32])] {
        if let Ok(raw) = decode_chunk(&id, stored, max) {
            assert!(raw.len() <= max as usize, "bounded by the chunking");
            assert_eq!(ChunkId::of(&raw), id, "only the chunk its id names");
        }
    }
    let value = encode_chunk(stored, i32::from(pick % 4));
    assert!(value.len() <= stored.len() + 5, "never larger than raw");
    let len = u32::try_from(stored.len()).unwrap_or(u32::MAX);
    let back = decode_chunk(&ChunkId::of(stored), &value, len).expect("round trip");
    assert!(back == stored, "encode then decode is the identity");
}

/// A remote's index object: the input as the object itself, and wrapped in
/// a zstd frame (the envelope, which random bytes rarely make) so the
/// parser inside is reached. An error, or packs whose entries fit the
/// chunking maximum, never a panic; an accepted index encodes back to
/// exactly its inner bytes. The first byte picks the chunking maximum.
pub fn remote_index(data: &[u8]) {
    let Some((&pick, inner)) = data.split_first() else {
        return;
    };
    let max_raw = max_len(pick);
    let _ = decode_index(inner, max_raw);
    let Ok(packs) = decode_index(&zstd(inner), max_raw) else {
        return;
    };
    for pack in &packs {
        assert!(pack.len() <= MAX_PACK);
        for e in &pack.entries {
            assert!(e.raw_len <= max_raw);
            assert!(u64::from(e.stored_len) <= u64::from(e.raw_len) + 5);
        }
    }
    let again = unzstd(&encode_index(&packs)).expect("our own frame");
    assert!(
        again == inner,
        "an accepted index encodes back to its bytes"
    );
}

/// The index `remote_manifest` decodes through: packs `[1; 32]`, `[2; 32]`
/// and `[3; 32]` with 1, 7 and 300 entries of 512 << (position % 5) bytes.
pub fn manifest_index() -> &'static Index {
    static INDEX: OnceLock<Index> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut index = Index::default();
        for (p, n) in [(1u8, 1u32), (2, 7), (3, 300)] {
            index.add(PackDesc {
                id: PackId([p; 32]),
                entries: (0..n)
                    .map(|i| PackEntry {
                        id: ChunkId::of(&[&[p][..], &i.to_le_bytes()].concat()),
                        raw_len: 512 << (i % 5),
                        stored_len: 100,
                    })
                    .collect(),
            });
        }
        index
    })
}

/// A remote's compact manifest object, decoded through
/// [`manifest_index`]: the input as the object, and wrapped in a zstd frame
/// so the parser inside is reached. An error, or a manifest whose chunks
/// are the index entries its places name, within the bytes its blocks
/// hold, never a panic; an accepted manifest encodes again to one that
/// decodes the same. (The hash in the object's name is the store's to
/// check, after this.)
pub fn remote_manifest(data: &[u8]) {
    let index = manifest_index();
    let _ = decode_manifest(data, index);
    let Ok(m) = decode_manifest(&zstd(data), index) else {
        return;
    };
    assert_eq!(m.chunks.len(), m.places.len());
    for (entry, (pack, pos)) in m.chunks.iter().zip(&m.places) {
        assert_eq!(index.packs[pack].entries[*pos as usize], *entry);
    }
    let stream: u64 = m
        .blocks
        .iter()
        .map(|&b| block_len(m.head.file_size, m.head.block_size, b) as u64)
        .sum();
    let named: u64 = m.chunks.iter().map(|e| u64::from(e.raw_len)).sum();
    assert!(named <= stream, "the chunks fit in the blocks");
    let ids = m.chunks.iter().map(|e| e.id);
    let object = encode_manifest(m.head, &m.blocks, ids, index).expect("indexed");
    let back = decode_manifest(&object, index).expect("re-encoded decodes");
    assert_eq!((back.head, &back.blocks), (m.head, &m.blocks));
    assert_eq!(back.chunks, m.chunks);
    assert_eq!(back.places, m.places, "the index holds each chunk once");
}
