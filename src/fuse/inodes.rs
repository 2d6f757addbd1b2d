//! Inode numbers for paths under the images directory. Numbers are given
//! out on first lookup and kept for the life of the mount (a few per VMI).

use std::collections::HashMap;
use std::sync::Mutex;

use fuser::INodeNo;

pub use yolo_store_core::STATUS_FILE;
pub const STATUS_INO: u64 = 2;
const FIRST_INO: u64 = 3;

pub struct Inodes {
    table: Mutex<Table>,
}

struct Table {
    paths: HashMap<u64, String>,
    inos: HashMap<String, u64>,
    next: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        let root = INodeNo::ROOT.0;
        Inodes {
            table: Mutex::new(Table {
                paths: HashMap::from([(root, String::new())]),
                inos: HashMap::from([(String::new(), root)]),
                next: FIRST_INO,
            }),
        }
    }
}

impl Inodes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Relative path of `ino` ("" for the root).
    pub fn path(&self, ino: u64) -> Option<String> {
        self.lock().paths.get(&ino).cloned()
    }

    /// Relative path of `name` inside directory `parent`, if `name` is a
    /// plain component (never `.`, `..` or containing `/`).
    pub fn child_path(&self, parent: u64, name: &str) -> Option<String> {
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.contains('\0')
        {
            return None;
        }
        let dir = self.path(parent)?;
        Some(if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        })
    }

    pub fn ino_of(&self, path: &str) -> u64 {
        let mut t = self.lock();
        if let Some(&ino) = t.inos.get(path) {
            return ino;
        }
        let ino = t.next;
        t.next += 1;
        t.inos.insert(path.to_string(), ino);
        t.paths.insert(ino, path.to_string());
        ino
    }

    pub fn parent_ino(&self, ino: u64) -> u64 {
        let path = self.path(ino).unwrap_or_default();
        match path.rsplit_once('/') {
            Some((parent, _)) => self.ino_of(parent),
            None => INodeNo::ROOT.0,
        }
    }
}
