use super::*;
use crate::error::StoreFault;
use rocksdb::{ColumnFamilyDescriptor, Options, DB};
use std::os::unix::fs::PermissionsExt;

/// Table files of `store` this process has open.
fn open_tables(store: &Path) -> usize {
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| {
            target.parent() == Some(store) && target.extension() == Some("sst".as_ref())
        })
        .count()
}

#[test]
fn a_writer_opens_table_files_as_reads_need_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    Store::open_or_create(&path, None).unwrap();
    // One flush per process, as a thousand imports leave the store.
    for id in 0..48u64 {
        let store = Store::open(&path).unwrap();
        let packs = store.cf(CF_PACKS).unwrap();
        store.db.put_cf(packs, pack_key(id), b"pack").unwrap();
        store.flush_chunks().unwrap();
    }
    let tables = fs::read_dir(&path)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("sst".as_ref()))
        .count();
    assert!(tables >= 40, "only {tables} table files");
    let path = path.canonicalize().unwrap();
    let store = Store::open(&path).unwrap();
    // Before, the writer opened all of them (RocksDB's default); now
    // RocksDB preloads a few (16) and opens the rest when read.
    assert!(
        open_tables(&path) < tables / 2,
        "{} of {tables} open",
        open_tables(&path)
    );
    drop(store);
    // Readers beside a writer still open every one at start.
    let _reader = Store::open_read_only(&path).unwrap();
    assert_eq!(open_tables(&path), tables);
}

#[test]
fn a_creation_that_stopped_before_its_config_is_finished_by_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    // What a crash between creating the database and writing its
    // config leaves.
    drop(DB::open_cf_descriptors(&db_options(true), &path, cf_descriptors()).unwrap());
    assert!(matches!(Store::open(&path), Err(Error::UnfinishedStore(_))));
    let store = Store::open_or_create(&path, None).unwrap();
    assert_eq!(store.config(), &StoreConfig::default());
}

#[test]
fn a_store_of_format_2_is_refused_with_what_to_do_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    // Format 2's column families and config, as that build made them.
    {
        let db = DB::open_cf_descriptors(
            &db_options(true),
            &path,
            ["meta", "packs", "refs", "manifests"]
                .map(|name| ColumnFamilyDescriptor::new(name, Options::default())),
        )
        .unwrap();
        let config = br#"{"format":2,"chunking":{"kind":"fixed","size":4096},"zstd_level":3,"fastcdc_version":"3.2.1"}"#;
        db.put_cf(db.cf_handle("meta").unwrap(), CONFIG_KEY, config)
            .unwrap();
    }
    let files = |p: &Path| {
        let mut names: Vec<_> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| !n.to_string_lossy().starts_with("LOG"))
            .collect();
        names.sort();
        names
    };
    let before = files(&path);
    for opened in [
        Store::open(&path).err().unwrap(),
        Store::open_read_only(&path).err().unwrap(),
        Store::open_or_create(&path, None).err().unwrap(),
    ] {
        assert!(
            matches!(
                opened,
                Error::StoreConfig {
                    fault: StoreFault::UnsupportedFormat(2),
                    ..
                }
            ),
            "{opened}"
        );
        let why = opened.to_string();
        assert!(why.contains("store format 2 is not supported"), "{why}");
        assert!(why.contains("export") && why.contains("new store"), "{why}");
    }
    // Nothing was added to it (no `numbers` column family).
    assert_eq!(files(&path), before);
    let cfs = DB::list_cf(&Options::default(), &path).unwrap();
    assert!(!cfs.iter().any(|cf| cf == CF_NUMBERS), "{cfs:?}");
}

#[test]
fn a_directory_that_holds_other_files_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("home");
    fs::create_dir(&path).unwrap();
    fs::write(path.join("notes.txt"), b"mine").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o1777)).unwrap();
    let err = Store::open_or_create(&path, None).err().unwrap();
    assert!(
        matches!(&err, Error::StoreConfig { fault: StoreFault::OtherFiles { first }, .. }
            if first == "notes.txt"),
        "{err}"
    );
    assert!(err.to_string().contains("other files"), "{err}");
    let names: Vec<_> = fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["notes.txt"]);
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
        0o1777
    );
    // Through a symlink, the same.
    std::os::unix::fs::symlink(&path, dir.path().join("link")).unwrap();
    assert!(Store::open_or_create(&dir.path().join("link"), None).is_err());
    assert_eq!(fs::read_dir(&path).unwrap().count(), 1);
}

#[test]
fn an_empty_directory_becomes_a_store_and_keeps_its_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty");
    fs::create_dir(&path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o750)).unwrap();
    Store::open_or_create(&path, None).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
        0o750
    );
    // A new one is made private.
    let new = dir.path().join("new");
    Store::open_or_create(&new, None).unwrap();
    assert_eq!(
        fs::metadata(&new).unwrap().permissions().mode() & 0o7777,
        0o700
    );
    // A file is not a store.
    let file = dir.path().join("file");
    fs::write(&file, b"x").unwrap();
    let err = Store::open_or_create(&file, None).err().unwrap();
    assert!(
        matches!(
            err,
            Error::StoreConfig {
                fault: StoreFault::NotADirectory,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn creators_at_once_wait_for_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    // In one process RocksDB reports the held lock as "lock hold by
    // current process": every thread either opens it or is told it is
    // busy, never a raw lock error; none finds a half-made store.
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| Store::open_or_create(&path, None).map(drop)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for result in results {
        assert!(matches!(result, Ok(()) | Err(Error::Busy(_))), "{result:?}");
    }
    Store::open(&path).unwrap();
}
