//! Inode numbers for paths under the images directory. Numbers are given
//! out on first lookup and kept for the life of the mount (a few per VMI).
//!
//! Under a supervisor, the kernel keeps the numbers across server restarts,
//! so every number is written to an inode log (a memfd the supervisor holds)
//! before the lookup that made it is answered; a new server reads the log
//! and answers for the same numbers (`docs/design.md`, *Restarts VMs do not
//! notice*).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
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
    log: Option<File>,
}

/// A record of the log: ino (u64 LE), path length (u32 LE), path bytes.
const RECORD_HEAD: usize = 12;
/// No path we hand out is longer (PATH_MAX); a longer length is a torn or
/// foreign record.
const MAX_PATH: usize = 4096;

impl Table {
    fn insert(&mut self, ino: u64, path: String) {
        self.next = self.next.max(ino + 1);
        self.inos.insert(path.clone(), ino);
        self.paths.insert(ino, path);
    }
}

impl Default for Inodes {
    fn default() -> Self {
        let root = INodeNo::ROOT.0;
        Inodes {
            table: Mutex::new(Table {
                paths: HashMap::from([(root, String::new())]),
                inos: HashMap::from([(String::new(), root)]),
                next: FIRST_INO,
                log: None,
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

    /// The table the inode log `log` holds, and further numbers appended to
    /// it. A torn last record (a server killed in the middle of its write,
    /// before it answered the lookup) is cut off.
    pub fn from_log(mut log: File) -> io::Result<Inodes> {
        let mut bytes = Vec::new();
        log.seek(SeekFrom::Start(0))?;
        log.read_to_end(&mut bytes)?;
        let inodes = Inodes::default();
        let mut t = inodes.lock();
        let mut at = 0;
        while let Some((ino, path, len)) = parse_record(&bytes[at..]) {
            t.insert(ino, path);
            at += len;
        }
        log.set_len(at as u64)?;
        log.seek(SeekFrom::Start(at as u64))?;
        t.log = Some(log);
        drop(t);
        Ok(inodes)
    }

    /// The number of `path`, given out now (and logged) if it has none. An
    /// error means the number could not be logged: the lookup fails rather
    /// than hand the kernel a number the next server would not know.
    pub fn ino_of(&self, path: &str) -> io::Result<u64> {
        let mut t = self.lock();
        if let Some(&ino) = t.inos.get(path) {
            return Ok(ino);
        }
        let ino = t.next;
        if let Some(log) = &mut t.log {
            let mut record = Vec::with_capacity(RECORD_HEAD + path.len());
            record.extend_from_slice(&ino.to_le_bytes());
            record.extend_from_slice(&(path.len() as u32).to_le_bytes());
            record.extend_from_slice(path.as_bytes());
            log.write_all(&record)?;
        }
        t.insert(ino, path.to_string());
        Ok(ino)
    }

    pub fn parent_ino(&self, ino: u64) -> io::Result<u64> {
        let path = self.path(ino).unwrap_or_default();
        match path.rsplit_once('/') {
            Some((parent, _)) => self.ino_of(parent),
            None => Ok(INodeNo::ROOT.0),
        }
    }
}

/// One whole record at the start of `bytes`: (ino, path, its length).
fn parse_record(bytes: &[u8]) -> Option<(u64, String, usize)> {
    let ino = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let len = u32::from_le_bytes(bytes.get(8..RECORD_HEAD)?.try_into().ok()?) as usize;
    if len > MAX_PATH || ino < FIRST_INO {
        return None;
    }
    let path = std::str::from_utf8(bytes.get(RECORD_HEAD..RECORD_HEAD + len)?).ok()?;
    Some((ino, path.to_string(), RECORD_HEAD + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> File {
        tempfile::tempfile().unwrap()
    }

    #[test]
    fn a_new_table_from_the_log_gives_the_same_numbers() {
        let file = log();
        let first = Inodes::from_log(file.try_clone().unwrap()).unwrap();
        let a = first.ino_of("a.qcow2").unwrap();
        let dir = first.ino_of("dir").unwrap();
        let b = first.ino_of("dir/b.qcow2").unwrap();
        let second = Inodes::from_log(file.try_clone().unwrap()).unwrap();
        assert_eq!(second.path(a).as_deref(), Some("a.qcow2"));
        assert_eq!(second.path(b).as_deref(), Some("dir/b.qcow2"));
        assert_eq!(second.ino_of("dir").unwrap(), dir);
        // New numbers continue after the logged ones, and are logged too.
        let c = second.ino_of("c.qcow2").unwrap();
        assert!(c > b);
        let third = Inodes::from_log(file).unwrap();
        assert_eq!(third.path(c).as_deref(), Some("c.qcow2"));
    }

    #[test]
    fn a_torn_last_record_is_cut_off() {
        let mut file = log();
        let first = Inodes::from_log(file.try_clone().unwrap()).unwrap();
        let a = first.ino_of("a.qcow2").unwrap();
        // A server killed in the middle of logging "b.qcow2".
        file.seek(SeekFrom::End(0)).unwrap();
        file.write_all(&(a + 1).to_le_bytes()).unwrap();
        file.write_all(&7u32.to_le_bytes()).unwrap();
        file.write_all(b"b.q").unwrap();
        let second = Inodes::from_log(file.try_clone().unwrap()).unwrap();
        assert_eq!(second.path(a).as_deref(), Some("a.qcow2"));
        assert_eq!(second.path(a + 1), None);
        let b = second.ino_of("b.qcow2").unwrap();
        let third = Inodes::from_log(file).unwrap();
        assert_eq!(third.path(b).as_deref(), Some("b.qcow2"));
        assert_eq!(third.path(a).as_deref(), Some("a.qcow2"));
    }
}
