//! A mount follows the store without ever writing it: whatever the writers
//! did (imports, an rm in the middle, a gc that compacts the blob files out
//! of order), a follower opened afterwards sees every VMI, and one opened
//! before sees the changes once it catches up.

use yolo_store_core::testing::family_image;
use yolo_store_core::{
    execute_gc, import, plan_gc, remove, BootImage, Follower, ImportOptions, Store,
};

/// A one-file boot image of `blocks` 4 KiB blocks of its own.
fn image(name: &str, seed: u64, blocks: u64) -> BootImage {
    family_image(name, seed, 0, blocks)
}

/// Each name's manifest and every one of its chunks, read through `store`.
fn assert_serves(store: &Store, names: &[&str]) {
    let mut found = store.names().unwrap();
    found.sort();
    assert_eq!(found, names, "the VMIs a follower sees");
    for name in names {
        let manifest = store.manifest(name).unwrap();
        for chunk in &manifest.chunks {
            store
                .read_chunk(&chunk.id)
                .unwrap_or_else(|e| panic!("{name}: chunk {}: {e}", chunk.id));
        }
    }
}

/// Four imports, each in its own writer session (one blob file each), then
/// the second removed and collected: gc drops that blob file while the
/// first one, older, stays. RocksDB's secondary recovery took that for a
/// missing file and fell back to a version from before the first import's
/// names were flushed, so a mount saw no VMI at all.
#[test]
fn a_follower_sees_every_vmi_after_gc_drops_a_blob_file_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    drop(Store::open_or_create(&path, None).unwrap());
    for (seed, name) in [(1, "a"), (2, "b"), (3, "c"), (4, "d")] {
        let store = Store::open(&path).unwrap();
        import(&store, &image(name, seed, 300), &ImportOptions::default()).unwrap();
    }
    let early = Follower::open(&path).unwrap();
    {
        let store = Store::open(&path).unwrap();
        remove(&store, &["b".to_string()]).unwrap();
        let plan = plan_gc(&store).unwrap();
        assert!(!plan.chunks.is_empty());
        execute_gc(&store, &plan).unwrap();
    }
    assert_serves(&Follower::open(&path).unwrap().current(), &["a", "c", "d"]);
    assert_serves(&early.catch_up().unwrap(), &["a", "c", "d"]);

    // And it keeps following: a later import shows up too.
    {
        let store = Store::open(&path).unwrap();
        import(&store, &image("e", 5, 300), &ImportOptions::default()).unwrap();
    }
    assert_serves(&early.catch_up().unwrap(), &["a", "c", "d", "e"]);
    assert_serves(
        &Follower::open(&path).unwrap().current(),
        &["a", "c", "d", "e"],
    );
}

/// A read-only open reads the MANIFEST, opens every table file, then lists
/// and replays the write-ahead logs. An import writes its packs and their
/// `numbers` records without the WAL, flushes them (a MANIFEST edit), then
/// logs its manifests. An open that read the MANIFEST before that flush and
/// the logs after that batch saw a manifest whose chunk numbers it had no
/// record of: the one EIO CI's soak saw at open (and `verify` would have
/// called the store corrupt). No view may be torn so.
#[test]
fn views_opened_while_imports_commit_resolve_every_manifest_they_list() {
    const IMPORTS: u64 = 150;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    drop(Store::open_or_create(&path, None).unwrap());
    let importing = std::sync::atomic::AtomicBool::new(true);
    let views = std::thread::scope(|s| {
        s.spawn(|| {
            let store = Store::open(&path).unwrap();
            for seed in 1..=IMPORTS {
                import(
                    &store,
                    &image(&format!("v{seed}"), seed, 40),
                    &ImportOptions::default(),
                )
                .unwrap();
            }
            importing.store(false, std::sync::atomic::Ordering::Relaxed);
        });
        let mut views = 0u64;
        while importing.load(std::sync::atomic::Ordering::Relaxed) {
            // A mount's view, and a read-only verb's (`verify`, `ls`).
            let view = match views % 2 {
                0 => Follower::open(&path).unwrap().current(),
                _ => std::sync::Arc::new(Store::open_read_only(&path).unwrap()),
            };
            for name in view.names().unwrap() {
                if let Err(e) = view.manifest(&name) {
                    panic!("view {views}: {name} is listed but does not resolve: {e}");
                }
            }
            views += 1;
        }
        views
    });
    eprintln!("{views} views, none torn");
}
