//! When a boot image may serve a file. A boot image's identity field is a
//! claim; the proof is that the file's recorded blocks, read from the file,
//! hash to the manifest's chunks. Serving is byte-exact exactly when every
//! block served equals the file's block at that offset, so that check is
//! all serving needs, and it reads the ~50 MB a boot reads, not the whole
//! multi-GB VMI.
//!
//! The result is remembered per file version (device, inode, size, mtime
//! and ctime in nanoseconds: the key git's index trusts) and per manifest,
//! in memory and in a file beside the store, so a restarted mount trusts an
//! unchanged file without reading it. The version is read before the blocks
//! and again after, and a change in between voids the check. A version
//! changed less than [`RACY_NS`] before it was checked is remembered in
//! memory only: this kernel gives a change after a `stat` a distinct
//! timestamp (multigrain timestamps), but the file may be read after a
//! reboot by one whose coarse clock could give a write in the same tick the
//! same timestamp ("racy git").

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

use crate::id::{ChunkId, ManifestHash};
use crate::manifest::Manifest;
use crate::{Error, Result};

/// As text, for the mount to show which file it serves (an extended
/// attribute): `DEV INO SIZE MTIME_NS CTIME_NS`.
impl std::fmt::Display for FileVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let FileVersion {
            dev,
            ino,
            size,
            mtime_ns,
            ctime_ns,
        } = self;
        write!(f, "{dev} {ino} {size} {mtime_ns} {ctime_ns}")
    }
}

impl std::str::FromStr for FileVersion {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let bad = || Error::FileVersion(text.to_string());
        let fields: Vec<&str> = text.split(' ').collect();
        let [dev, ino, size, mtime_ns, ctime_ns] = fields.as_slice() else {
            return Err(bad());
        };
        Ok(FileVersion {
            dev: dev.parse().map_err(|_| bad())?,
            ino: ino.parse().map_err(|_| bad())?,
            size: size.parse().map_err(|_| bad())?,
            mtime_ns: mtime_ns.parse().map_err(|_| bad())?,
            ctime_ns: ctime_ns.parse().map_err(|_| bad())?,
        })
    }
}

/// What identifies one version of a file on this node without reading it:
/// if any of these change, the file is checked again.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct FileVersion {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl FileVersion {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        FileVersion {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether `self` and `other` are the same file (device and inode): a
    /// file seen through the mount and one in the images directory.
    pub fn same_file(&self, other: &FileVersion) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }

    const LEN: usize = 40;

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.dev.to_le_bytes());
        out.extend_from_slice(&self.ino.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.mtime_ns.to_le_bytes());
        out.extend_from_slice(&self.ctime_ns.to_le_bytes());
    }

    fn decode(b: &[u8; Self::LEN]) -> Self {
        let at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i * 8..i * 8 + 8]);
            x
        };
        FileVersion {
            dev: u64::from_le_bytes(at(0)),
            ino: u64::from_le_bytes(at(1)),
            size: u64::from_le_bytes(at(2)),
            mtime_ns: i64::from_le_bytes(at(3)),
            ctime_ns: i64::from_le_bytes(at(4)),
        }
    }
}

/// A version changed this recently before its check is not remembered.
pub const RACY_NS: i64 = 2_000_000_000;

/// Whether `file`'s blocks at the manifest's recorded offsets are the
/// manifest's block stream: every chunk of it hashes to its id. Reads with
/// `pread` (a file truncated meanwhile gives an error or a mismatch, never
/// SIGBUS), in offset order (one pass over the disk), into one buffer of
/// the stream's size.
pub fn blocks_match(file: &File, manifest: &Manifest) -> Result<bool> {
    let size = file.metadata().map_err(|e| Error::io("<vmi>", e))?.len();
    if size != manifest.file_size {
        return Ok(false);
    }
    let bs = u64::from(manifest.block_size);
    let mut at = 0u64;
    let mut order: Vec<(u64, u64, usize)> = Vec::with_capacity(manifest.blocks.len());
    for &block in &manifest.blocks {
        let len = manifest.block_len(block);
        order.push((block, at, len));
        at += len as u64;
    }
    order.sort_unstable();
    let mut stream = vec![0u8; at as usize];
    // Runs of adjacent blocks that are also adjacent in the stream are one
    // read.
    let mut i = 0;
    while i < order.len() {
        let (first, stream_at, mut len) = order[i];
        let mut j = i + 1;
        while j < order.len()
            && order[j].0 == order[j - 1].0 + 1
            && order[j].1 == order[j - 1].1 + order[j - 1].2 as u64
            && len < 8 << 20
        {
            len += order[j].2;
            j += 1;
        }
        let dst = &mut stream[stream_at as usize..stream_at as usize + len];
        match file.read_exact_at(dst, first * bs) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(Error::io("<vmi>", e)),
        }
        i = j;
    }
    let mut starts = Vec::with_capacity(manifest.chunks.len());
    let mut at = 0usize;
    for chunk in &manifest.chunks {
        starts.push(at);
        at += chunk.len as usize;
    }
    Ok(manifest
        .chunks
        .par_iter()
        .zip(starts)
        .all(|(chunk, start)| {
            stream
                .get(start..start + chunk.len as usize)
                .is_some_and(|bytes| ChunkId::of(bytes) == chunk.id)
        }))
}

/// (file version, manifest) pairs whose blocks matched, kept in a file so
/// they outlive the process.
pub(crate) struct Verified {
    path: Option<PathBuf>,
    /// Each pair, and whether it may be kept on disk.
    set: HashMap<(FileVersion, ManifestHash), bool>,
}

const MAGIC: &[u8; 8] = b"YOLOVB1\n";
const RECORD: usize = FileVersion::LEN + 32;

impl Verified {
    /// Loads what `path` remembers; a missing, short or damaged file
    /// remembers nothing (everything is checked again).
    pub fn load(path: Option<PathBuf>) -> Self {
        let set = path
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| decode(&bytes))
            .unwrap_or_default()
            .into_iter()
            .map(|pair| (pair, true))
            .collect();
        Verified { path, set }
    }

    pub fn contains(&self, version: FileVersion, manifest: ManifestHash) -> bool {
        self.set.contains_key(&(version, manifest))
    }

    /// Remembers a match checked from `checked_at_ns` on; on disk too,
    /// unless the file changed too shortly before for its timestamps to be
    /// trusted by another boot.
    pub fn insert(&mut self, version: FileVersion, manifest: ManifestHash, checked_at_ns: i64) {
        let keep = version.ctime_ns.max(version.mtime_ns) < checked_at_ns - RACY_NS;
        *self.set.entry((version, manifest)).or_default() |= keep;
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Writes the set atomically (a temp file, then rename), leaving out
    /// the old versions of files whose `current` version is known.
    pub fn save(&self, current: &HashSet<FileVersion>) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let files: HashSet<(u64, u64)> = current.iter().map(|v| (v.dev, v.ino)).collect();
        let mut records: Vec<_> = self
            .set
            .iter()
            .filter(|(_, keep)| **keep)
            .map(|(pair, _)| pair)
            .filter(|(v, _)| current.contains(v) || !files.contains(&(v.dev, v.ino)))
            .collect();
        let mut bytes = Vec::with_capacity(MAGIC.len() + records.len() * RECORD + 32);
        bytes.extend_from_slice(MAGIC);
        records.sort_by_key(|(v, m)| (v.dev, v.ino, m.0));
        for (version, manifest) in records {
            version.encode(&mut bytes);
            bytes.extend_from_slice(&manifest.0);
        }
        let sum = *blake3::hash(&bytes).as_bytes();
        bytes.extend_from_slice(&sum);
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(path, e)
        })
    }
}

fn decode(bytes: &[u8]) -> Option<HashSet<(FileVersion, ManifestHash)>> {
    let body = bytes.strip_prefix(MAGIC.as_slice())?;
    let (records, sum) = body.split_at_checked(body.len().checked_sub(32)?)?;
    if blake3::hash(&bytes[..bytes.len() - 32]).as_bytes() != sum || records.len() % RECORD != 0 {
        return None;
    }
    Some(
        records
            .chunks_exact(RECORD)
            .filter_map(|r| {
                let version = FileVersion::decode(r[..FileVersion::LEN].try_into().ok()?);
                let manifest = ManifestHash(r[FileVersion::LEN..].try_into().ok()?);
                Some((version, manifest))
            })
            .collect(),
    )
}

/// Now, in nanoseconds since the epoch, as file timestamps count.
pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Where a store keeps what its mounts have verified.
pub(crate) fn verified_path(store: &Path) -> PathBuf {
    store.join("verified-blocks")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_version_reads_back_from_its_text_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let version = FileVersion::of(&std::fs::metadata(&file).unwrap());
        let back: FileVersion = version.to_string().parse().unwrap();
        assert_eq!(back, version);
        assert!(back.same_file(&version));
        for bad in ["", "1 2 3 4", "1 2 3 4 5 6", "1 2 x 4 5", "1  2 3 4 5"] {
            assert!(bad.parse::<FileVersion>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_verified_set_survives_a_round_trip_and_a_damaged_file_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let version = FileVersion::of(&std::fs::metadata(&file).unwrap());
        let hash = ManifestHash([9; 32]);
        let mut set = Verified::load(Some(path.clone()));
        // Checked right after the change: trusted now, not after a restart.
        set.insert(version, hash, version.ctime_ns + 1);
        assert!(set.contains(version, hash));
        let current = [version].into_iter().collect();
        set.save(&current).unwrap();
        assert!(!Verified::load(Some(path.clone())).contains(version, hash));
        set.insert(version, hash, version.ctime_ns + RACY_NS + 1);
        set.save(&current).unwrap();
        assert!(Verified::load(Some(path.clone())).contains(version, hash));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(!Verified::load(Some(path)).contains(version, hash));
    }
}
