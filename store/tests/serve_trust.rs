//! What the server trusts before it serves a boot image: the file's recorded
//! blocks must hash to the manifest's chunks, whatever identity the boot
//! image claims; checking must survive a file that changes meanwhile, and
//! must not take a thread per file.

use std::path::Path;
use std::sync::Arc;

use yolo_store_core::{
    import, BootImage, FileHeader, FileIdentity, FileImage, Follower, ImageServer, ImportOptions,
    Preload, ServeOptions, Store,
};

fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i * 31 / 7 + i / 4096) as u8 ^ seed)
        .collect()
}

/// Imports a boot image of `images/name` claiming `identity`, whose
/// recorded blocks `blocks` carry `block_data(block)`.
fn import_image(
    store: &Store,
    name: &str,
    file_size: u64,
    identity: FileIdentity,
    blocks: &[u64],
    block_data: impl Fn(u64) -> Vec<u8>,
) {
    let data = blocks.iter().flat_map(|&b| block_data(b)).collect();
    let image = BootImage {
        block_size: 4096,
        files: vec![FileImage {
            header: FileHeader {
                name: name.into(),
                file_size,
                identity,
                blocks: blocks.to_vec(),
            },
            data,
        }],
    };
    import(store, &image, &ImportOptions::default()).unwrap();
}

fn block_of(data: &[u8], b: u64) -> Vec<u8> {
    let start = b as usize * 4096;
    data[start..(start + 4096).min(data.len())].to_vec()
}

fn setup(dir: &Path) -> (std::path::PathBuf, Store) {
    let images = dir.join("images");
    std::fs::create_dir(&images).unwrap();
    let store = Store::open_or_create(&dir.join("store"), None).unwrap();
    (images, store)
}

#[test]
fn a_boot_image_that_copies_a_files_identity_but_not_its_blocks_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let (images, store) = setup(dir.path());
    let data = content(16 * 4096, 0);
    std::fs::write(images.join("vmi"), &data).unwrap();
    // The genuine identity, with forged block data: what a poisoned remote
    // or a resealed .yolo would carry.
    let genuine = FileIdentity::of_file(&images.join("vmi")).unwrap();
    import_image(&store, "vmi", data.len() as u64, genuine, &[3, 1, 4], |b| {
        block_of(&data, b).iter().map(|x| x ^ 0x5A).collect()
    });
    let server =
        ImageServer::new(Follower::open(store.path()).unwrap(), &images, options()).unwrap();
    let _ = server.verify_boot_image("vmi");
    for _ in 0..2 {
        let image = server.open("vmi").unwrap();
        assert!(!image.has_boot_image(), "a forged boot image is served");
        assert_eq!(server.read(&image, 0, data.len()).unwrap(), data);
    }
}

#[test]
fn checking_a_file_that_is_truncated_meanwhile_does_not_kill_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (images, store) = setup(dir.path());
    let len: u64 = 512 << 20;
    let path = images.join("vmi");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(len).unwrap();
    let zero = vec![0u8; 4096];
    import_image(
        &store,
        "vmi",
        len,
        FileIdentity([7; 32]),
        &[0, 9_000, 100_000],
        |_| zero.clone(),
    );
    let server =
        ImageServer::new(Follower::open(store.path()).unwrap(), &images, options()).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let truncator = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                file.set_len(4096).unwrap();
                file.set_len(len).unwrap();
            }
        })
    };
    for _ in 0..20 {
        // Ok or an error: either way the process lives.
        let _ = server.verify_boot_image("vmi");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    truncator.join().unwrap();
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn opening_many_new_files_does_not_take_a_thread_each() {
    let dir = tempfile::tempdir().unwrap();
    let (images, store) = setup(dir.path());
    let len: u64 = 256 << 20;
    let files = 48;
    for i in 0..files {
        let name = format!("vmi{i}");
        std::fs::File::create(images.join(&name))
            .unwrap()
            .set_len(len)
            .unwrap();
        let zero = vec![0u8; 4096];
        import_image(
            &store,
            &name,
            len,
            FileIdentity([i as u8; 32]),
            &[0, 1],
            |_| zero.clone(),
        );
    }
    let server =
        ImageServer::new(Follower::open(store.path()).unwrap(), &images, options()).unwrap();
    let before = threads();
    let mut most = before;
    for i in 0..files {
        server.open(&format!("vmi{i}")).unwrap();
        most = most.max(threads());
    }
    // A bounded pool: a few workers, whatever the number of files.
    assert!(
        most <= before + 8,
        "{} threads for {files} files",
        most - before
    );
}

/// A server over `dir`'s store and images, as a mount that (re)starts.
fn start(dir: &Path) -> ImageServer {
    let store = Follower::open(&dir.join("store")).unwrap();
    ImageServer::new(store, &dir.join("images"), options()).unwrap()
}

#[test]
fn a_file_changed_inside_its_recorded_blocks_is_never_served_and_outside_them_still_is() {
    let dir = tempfile::tempdir().unwrap();
    let (images, store) = setup(dir.path());
    let data = content(32 * 4096, 0);
    let path = images.join("vmi");
    std::fs::write(&path, &data).unwrap();
    let recorded = [5u64, 2, 9, 3];
    import_image(
        &store,
        "vmi",
        data.len() as u64,
        FileIdentity([1; 32]),
        &recorded,
        |b| block_of(&data, b),
    );
    drop(store);
    // Older than the racy window, so the check is kept on disk.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let first = start(dir.path());
    assert!(first.verify_boot_image("vmi").unwrap());
    drop(first);

    // A restart of an unchanged node trusts the file without reading it.
    let server = start(dir.path());
    assert_eq!(server.stats().boot_images_verified, 1);
    let image = server.open("vmi").unwrap();
    assert!(image.has_boot_image());
    assert_eq!(server.stats().unverified_opens, 0);
    assert_eq!(server.read(&image, 0, data.len()).unwrap(), data);

    for restart in [false, true] {
        // Outside the recorded blocks: served from the boot image still,
        // byte for byte.
        let mut outside = std::fs::read(&path).unwrap();
        outside[20 * 4096] ^= 0xFF;
        std::fs::write(&path, &outside).unwrap();
        let restarted;
        let now: &ImageServer = match restart {
            true => {
                restarted = start(dir.path());
                &restarted
            }
            false => &server,
        };
        assert!(now.verify_boot_image("vmi").unwrap());
        let image = now.open("vmi").unwrap();
        assert!(image.has_boot_image());
        assert_eq!(now.read(&image, 0, outside.len()).unwrap(), outside);

        // Inside one: never served, in this process or after a restart.
        let mut inside = outside.clone();
        inside[9 * 4096 + 7] ^= 0xFF;
        std::fs::write(&path, &inside).unwrap();
        for server in [now, &start(dir.path())] {
            assert!(!server.verify_boot_image("vmi").unwrap());
            let image = server.open("vmi").unwrap();
            assert!(!image.has_boot_image());
            assert_eq!(server.read(&image, 0, inside.len()).unwrap(), inside);
        }
        // The recorded block back, for the next round.
        std::fs::write(&path, &outside).unwrap();
    }
}

/// A small cache and no preloads: these tests look at what opens decide.
fn options() -> ServeOptions {
    ServeOptions {
        cache_bytes: 1 << 20,
        preload: Preload::Never,
        ..ServeOptions::default()
    }
}
