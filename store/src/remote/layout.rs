//! Layout 2's objects are parsed in `yolo-store-format` (its `remote`
//! module, fuzzed there, and specified in docs/remote.md). What stays here
//! joins a compact manifest to the store's own [`Manifest`]: the manifest
//! rebuilt through the index must hash, in the store's encoding, to the
//! BLAKE3 in the object's name.

use yolo_store_format::remote::{self as wire, ManifestHead};
pub(super) use yolo_store_format::remote::{
    decode_index, encode_index, Index, PackDesc, PackEntry, PackId, Place, PACK_TARGET,
};
use yolo_store_format::{FormatError, ObjectFault};

use crate::id::{ChunkId, ManifestHash};
use crate::manifest::{ChunkRef, Manifest};
use crate::Result;

/// `manifest` as a compact manifest object; a chunk the index does not
/// hold is the error.
pub(super) fn encode_manifest(
    manifest: &Manifest,
    index: &Index,
) -> std::result::Result<Vec<u8>, ChunkId> {
    let head = ManifestHead {
        block_size: manifest.block_size,
        file_size: manifest.file_size,
        identity: manifest.identity,
    };
    let ids = manifest.chunks.iter().map(|c| c.id);
    wire::encode_manifest(head, &manifest.blocks, ids, index)
}

/// Rebuilds a manifest from its wire form and the index, and checks it
/// against the hash in its name. Returns it with the place of each chunk.
pub(super) fn decode_manifest(
    hash: &ManifestHash,
    object: &[u8],
    index: &Index,
) -> Result<(Manifest, Vec<Place>)> {
    let wire = wire::decode_manifest(object, index)?;
    let manifest = Manifest {
        block_size: wire.head.block_size,
        file_size: wire.head.file_size,
        identity: wire.head.identity,
        blocks: wire.blocks,
        chunks: wire
            .chunks
            .iter()
            .map(|e| ChunkRef {
                id: e.id,
                len: e.raw_len,
            })
            .collect(),
    };
    // The one root hash: the rebuilt manifest's bytes, as the local store
    // keeps them, must hash to the name. Decoding them checks the rest.
    let encoded = manifest.encode();
    if blake3::hash(&encoded).as_bytes() != &hash.0 {
        return Err(FormatError::from(ObjectFault::NotItsName).into());
    }
    Ok((Manifest::decode(&encoded)?, wire.places))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::FileIdentity;

    fn setup() -> (Index, Manifest) {
        let mut index = Index::default();
        index.add(PackDesc {
            id: PackId::of(b"p"),
            entries: (0..20u8)
                .map(|i| PackEntry {
                    id: ChunkId::of(&[i]),
                    raw_len: 4096,
                    stored_len: 100 + u32::from(i),
                })
                .collect(),
        });
        let manifest = Manifest {
            block_size: 4096,
            file_size: 64 * 4096,
            identity: FileIdentity([1; 32]),
            blocks: (0..20).rev().collect(),
            chunks: [
                3u8, 4, 5, 11, 0, 12, 3, 19, 18, 17, 16, 15, 14, 13, 1, 2, 6, 7, 8, 9,
            ]
            .iter()
            .map(|&i| ChunkRef {
                id: ChunkId::of(&[i]),
                len: 4096,
            })
            .collect(),
        };
        (index, manifest)
    }

    #[test]
    fn manifest_round_trips_and_is_checked_against_its_name() {
        let (index, manifest) = setup();
        let wire = encode_manifest(&manifest, &index).unwrap();
        let (back, places) = decode_manifest(&manifest.hash(), &wire, &index).unwrap();
        assert_eq!(back, manifest);
        assert_eq!(places.len(), 20);
        let err = decode_manifest(&ManifestHash([0; 32]), &wire, &index).unwrap_err();
        assert!(matches!(
            err,
            crate::Error::Format(FormatError::RemoteObject(ObjectFault::NotItsName))
        ));
        // A manifest that needs a chunk the index lacks cannot be encoded.
        let mut lacking = manifest.clone();
        lacking.chunks[0].id = ChunkId::of(b"nowhere");
        assert!(encode_manifest(&lacking, &index).is_err());
    }

    /// Every one-byte change to the inner bytes of a manifest object
    /// (re-wrapped in zstd, so the parser sees it) is refused, or rebuilds
    /// the very same manifest: nothing passes its hash as another.
    #[test]
    fn no_changed_byte_passes_as_another_manifest() {
        let (index, manifest) = setup();
        let inner = wire::unzstd(&encode_manifest(&manifest, &index).unwrap()).unwrap();
        let hash = manifest.hash();
        for at in 0..inner.len() {
            for change in [1u8, 0x80, 0xff] {
                let mut bytes = inner.clone();
                bytes[at] ^= change;
                if let Ok((m, _)) = decode_manifest(&hash, &wire::zstd(&bytes), &index) {
                    assert_eq!(m, manifest, "byte {at} ^ {change:#x} passed as another");
                }
            }
        }
    }
}
