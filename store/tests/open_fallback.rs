//! An open whose boot image the store lists but cannot give (here: a
//! manifest naming a chunk number with no record) is served from the file,
//! byte for byte, and counted in `chunk_failures`, never failed. CI saw it
//! once, when a view of the store was opened while an import committed.

use yolo_store_core::testing::lose_chunk_number;
use yolo_store_core::{
    import, BootImage, Error, FileHeader, FileIdentity, FileImage, Follower, ImageServer,
    ImportOptions, Preload, ServeOptions, Store,
};

#[test]
fn an_open_the_store_cannot_resolve_is_served_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let data: Vec<u8> = (0..24 * 4096u32)
        .map(|i| (i * 7 / 3 + i / 4096) as u8)
        .collect();
    std::fs::write(images.join("vmi"), &data).unwrap();
    let blocks: Vec<u64> = vec![5, 0, 1, 2, 17, 9];
    let image = BootImage {
        block_size: 4096,
        files: vec![FileImage {
            header: FileHeader {
                name: "vmi".into(),
                file_size: data.len() as u64,
                identity: FileIdentity::of_file(&images.join("vmi")).unwrap(),
                blocks: blocks.clone(),
            },
            data: blocks
                .iter()
                .flat_map(|&b| data[b as usize * 4096..(b as usize + 1) * 4096].to_vec())
                .collect(),
        }],
    };
    let store = Store::open_or_create(&dir.path().join("store"), None).unwrap();
    import(&store, &image, &ImportOptions::default()).unwrap();
    let options = ServeOptions {
        cache_bytes: 1 << 20,
        preload: Preload::Never,
        ..ServeOptions::default()
    };
    let server = ImageServer::new(Follower::open(store.path()).unwrap(), &images, options).unwrap();
    assert!(server.verify_boot_image("vmi").unwrap());
    assert!(server.open("vmi").unwrap().has_boot_image());

    lose_chunk_number(&store, "vmi").unwrap();
    // Listed, yet not resolvable: not the UnknownVmi of a VMI without one.
    assert_eq!(store.names().unwrap(), ["vmi"]);
    let lost = store.manifest("vmi").unwrap_err();
    assert!(matches!(lost, Error::CorruptStore(_)), "{lost:?}");

    let before = server.stats().chunk_failures;
    let image = server.open("vmi").expect("the open fails");
    assert!(!image.has_boot_image());
    assert_eq!(server.read(&image, 0, data.len()).unwrap(), data);
    assert_eq!(server.stats().chunk_failures, before + 1);
}
