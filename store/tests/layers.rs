//! The core's module graph, checked: `store/src/` is in layers, each using
//! only its own and those below it (docs/design.md, "Code layout"), and
//! only the store module (`store/`) reaches RocksDB. Read from the sources, so a new
//! `use` that breaks the layering fails here, not in review.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers, bottom first. A module not listed fails the test: a new
/// module must be given its place.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "formats and ids",
        &[
            "format", "id", "trace", "pack", "codec", "chunking", "name", "manifest",
        ],
    ),
    (
        "the store",
        &["store", "follower", "refcount", "cache", "files", "output"],
    ),
    (
        "operations",
        &[
            "import", "gc", "verify", "repair", "stats", "export", "capture", "remote", "trust",
        ],
    ),
    ("serving", &["serve", "learn", "record", "latency"]),
];

/// The one error type every layer returns: it wraps each area's fault
/// kinds (the remote's, the store's), so it names types of every layer,
/// and every layer uses it. It holds types only, no logic.
const TOP_LEVEL_ERROR: &str = "error.rs";

/// Test code, which may reach anything.
const TEST_FILES: &[&str] = &[
    "testing.rs",
    "serve/tests.rs",
    "remote/tests.rs",
    "remote/tier_tests.rs",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// Every `.rs` file under `dir`, relative to `src()`.
fn sources(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(src()).unwrap();
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}

/// The module a file belongs to: `serve/chunks.rs` is part of `serve`.
fn module_of(file: &str) -> &str {
    file.split('/').next().unwrap().trim_end_matches(".rs")
}

/// What `lib.rs` re-exports at the crate root, by item: `crate::Error` is
/// `error`'s.
fn root_items() -> BTreeMap<String, String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let mut items = BTreeMap::new();
    for statement in lib.split(';') {
        let Some(rest) = statement.trim().strip_prefix("pub use ") else {
            continue;
        };
        let (module, list) = rest.split_once("::").unwrap();
        let module = if module == "yolo_store_format" {
            "format"
        } else {
            module
        };
        for item in list.trim_matches(|c| c == '{' || c == '}').split(',') {
            let item = item.trim();
            if !item.is_empty() {
                items.insert(item.to_string(), module.to_string());
            }
        }
    }
    items
}

/// The first path segment of every `crate::` path in `text`, groups
/// (`crate::{a::X, b}`) included.
fn crate_paths(text: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut start) = (0, 0);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.push(ident(&group[start..i]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.push(ident(&group[start..i]));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.push(ident(rest));
        }
    }
    found.retain(|s| !s.is_empty());
    found
}

#[test]
fn each_module_uses_only_its_own_layer_and_those_below() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let items = root_items();
    let mut wrong = Vec::new();
    for file in files.iter().filter(|f| *f != "lib.rs") {
        if TEST_FILES.contains(&file.as_str()) || file == TOP_LEVEL_ERROR {
            continue;
        }
        let module = module_of(file);
        let Some(own) = layer_of(module) else {
            wrong.push(format!("{file}: module {module} has no layer in LAYERS"));
            continue;
        };
        let text = std::fs::read_to_string(src().join(file)).unwrap();
        // Test modules inline in a file may reach anything.
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        for used in crate_paths(text) {
            let target = items.get(&used).map_or(used.as_str(), String::as_str);
            if target == "error" {
                continue;
            }
            match layer_of(target) {
                Some(layer) if layer <= own => {}
                Some(layer) => wrong.push(format!(
                    "{file} ({}) uses {target} ({})",
                    LAYERS[own].0, LAYERS[layer].0
                )),
                None => wrong.push(format!("{file}: crate::{used} is no known module or item")),
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn only_the_store_module_reaches_rocksdb() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    assert!(files.iter().any(|f| f.starts_with("store/")));
    let reaching: Vec<&String> = files
        .iter()
        .filter(|f| !f.starts_with("store/"))
        .filter(|f| {
            let mut text = std::fs::read_to_string(src().join(f)).unwrap();
            if *f == TOP_LEVEL_ERROR {
                // RocksDB's error, as the source of `Error::Db`.
                text = text.replace("rocksdb::Error", "");
            }
            text.contains("rocksdb::") || text.contains("use rocksdb")
        })
        .collect();
    assert!(
        reaching.is_empty(),
        "RocksDB used outside store/: {reaching:?}"
    );
}

#[test]
fn the_path_reader_finds_groups_and_single_paths() {
    let text = "use crate::{a::X, b, c::{d, e}};\nlet x = crate::f::g(crate::H);";
    assert_eq!(crate_paths(text), ["a", "b", "c", "f", "H"]);
}
