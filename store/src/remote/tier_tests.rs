//! The remote tier under an [`ImageServer`], against a `file://` remote
//! (object_store's local backend answers range GETs like S3). The mount,
//! a real radosgw and a remote that stalls or dies: tests/remote_tier.rs.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::follower::Follower;
use crate::import::{import, ImportOptions};
use crate::remote::{push, ObjectDefect, Remote, RemoteOptions};
use crate::serve::{ImageServer, Preload, ServeOptions};
use crate::testing::family_image as image;

/// Node A pushed `vmi` (its boot image every block of `data`, the file
/// node B serves); node B's store is empty and its server has the tier.
fn setup(data_seed: u64, pushed_seed: u64) -> (tempfile::TempDir, Vec<u8>, Arc<ImageServer>) {
    let tmp = tempfile::tempdir().unwrap();
    let served = image("vmi", data_seed, 30, 20);
    let data = served.files[0].data.clone();
    let images = tmp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::write(images.join("vmi"), &data).unwrap();
    let a = Store::open_or_create(&tmp.path().join("a"), None).unwrap();
    import(
        &a,
        &image("vmi", pushed_seed, 30, 20),
        &ImportOptions::default(),
    )
    .unwrap();
    let url = format!("file://{}", tmp.path().join("remote").display());
    push(
        &a,
        &Remote::open(&url, RemoteOptions::default()).unwrap(),
        &[],
    )
    .unwrap();
    let b = tmp.path().join("b");
    drop(Store::open_or_create(&b, None).unwrap());
    let remote = Remote::open(&url, RemoteOptions::default()).unwrap();
    let options = ServeOptions {
        cache_bytes: 1 << 20,
        // The tests count what reads fetch.
        preload: Preload::Never,
        passthrough: false,
        remote: Some(RemoteTier::new(remote, Duration::from_secs(5))),
    };
    let server = ImageServer::new(Follower::open(&b).unwrap(), &images, options).unwrap();
    let server = Arc::new(server);
    assert!(server.remote_round());
    (tmp, data, server)
}

#[test]
fn a_remote_boot_image_serves_exactly_and_is_stored_once_complete() {
    let (tmp, data, server) = setup(1, 1);
    let image = server.open("vmi").unwrap();
    assert!(image.has_boot_image(), "checked against the file at load");
    // A few reads: fetched as asked, not yet all there to store.
    assert_eq!(
        server.read(&image, 4096 * 3 + 7, 9000).unwrap(),
        &data[4096 * 3 + 7..4096 * 3 + 7 + 9000]
    );
    let remote = server.stats().remote.unwrap();
    assert!(
        remote.chunks_fetched >= 3 && remote.chunks_fetched < 50,
        "{remote:?}"
    );
    assert!(matches!(
        server.store_remote_now("vmi"),
        Stored::Incomplete(_)
    ));
    // The preload fetches the rest; then the boot image is stored.
    server.preload(image.boot_image().unwrap());
    assert_eq!(server.store_remote_now("vmi"), Stored::Done);
    let remote = server.stats().remote.unwrap();
    assert_eq!(
        remote.chunks_fetched, 50,
        "each chunk fetched once: {remote:?}"
    );
    assert_eq!(
        (
            remote.fallbacks,
            remote.bad_chunks,
            remote.boot_images_stored
        ),
        (0, 0, 1)
    );
    assert!(server.read(&image, 0, data.len()).unwrap() == data);
    let b = Store::open_read_only(&tmp.path().join("b")).unwrap();
    let a = Store::open_read_only(&tmp.path().join("a")).unwrap();
    assert_eq!(b.manifest("vmi").unwrap(), a.manifest("vmi").unwrap());
    assert!(crate::verify::verify(&b).unwrap().is_clean());
    // Served from the store now, with no new fetch.
    let image = server.open("vmi").unwrap();
    assert!(server.read(&image, 0, data.len()).unwrap() == data);
    assert_eq!(server.stats().remote.unwrap().chunks_fetched, 50);
}

/// Issue 11, defect 2: a remote manifest is a claim. One whose chunks are
/// not the file's blocks (anyone who can write the bucket can push it) is
/// never served, and nothing of it is fetched.
#[test]
fn a_remote_boot_image_that_is_not_the_files_is_not_served() {
    let (_tmp, data, server) = setup(1, 2);
    let image = server.open("vmi").unwrap();
    assert!(!image.has_boot_image());
    assert!(server.read(&image, 0, data.len()).unwrap() == data);
    let stats = server.stats();
    assert_eq!(stats.identity_mismatches, 1);
    assert_eq!(stats.bytes_from_store, 0);
    assert_eq!(stats.remote.unwrap().chunks_fetched, 0);
}

/// A chunk the tier cannot deliver is an error a reader recognizes as the
/// remote being unavailable (and then serves the file); a remote that
/// answered with wrong bytes or refused our settings is not.
#[test]
fn a_chunk_the_tier_cannot_deliver_is_the_remote_being_unavailable() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().display());
    let tier = RemoteTier::new(
        Remote::open(&url, RemoteOptions::default()).unwrap(),
        Duration::from_secs(5),
    );
    let id = ChunkId::of(b"on no remote");
    let err = tier.chunk(&id).unwrap_err();
    assert!(
        matches!(&err, Error::Remote { fault, .. }
            if matches!(**fault, RemoteFault::ChunkUnavailable(c) if c == id)),
        "{err}"
    );
    assert!(err.is_remote_unavailable());
    tier.mark_down();
    let err = tier.chunk(&id).unwrap_err();
    assert!(
        matches!(&err, Error::Remote { fault, .. } if matches!(**fault, RemoteFault::Down { .. })),
        "{err}"
    );
    assert!(err.is_remote_unavailable());

    let refused = |fault| Error::Remote {
        remote: url.clone(),
        fault: Box::new(fault),
    };
    assert!(!refused(RemoteFault::Layout1).is_remote_unavailable());
    assert!(!refused(RemoteFault::Object {
        key: "index/00".into(),
        defect: ObjectDefect::NotItsName,
    })
    .is_remote_unavailable());
    assert!(!Error::MissingChunk { id }.is_remote_unavailable());
}
