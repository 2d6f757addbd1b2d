//! The remote protocol against a `file://` remote (object_store's local
//! backend, with the same create-only puts and listings). The same verbs
//! run against a real Ceph radosgw in tests/remote.rs.

use std::path::Path;
use std::time::Duration;

use super::lock::LockKind;
use super::*;
use crate::format::BootImage;
use crate::id::FileIdentity;
use crate::import::tests::stream;
use crate::import::{import, ImportOptions};
use crate::manifest::Manifest;
use crate::store::Store;
use crate::testing::family_image as image;
use crate::verify::verify;

/// The pack file holding `id` in a `file://` remote, and its offset there.
fn place_of(remote: &Remote, dir: &Path, id: &ChunkId) -> (std::path::PathBuf, usize) {
    let (index, _, _) = remote
        .runtime
        .block_on(remote.load_index(None, u32::MAX, true))
        .unwrap();
    let (pack, pos) = index.chunks[id];
    let offset = index.packs[&pack].offsets()[pos as usize];
    (dir.join(pack.key()), offset as usize)
}

/// The remote fault of `err`, which must be a remote's error.
fn fault(err: &Error) -> &RemoteFault {
    match err {
        Error::Remote { fault, .. } => fault,
        other => panic!("not a remote's error: {other}"),
    }
}

fn store_with(dir: &Path, images: &[BootImage]) -> Store {
    let store = Store::open_or_create(dir, None).unwrap();
    for img in images {
        import(&store, img, &ImportOptions::default()).unwrap();
    }
    store
}

fn remote(dir: &Path) -> Remote {
    Remote::open(
        &format!("file://{}", dir.display()),
        RemoteOptions::default(),
    )
    .unwrap()
}

#[test]
fn pull_moves_only_what_the_store_lacks_and_a_second_pull_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let a = store_with(
        &tmp.path().join("a"),
        &[image("base", 1, 40, 10), image("web", 2, 40, 12)],
    );
    let remote = remote(&tmp.path().join("remote"));
    let pushed = push(&a, &remote, &[]).unwrap();
    assert_eq!(pushed.uploaded_chunks, 40 + 10 + 12);
    assert_eq!(pushed.manifests_uploaded, 2);

    let b = Store::open_or_create(&tmp.path().join("b"), None).unwrap();
    let pulled = pull(&b, &remote, &[]).unwrap();
    assert_eq!(pulled.names, ["base", "web"]);
    assert_eq!(pulled.downloaded_chunks, 62);
    for name in ["base", "web"] {
        assert_eq!(b.manifest(name).unwrap(), a.manifest(name).unwrap());
        assert!(stream(&b, name) == stream(&a, name));
    }
    assert!(verify(&b).unwrap().is_clean());

    let again = pull(&b, &remote, &[]).unwrap();
    assert_eq!(again.unchanged, ["base", "web"]);
    assert_eq!(
        (
            again.downloaded_chunks,
            again.downloaded_bytes,
            again.manifest_bytes
        ),
        (0, 0, 0)
    );
    let repush = push(&a, &remote, &[]).unwrap();
    assert_eq!((repush.uploaded_chunks, repush.manifests_uploaded), (0, 0));

    // A third VMI on the same base: only its own chunks travel, both ways.
    import(&a, &image("db", 3, 40, 7), &ImportOptions::default()).unwrap();
    let third = push(&a, &remote, &["db".to_string()]).unwrap();
    assert_eq!((third.uploaded_chunks, third.present_chunks), (7, 40));
    let pulled = pull(&b, &remote, &["db".to_string()]).unwrap();
    assert_eq!((pulled.downloaded_chunks, pulled.local_chunks), (7, 40));
    // B read the first index object before and kept it: only the new one
    // crosses the network.
    assert_eq!(pulled.index_bytes, third.index_bytes);
    assert!(stream(&b, "db") == stream(&a, "db"));
    assert!(verify(&b).unwrap().is_clean());
}

#[test]
fn a_corrupt_or_missing_remote_chunk_is_refused_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let a = store_with(
        &tmp.path().join("a"),
        &[image("base", 1, 20, 5), image("web", 2, 20, 6)],
    );
    let dir = tmp.path().join("remote");
    let remote = remote(&dir);
    push(&a, &remote, &[]).unwrap();
    // web's last block is its own: corrupt that chunk inside its pack.
    let web = a.manifest("web").unwrap();
    let victim = web.chunks.last().unwrap().id;
    let (object, at) = place_of(&remote, &dir, &victim);
    let whole = std::fs::read(&object).unwrap();
    let mut bytes = whole.clone();
    bytes[at + 7] ^= 0x55;
    std::fs::write(&object, &bytes).unwrap();

    let b = Store::open_or_create(&tmp.path().join("b"), None).unwrap();
    let pulled = pull(&b, &remote, &[]).unwrap();
    assert_eq!(pulled.names, ["base"], "base does not use the bad chunk");
    assert_eq!(pulled.failed.len(), 1);
    assert_eq!(pulled.failed[0].name, "web");
    assert!(
        pulled.failed[0].object.contains(&victim.to_hex()),
        "{:?}",
        pulled.failed[0]
    );
    assert!(matches!(b.manifest("web"), Err(Error::UnknownVmi(_))));
    assert!(b.chunk_info(&victim).unwrap().is_none(), "never stored");
    assert!(verify(&b).unwrap().is_clean());

    // Missing instead of corrupt: refused the same way.
    std::fs::remove_file(&object).unwrap();
    let pulled = pull(&b, &remote, &[]).unwrap();
    assert_eq!(pulled.failed[0].why, "missing on the remote");

    // Once the object is whole again, the pull completes and fetches only
    // what it had not stored yet.
    std::fs::write(&object, &whole).unwrap();
    let pulled = pull(&b, &remote, &[]).unwrap();
    assert_eq!((pulled.names.len(), pulled.downloaded_chunks), (1, 1));
    assert_eq!(pulled.range_gets, 1, "one chunk of a pack: a range GET");
    assert!(stream(&b, "web") == stream(&a, "web"));
    assert!(verify(&b).unwrap().is_clean());
}

#[test]
fn a_tampered_manifest_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let a = store_with(&tmp.path().join("a"), &[image("base", 1, 4, 4)]);
    let dir = tmp.path().join("remote");
    let remote = remote(&dir);
    push(&a, &remote, &[]).unwrap();
    let key = manifest_key("base", &a.manifest("base").unwrap().hash());
    let mut bytes = std::fs::read(dir.join(&key)).unwrap();
    bytes[20] ^= 1;
    std::fs::write(dir.join(&key), &bytes).unwrap();
    let b = Store::open_or_create(&tmp.path().join("b"), None).unwrap();
    let pulled = pull(&b, &remote, &[]).unwrap();
    assert_eq!(pulled.failed[0].object, key);
    assert!(pulled.names.is_empty());
    let err = remote_gc(&remote, Duration::ZERO, true).unwrap_err();
    assert!(
        matches!(fault(&err), RemoteFault::GcStops { key: k, .. } if *k == key),
        "{err}"
    );
}

#[test]
fn a_new_version_replaces_the_old_and_gc_waits_for_the_grace_period() {
    let tmp = tempfile::tempdir().unwrap();
    let a = store_with(&tmp.path().join("a"), &[image("web", 1, 4, 10)]);
    let dir = tmp.path().join("remote");
    let remote = remote(&dir);
    push(&a, &remote, &[]).unwrap();
    // The VMI changes: 10 chunks of the old version are referenced no more,
    // most of their pack: gc repacks the 4 that stay.
    import(&a, &image("web", 2, 4, 3), &ImportOptions::default()).unwrap();
    push(&a, &remote, &[]).unwrap();
    let versions = remote.runtime.block_on(remote.list_manifests()).unwrap();
    assert_eq!(versions.len(), 1, "the superseded version was deleted");

    let kept = remote_gc(&remote, Duration::from_secs(3600), false).unwrap();
    assert_eq!((kept.plan.young_chunks, kept.deleted_chunks), (10, 0));
    let collected = remote_gc(&remote, Duration::ZERO, false).unwrap();
    assert_eq!(collected.deleted_chunks, 10);
    assert_eq!(collected.plan.referenced_chunks, 7);
    assert_eq!(collected.repacked_packs, 1);
    assert_eq!(collected.rewritten_manifests, 1);
    let (index, _, _) = remote
        .runtime
        .block_on(remote.load_index(None, u32::MAX, true))
        .unwrap();
    assert_eq!(index.chunks.len(), 7, "only the live chunks are indexed");
    assert_eq!(index.objects.len(), 1, "gc rewrote the index as one object");
    assert_eq!(
        remote.runtime.block_on(remote.list_packs()).unwrap().len(),
        2
    );

    let b = Store::open_or_create(&tmp.path().join("b"), None).unwrap();
    pull(&b, &remote, &[]).unwrap();
    assert!(stream(&b, "web") == stream(&a, "web"));
}

#[test]
fn gc_and_transfers_exclude_each_other_until_a_lock_goes_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let a = store_with(&tmp.path().join("a"), &[image("base", 1, 4, 4)]);
    let dir = tmp.path().join("remote");
    let remote = remote(&dir);
    push(&a, &remote, &[]).unwrap();
    {
        let _gc = remote.lock(LockKind::Gc).unwrap();
        let err = push(&a, &remote, &[]).unwrap_err();
        assert!(
            matches!(fault(&err), RemoteFault::Locked { holders, .. }
                if holders.len() == 1 && holders[0].starts_with("locks/gc-")),
            "{err}"
        );
        let busy = err.to_string();
        assert!(
            busy.contains("busy") && busy.contains("locks/gc-"),
            "{busy}"
        );
        let b = Store::open_or_create(&tmp.path().join("b"), None).unwrap();
        let err = pull(&b, &remote, &[]).unwrap_err();
        assert!(matches!(fault(&err), RemoteFault::Locked { .. }), "{err}");
    }
    {
        let _push = remote.lock(LockKind::Push).unwrap();
        let _pull = remote.lock(LockKind::Pull).unwrap(); // shared
        let err = remote_gc(&remote, Duration::ZERO, true).unwrap_err();
        assert!(
            matches!(fault(&err), RemoteFault::Locked { holders, .. } if holders.len() == 2),
            "{err}"
        );
    }
    // A lock its process left behind stops gc only until it goes stale.
    let dead = remote.lock(LockKind::Push).unwrap();
    std::mem::forget(dead);
    assert!(remote_gc(&remote, Duration::ZERO, true).is_err());
    for entry in std::fs::read_dir(dir.join("locks")).unwrap() {
        let file = std::fs::File::options()
            .write(true)
            .open(entry.unwrap().path())
            .unwrap();
        let old = std::time::SystemTime::now() - lock::TTL - Duration::from_secs(60);
        file.set_modified(old).unwrap();
    }
    remote_gc(&remote, Duration::ZERO, true).unwrap();
    assert_eq!(std::fs::read_dir(dir.join("locks")).unwrap().count(), 0);

    // A fresh lock whose process on this host has exited is stale at once.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let body = serde_json::json!({"kind": "push", "host": host.trim(), "pid": dead_pid});
    std::fs::write(dir.join("locks/push-dead"), body.to_string()).unwrap();
    remote_gc(&remote, Duration::ZERO, true).unwrap();
    assert!(!dir.join("locks/push-dead").exists());
}

#[test]
fn stores_that_chunk_differently_do_not_mix() {
    let tmp = tempfile::tempdir().unwrap();
    let a = store_with(&tmp.path().join("a"), &[image("base", 1, 4, 4)]);
    let remote = remote(&tmp.path().join("remote"));
    push(&a, &remote, &[]).unwrap();
    let other = StoreConfig {
        chunking: Chunking::Fixed { size: 16384 },
        ..StoreConfig::default()
    };
    let b = Store::open_or_create(&tmp.path().join("b"), Some(other)).unwrap();
    let err = pull(&b, &remote, &[]).unwrap_err();
    assert!(
        matches!(fault(&err), RemoteFault::ChunkingMismatch { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("would not deduplicate"), "{err}");
    let unknown = pull(&a, &remote, &["nope".to_string()]).unwrap_err();
    assert!(matches!(fault(&unknown), RemoteFault::UnknownVmi(n) if n == "nope"));
    assert!(unknown.to_string().contains("no boot image named \"nope\""));
}

#[test]
fn a_remote_chunk_longer_than_the_chunking_allows_is_refused_before_it_is_decoded() {
    let tmp = tempfile::tempdir().unwrap();
    let a = store_with(&tmp.path().join("a"), &[image("base", 1, 4, 4)]);
    let dir = tmp.path().join("remote");
    let remote = remote(&dir);
    push(&a, &remote, &[]).unwrap();
    // A hostile remote: a genuine 64 MiB chunk (it hashes to its name), in
    // a manifest of 16 384 blocks whose stream is that one chunk. Pulling
    // it would make every decoder allocate 64 MiB, or 4 GiB had it said so.
    let raw = vec![0u8; 64 << 20];
    let id = ChunkId::of(&raw);
    let value = crate::codec::encode_chunk(&raw, 3);
    let pack = layout::PackId::of(&value);
    let desc = layout::PackDesc {
        id: pack,
        entries: vec![layout::PackEntry {
            id,
            raw_len: raw.len() as u32,
            stored_len: value.len() as u32,
        }],
    };
    let object = dir.join(pack.key());
    std::fs::create_dir_all(object.parent().unwrap()).unwrap();
    std::fs::write(&object, &value).unwrap();
    let index_object = layout::encode_index(std::slice::from_ref(&desc));
    let index_key = format!("index/{}", layout::PackId::of(&index_object).to_hex());
    std::fs::write(dir.join(&index_key), &index_object).unwrap();
    let blocks = (raw.len() / 4096) as u64;
    let manifest = Manifest {
        block_size: 4096,
        file_size: blocks * 4096,
        identity: FileIdentity([3; 32]),
        blocks: (0..blocks).collect(),
        chunks: vec![crate::manifest::ChunkRef {
            id,
            len: raw.len() as u32,
        }],
    };
    let mut evil = layout::Index::default();
    evil.add(desc);
    let bytes = layout::encode_manifest(&manifest, &evil).unwrap();
    let key = manifest_key("evil", &manifest.hash());
    std::fs::create_dir_all(dir.join(&key).parent().unwrap()).unwrap();
    std::fs::write(dir.join(&key), bytes).unwrap();

    let b = Store::open_or_create(&tmp.path().join("b"), None).unwrap();
    // The index bounds each chunk by the remote's chunking: the index
    // object that lists it is refused before any chunk is fetched, the VMI
    // that needs its pack with it; the rest of the remote still pulls.
    let pulled = pull(&b, &remote, &[]).unwrap();
    assert_eq!(pulled.names, ["base"]);
    assert_eq!(pulled.failed.len(), 1);
    assert_eq!(pulled.failed[0].name, "evil");
    assert!(
        pulled.failed[0].why.contains("no index lists"),
        "{:?}",
        pulled.failed[0]
    );
    assert_eq!(pulled.refused_index_objects.len(), 1);
    assert!(
        pulled.refused_index_objects[0].contains("beyond this remote's chunking"),
        "{:?}",
        pulled.refused_index_objects
    );
    // gc never acts on a partial index.
    let err = remote_gc(&remote, Duration::ZERO, true).unwrap_err();
    assert!(
        matches!(
            fault(&err),
            RemoteFault::Object {
                defect: ObjectDefect::Format(crate::FormatError::RemoteObject(_)),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("beyond"), "{err}");
    assert!(verify(&b).unwrap().is_clean());
}

#[test]
fn a_layout_1_remote_is_refused_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let a = store_with(&tmp.path().join("a"), &[image("base", 1, 4, 4)]);
    let dir = tmp.path().join("remote");
    std::fs::create_dir_all(&dir).unwrap();
    let mut v1 = serde_json::to_value(RemoteConfig::of(a.config())).unwrap();
    v1["layout"] = 1.into();
    std::fs::write(dir.join(CONFIG_KEY), v1.to_string()).unwrap();
    let remote = remote(&dir);
    for err in [
        push(&a, &remote, &[]).unwrap_err(),
        pull(&a, &remote, &[]).unwrap_err(),
    ] {
        assert!(matches!(fault(&err), RemoteFault::Layout1), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("layout 1") && text.contains("new prefix"),
            "{text}"
        );
    }
    v1["layout"] = 3.into();
    std::fs::write(dir.join(CONFIG_KEY), v1.to_string()).unwrap();
    let err = pull(&a, &remote, &[]).unwrap_err();
    assert!(
        matches!(fault(&err), RemoteFault::UnknownLayout(3)),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains("unknown to this build"), "{text}");
}
