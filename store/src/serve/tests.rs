//! The server without a mount: reads stitched from the store and the file,
//! files that change under it, the page-cache policy, refused names.

use super::*;
use crate::format::{BootImage, FileHeader, FileImage};
use crate::id::FileIdentity;
use crate::import::{import, ImportOptions};
use proptest::prelude::*;

/// A store holding a boot image of `images/vmi` with `blocks` (in that
/// order), and a server over it with a cache of `cache` bytes, no preloads
/// and passthrough asked for.
fn serve(data: &[u8], blocks: &[u64], cache: usize) -> (tempfile::TempDir, ImageServer) {
    let options = ServeOptions {
        cache_bytes: cache,
        preload: Preload::Never,
        passthrough: true,
        remote: None,
    };
    serve_with(data, blocks, options)
}

fn serve_with(
    data: &[u8],
    blocks: &[u64],
    options: ServeOptions,
) -> (tempfile::TempDir, ImageServer) {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::write(images.join("vmi"), data).unwrap();
    let header = FileHeader {
        name: "vmi".into(),
        file_size: data.len() as u64,
        identity: FileIdentity::of_file(&images.join("vmi")).unwrap(),
        blocks: blocks.to_vec(),
    };
    let mut block_data = Vec::new();
    for &b in blocks {
        let start = b as usize * 4096;
        block_data.extend_from_slice(&data[start..(start + 4096).min(data.len())]);
    }
    let image = BootImage {
        block_size: 4096,
        files: vec![FileImage {
            header,
            data: block_data,
        }],
    };
    let path = dir.path().join("store");
    let store = crate::Store::open_or_create(&path, None).unwrap();
    import(&store, &image, &ImportOptions::default()).unwrap();
    drop(store);
    let server = ImageServer::new(Follower::open(&path).unwrap(), &images, options).unwrap();
    server.verify_boot_image("vmi").unwrap();
    (dir, server)
}

fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 / 7 + i / 4096) as u8).collect()
}

#[test]
fn reads_stitch_store_and_file() {
    let data = content(10 * 4096 + 123);
    let (_dir, server) = serve(&data, &[7, 2, 10, 3], 1 << 20);
    let image = server.open("vmi").unwrap();
    assert!(image.has_boot_image());
    // Block 2 and 3 from the store, 4 from the file, across both edges.
    let got = server.read(&image, 2 * 4096 + 5, 3 * 4096).unwrap();
    assert_eq!(got, &data[2 * 4096 + 5..5 * 4096 + 5]);
    // The short last block, and a read past the end.
    let got = server.read(&image, 10 * 4096, 8192).unwrap();
    assert_eq!(got, &data[10 * 4096..]);
    assert!(server
        .read(&image, data.len() as u64 + 1, 10)
        .unwrap()
        .is_empty());
    let stats = server.stats();
    assert_eq!(stats.bytes_from_store, 2 * 4096 - 5 + 123);
    assert_eq!(stats.bytes_from_file, 5 + 4096);
}

#[test]
fn a_changed_file_is_served_from_itself() {
    let data = content(4 * 4096);
    let (dir, server) = serve(&data, &[0, 1], 1 << 20);
    let changed: Vec<u8> = data.iter().map(|b| b ^ 0xFF).collect();
    std::fs::write(dir.path().join("images/vmi"), &changed).unwrap();
    // Until the new version is hashed, opens are served from the file.
    let image = server.open("vmi").unwrap();
    assert!(!image.has_boot_image());
    assert_eq!(server.read(&image, 0, 8192).unwrap(), &changed[..8192]);
    assert_eq!(server.stats().unverified_opens, 1);
    server.verify_boot_image("vmi").unwrap();
    let image = server.open("vmi").unwrap();
    assert!(!image.has_boot_image());
    assert_eq!(server.read(&image, 0, 8192).unwrap(), &changed[..8192]);
    assert_eq!(server.stats().identity_mismatches, 1);
}

#[test]
fn a_held_file_truncated_or_grown_is_read_to_its_current_end() {
    let data = content(10 * 4096);
    let (dir, server) = serve(&data, &[9, 0], 1 << 20);
    let path = dir.path().join("images/vmi");
    let image = server.open("vmi").unwrap();
    assert!(image.has_boot_image());
    // Truncated under the open file: the recorded last block is past
    // the new end and must not come back from the store.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(9 * 4096)
        .unwrap();
    assert!(server.read(&image, 9 * 4096, 4096).unwrap().is_empty());
    assert_eq!(server.read(&image, 0, 4096).unwrap(), &data[..4096]);
    // Grown: the bytes past the old end are there at once.
    let mut grown = data[..9 * 4096].to_vec();
    grown.extend(content(3 * 4096).iter().map(|b| b ^ 0x5A));
    std::fs::write(&path, &grown).unwrap();
    assert_eq!(
        server.read(&image, 8 * 4096, 4 * 4096).unwrap(),
        &grown[8 * 4096..]
    );
}

#[test]
fn a_fifo_with_a_vmi_name_is_refused_without_blocking() {
    let data = content(4096);
    let (dir, server) = serve(&data, &[0], 1 << 20);
    let path = dir.path().join("images/vmi");
    std::fs::remove_file(&path).unwrap();
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    assert!(server.verify_boot_image("vmi").is_err());
    assert!(server.open("vmi").is_err());
}

#[test]
fn a_file_served_with_a_boot_image_bypasses_the_page_cache() {
    let data = content(8 * 4096);
    let (dir, server) = serve(&data, &[3, 1], 1 << 20);
    let image = server.open("vmi").unwrap();
    assert_eq!(server.page_cache(&image), PageCache::Direct);
    assert_eq!(server.page_cache(&image), PageCache::Direct);
    // A file without one is buffered, its pages kept while it is the
    // same version as at the previous open.
    let other = dir.path().join("images/other");
    std::fs::write(&other, &data).unwrap();
    let open = |s: &ImageServer| s.page_cache(&s.open("other").unwrap());
    assert_eq!(open(&server), PageCache::Passthrough { keep: false });
    assert_eq!(open(&server), PageCache::Passthrough { keep: true });
    std::fs::write(&other, &data[..4096]).unwrap();
    assert_eq!(open(&server), PageCache::Passthrough { keep: false });
}

#[test]
fn without_passthrough_a_plain_file_is_buffered() {
    let data = content(4 * 4096);
    let options = ServeOptions {
        passthrough: false,
        preload: Preload::Never,
        ..ServeOptions::default()
    };
    let (dir, server) = serve_with(&data, &[1], options);
    assert!(!server.wants_passthrough());
    std::fs::write(dir.path().join("images/other"), &data).unwrap();
    let open = |s: &ImageServer| s.page_cache(&s.open("other").unwrap());
    assert_eq!(open(&server), PageCache::Buffered { keep: false });
    assert_eq!(open(&server), PageCache::Buffered { keep: true });
    let image = server.open("vmi").unwrap();
    assert_eq!(server.page_cache(&image), PageCache::Direct);
}

#[test]
fn a_boot_image_is_preloaded_at_its_first_open_only() {
    let data = content(16 * 4096);
    let blocks = [5, 1, 9, 2];
    let options = |preload| ServeOptions {
        preload,
        ..ServeOptions::default()
    };
    let (dir, server) = serve_with(&data, &blocks, options(Preload::OnOpen));
    // The first open started the preload; no later open of the same file
    // with the same boot image starts another.
    let image = server.open("vmi").unwrap();
    assert!(!server.sessions.first_preload(&image));
    assert!(!server.sessions.first_preload(&server.open("vmi").unwrap()));
    // A file without a boot image has nothing to preload.
    std::fs::write(dir.path().join("images/other"), &data).unwrap();
    assert!(!server
        .sessions
        .first_preload(&server.open("other").unwrap()));
    // Forgotten (a remote boot image not stored yet): the next open loads
    // it again.
    server.sessions.preload_again("vmi");
    assert!(server.sessions.first_preload(&image));

    let (_dir, server) = serve_with(&data, &blocks, options(Preload::Never));
    let image = server.open("vmi").unwrap();
    assert!(image.has_boot_image());
    assert!(!server.sessions.first_preload(&image));
    assert_eq!(server.stats().preload_chunks_total, 0);
}

/// Waits (bounded) until the server's preloads have loaded `chunks`.
fn preloaded(server: &ImageServer, chunks: u64) -> ServeStats {
    for _ in 0..3000 {
        let stats = server.stats();
        if stats.preload_chunks_done >= chunks && stats.startup_verification_done {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("not preloaded: {:?}", server.stats());
}

#[test]
fn preload_all_loads_every_checked_boot_image_without_an_open() {
    let data = content(16 * 4096);
    let options = ServeOptions {
        preload: Preload::All,
        ..ServeOptions::default()
    };
    let (_dir, server) = serve_with(&data, &[5, 1, 9, 2], options);
    let server = Arc::new(server);
    assert_eq!(server.verify_all_in_background().unwrap(), 1);
    let stats = preloaded(&server, 4);
    assert_eq!(stats.preload_chunks_total, 4, "{stats:?}");
    assert_eq!(stats.cache.chunks, 4, "{stats:?}");
    // Served from the cache alone.
    let image = server.open("vmi").unwrap();
    let misses = server.stats().cache.misses;
    assert_eq!(
        server.read(&image, 5 * 4096, 4096).unwrap(),
        &data[5 * 4096..6 * 4096]
    );
    assert_eq!(server.stats().cache.misses, misses);
    assert_eq!(server.stats().preload_chunks_total, 4, "loaded once");
}

#[test]
fn preload_on_open_loads_a_boot_image_at_its_first_open() {
    let data = content(16 * 4096);
    let (_dir, server) = serve_with(&data, &[5, 1, 9, 2], ServeOptions::default());
    let server = Arc::new(server);
    server.verify_all_in_background().unwrap();
    let stats = preloaded(&server, 0);
    assert_eq!(stats.preload_chunks_total, 0, "not before an open");
    let _image = server.open("vmi").unwrap();
    let stats = preloaded(&server, 4);
    assert_eq!(stats.cache.chunks, 4, "{stats:?}");
}

#[test]
fn only_a_file_the_server_adds_nothing_to_is_passed_through() {
    let data = content(8 * 4096);
    let (dir, server) = serve(&data, &[3, 1], 1 << 20);
    let path = dir.path().join("images/vmi");
    // Changed: a check is pending, and the boot image may serve from
    // the next open, so this one must not pin the file to passthrough.
    let changed: Vec<u8> = data.iter().map(|b| b ^ 0x11).collect();
    std::fs::write(&path, &changed).unwrap();
    let image = server.open("vmi").unwrap();
    assert_eq!(
        server.page_cache(&image),
        PageCache::Buffered { keep: false }
    );
    // Checked, and its blocks differ: nothing for the server to add.
    server.verify_boot_image("vmi").unwrap();
    let image = server.open("vmi").unwrap();
    assert!(matches!(
        server.page_cache(&image),
        PageCache::Passthrough { .. }
    ));
    // Back to the recorded bytes: the boot image serves again.
    std::fs::write(&path, &data).unwrap();
    server.verify_boot_image("vmi").unwrap();
    let image = server.open("vmi").unwrap();
    assert_eq!(server.page_cache(&image), PageCache::Direct);
}

#[test]
fn names_outside_the_images_directory_are_refused() {
    let data = content(4096);
    let (dir, server) = serve(&data, &[0], 1 << 20);
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("images/link")).unwrap();
    for name in ["../store/CURRENT", "/etc/passwd", "link", "a/../../x", ""] {
        assert!(server.open(name).is_err(), "{name} was opened");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn every_read_equals_the_file(
        picks in proptest::collection::vec(0u64..40, 0..40),
        reads in proptest::collection::vec((0u64..41 * 4096, 1usize..70_000), 1..40),
        cache in prop_oneof![Just(0usize), Just(64 << 10), Just(1 << 20)],
    ) {
        let data = content(40 * 4096 - 77);
        let mut blocks = Vec::new();
        for b in picks {
            if !blocks.contains(&b) {
                blocks.push(b);
            }
        }
        let (_dir, server) = serve(&data, &blocks, cache);
        let image = server.open("vmi").unwrap();
        for (offset, len) in reads {
            let start = (offset as usize).min(data.len());
            let want = &data[start..(start + len).min(data.len())];
            prop_assert_eq!(server.read(&image, offset, len).unwrap(), want);
        }
    }
}
