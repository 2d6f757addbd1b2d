//! Refcounts against the manifests, through the public verbs: whatever
//! sequence of import, rm (names repeated included), pull and gc runs, every
//! chunk's refcount is the number of manifests that use it, and no chunk a
//! manifest uses is ever collected.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use proptest::prelude::*;
use yolo_store_core::testing::family_image as image;
use yolo_store_core::{
    execute_gc, import, plan_gc, pull, push, remove, verify, ChunkId, ImportOptions, Remote,
    RemoteOptions, Store,
};

/// Every chunk's refcount equals the number of manifests that use it, and
/// every manifest's chunks read back.
fn assert_refcounts_match_manifests(store: &Store) {
    let mut users: HashMap<ChunkId, u64> = HashMap::new();
    for (name, manifest) in store.manifests().unwrap() {
        let manifest = manifest.unwrap();
        let distinct: HashSet<ChunkId> = manifest.chunks.iter().map(|c| c.id).collect();
        for id in distinct {
            *users.entry(id).or_default() += 1;
            store
                .read_chunk(&id)
                .unwrap_or_else(|e| panic!("{name} lost chunk {id}: {e}"));
        }
    }
    for (id, info) in store.chunk_infos().unwrap() {
        assert_eq!(
            info.refs,
            users.get(&id).copied().unwrap_or(0),
            "refcount of {id}"
        );
    }
    let report = verify(store).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

#[test]
fn rm_of_a_repeated_name_keeps_the_chunks_other_vmis_use() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_or_create(&dir.path().join("s"), None).unwrap();
    import(&store, &image("vmi1", 1, 100, 5), &ImportOptions::default()).unwrap();
    import(&store, &image("vmi2", 2, 100, 7), &ImportOptions::default()).unwrap();
    remove(&store, &["vmi1".to_string(), "vmi1".to_string()]).unwrap();
    assert_refcounts_match_manifests(&store);
    // Only vmi1's own chunks are garbage; the 100 shared ones stay.
    let plan = plan_gc(&store).unwrap();
    assert_eq!(plan.chunks.len(), 5);
    execute_gc(&store, &plan).unwrap();
    assert_refcounts_match_manifests(&store);
}

#[test]
fn rm_of_an_unknown_name_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_or_create(&dir.path().join("s"), None).unwrap();
    import(&store, &image("vmi1", 1, 10, 5), &ImportOptions::default()).unwrap();
    assert!(remove(&store, &["vmi1".to_string(), "nope".to_string()]).is_err());
    assert_eq!(store.names().unwrap(), ["vmi1"]);
    assert_refcounts_match_manifests(&store);
}

#[derive(Clone, Debug)]
enum Op {
    /// Import these (name, seed) images, one import each.
    Import(Vec<(usize, u64)>),
    /// Remove these names in one call (repeats allowed); unknown names make
    /// the whole call fail and change nothing.
    Rm(Vec<usize>),
    /// Pull everything the remote holds.
    Pull,
    Gc,
}

const NAMES: [&str; 4] = ["a", "b", "c", "d"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => proptest::collection::vec((0..NAMES.len(), 1..6u64), 1..3).prop_map(Op::Import),
        3 => proptest::collection::vec(0..NAMES.len(), 1..4).prop_map(Op::Rm),
        1 => Just(Op::Pull),
        2 => Just(Op::Gc),
    ]
}

fn remote_with(dir: &Path) -> Remote {
    let source = Store::open_or_create(&dir.join("source"), None).unwrap();
    for (name, seed) in [("b", 7), ("e", 8)] {
        import(
            &source,
            &image(name, seed, 12, 3),
            &ImportOptions::default(),
        )
        .unwrap();
    }
    let remote = Remote::open(
        &format!("file://{}", dir.join("remote").display()),
        RemoteOptions::default(),
    )
    .unwrap();
    push(&source, &remote, &[]).unwrap();
    remote
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn refcounts_follow_the_manifests_through_any_sequence(ops in proptest::collection::vec(op(), 1..8)) {
        let dir = tempfile::tempdir().unwrap();
        let remote = remote_with(dir.path());
        let store = Store::open_or_create(&dir.path().join("s"), None).unwrap();
        for op in ops {
            match op {
                Op::Import(images) => {
                    for (name, seed) in images {
                        let img = image(NAMES[name], seed, 12, seed % 3 + 1);
                        import(&store, &img, &ImportOptions::default()).unwrap();
                    }
                }
                Op::Rm(names) => {
                    let names: Vec<String> = names.iter().map(|&i| NAMES[i].to_string()).collect();
                    let before = store.names().unwrap();
                    let all_known = names.iter().all(|n| before.contains(n));
                    prop_assert_eq!(remove(&store, &names).is_ok(), all_known);
                    if !all_known {
                        prop_assert_eq!(store.names().unwrap(), before);
                    }
                }
                Op::Pull => {
                    pull(&store, &remote, &[]).unwrap();
                }
                Op::Gc => {
                    execute_gc(&store, &plan_gc(&store).unwrap()).unwrap();
                }
            }
            assert_refcounts_match_manifests(&store);
        }
    }
}
