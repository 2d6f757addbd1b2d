//! Boot images that make themselves (`mount --learn`): the first boot of a
//! file version that has no usable boot image is recorded as `record` would,
//! and what it read is imported without anyone typing a command.
//!
//! The mount only follows the store (read-only), so the learner writes it
//! the way `import` does, from the daemon: each recording is first written
//! as a `.yolo` in the spool (`STORE/learning/`, by temporary file and
//! rename), then imported through the one-writer lock, then removed. A
//! daemon that dies between the two imports the spool at its next start;
//! an import that fails leaves the store as it was (imports are atomic)
//! and the spool file is removed with the reason logged.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::capture::{write_boot_image, CaptureSource};
use crate::files::open_image_file;
use crate::format::BootImage;
use crate::import::{import, ImportOptions};
use crate::remote::{push, Remote};
use crate::store::{lock, Store};
use crate::trace::Read;
use crate::trust::FileVersion;
use crate::{Error, Result};

/// Subdirectory of the store where recordings wait for their import.
pub const SPOOL_DIR: &str = "learning";

/// When a recording ends, and what it must hold to be kept.
#[derive(Clone, Debug)]
pub struct LearnOptions {
    /// The longest a recording lasts: a VM that keeps reading after its
    /// boot (a workload) must not grow its boot image for ever.
    pub window: Duration,
    /// A recording ends once no read came for this long: the boot is over.
    pub quiet: Duration,
    /// Fewer reads than this is a probe (`qemu-img info`, `file`), not a
    /// boot: nothing is learned, and the next open records again.
    pub min_reads: usize,
    pub block_size: u32,
}

impl Default for LearnOptions {
    fn default() -> Self {
        LearnOptions {
            window: Duration::from_secs(300),
            quiet: Duration::from_secs(15),
            min_reads: 64,
            block_size: 4096,
        }
    }
}

/// What became of recordings, for the status file and the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LearnStats {
    /// Recordings in progress.
    pub recording: u64,
    /// Recordings written to the spool.
    pub learned: u64,
    /// Learned boot images in the store and checked against their files:
    /// their next open is served from the store.
    pub imported: u64,
    pub dropped_too_few_reads: u64,
    /// The file changed while its boot was recorded.
    pub dropped_vmi_changed: u64,
    /// The store (or the spool) refused it; the log says why.
    pub dropped_refused: u64,
    /// Learned boot images pushed to the remote (`--remote`).
    pub pushed: u64,
    /// Pushes that failed (the boot image stays in the store; the log
    /// says why).
    pub push_failures: u64,
}

pub struct Learner {
    /// Where learned boot images are pushed too (`mount --learn --remote`).
    remote: Option<Remote>,
    store: PathBuf,
    images: PathBuf,
    spool: PathBuf,
    options: LearnOptions,
    /// The recording of each file name in progress.
    sessions: Mutex<HashMap<String, Session>>,
    /// File versions recorded already: one recording each.
    done: Mutex<HashSet<(String, FileVersion)>>,
    counters: Counters,
}

struct Session {
    version: FileVersion,
    started: Instant,
    last_read: Instant,
    reads: Vec<Read>,
    /// Opens recorded now: while one is open and the reads are still too
    /// few to be a boot, a pause does not end the recording (a VM booted
    /// from a kernel given to QEMU reads nothing from its disk for many
    /// seconds after opening it).
    open: usize,
}

#[derive(Default)]
struct Counters {
    learned: AtomicU64,
    imported: AtomicU64,
    too_few: AtomicU64,
    changed: AtomicU64,
    refused: AtomicU64,
    pushed: AtomicU64,
    push_failures: AtomicU64,
}

impl Learner {
    /// A learner for the store at `store`, serving `images` (already
    /// checked by the server). Creates the spool.
    pub fn new(
        store: &Path,
        images: &Path,
        options: LearnOptions,
        remote: Option<Remote>,
    ) -> Result<Self> {
        let spool = store.join(SPOOL_DIR);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&spool)
            .map_err(|e| Error::io(&spool, e))?;
        remove_stale_temporaries(&spool);
        Ok(Learner {
            remote,
            store: store.to_path_buf(),
            images: images.to_path_buf(),
            spool,
            options,
            sessions: Mutex::new(HashMap::new()),
            done: Mutex::new(HashSet::new()),
            counters: Counters::default(),
        })
    }

    /// Whether this open of `name` (at `version`, with no usable boot
    /// image) is recorded: the first open of a version starts a recording,
    /// later opens join it while it lasts, so two VMs booting one new VMI
    /// make one boot image.
    pub fn join(&self, name: &str, version: FileVersion) -> bool {
        if lock(&self.done).contains(&(name.to_string(), version)) {
            return false;
        }
        let mut sessions = lock(&self.sessions);
        match sessions.get_mut(name) {
            Some(session) if session.version == version => {
                session.open += 1;
                true
            }
            Some(_) => false,
            None => {
                let now = Instant::now();
                sessions.insert(
                    name.to_string(),
                    Session {
                        version,
                        started: now,
                        last_read: now,
                        reads: Vec::new(),
                        open: 1,
                    },
                );
                eprintln!("yolo-store: learning: recording the boot of {name}");
                true
            }
        }
    }

    /// An open that [`Learner::join`]ed is closed.
    pub fn leave(&self, name: &str, version: FileVersion) {
        if let Some(session) = lock(&self.sessions).get_mut(name) {
            if session.version == version {
                session.open = session.open.saturating_sub(1);
            }
        }
    }

    /// Logs a read of `name` that returned `length` bytes at `offset`.
    pub fn record(&self, name: &str, version: FileVersion, offset: u64, length: u64) {
        if length == 0 {
            return;
        }
        if let Some(session) = lock(&self.sessions).get_mut(name) {
            if session.version == version {
                session.reads.push(Read { offset, length });
                session.last_read = Instant::now();
            }
        }
    }

    /// Ends the recordings that are due: past their window, or quiet once
    /// they hold a boot's worth of reads or nothing has them open any more;
    /// writes and imports what they learned, and imports whatever an
    /// earlier run left in the spool. Returns the names imported.
    pub fn finish_due(&self) -> Vec<String> {
        let now = Instant::now();
        let due: Vec<(String, Session)> = {
            let mut sessions = lock(&self.sessions);
            let names: Vec<String> = sessions
                .iter()
                .filter(|(_, s)| {
                    let quiet = now.duration_since(s.last_read) >= self.options.quiet;
                    let boot_or_closed = s.reads.len() >= self.options.min_reads || s.open == 0;
                    (quiet && boot_or_closed)
                        || now.duration_since(s.started) >= self.options.window
                })
                .map(|(name, _)| name.clone())
                .collect();
            names
                .into_iter()
                .filter_map(|name| sessions.remove(&name).map(|s| (name, s)))
                .collect()
        };
        for (name, session) in due {
            self.finish(&name, session);
        }
        self.import_spool()
    }

    /// Writes one recording to the spool, or says why not.
    fn finish(&self, name: &str, session: Session) {
        if session.reads.len() < self.options.min_reads {
            self.counters.too_few.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "yolo-store: learning: dropped {name}: {} reads, fewer than {} (a probe, not a boot); the next open records again",
                session.reads.len(),
                self.options.min_reads
            );
            return;
        }
        lock(&self.done).insert((name.to_string(), session.version));
        match self.write_spooled(name, &session) {
            Ok(true) => {
                self.counters.learned.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "yolo-store: learning: learned {name} ({} reads)",
                    session.reads.len()
                );
            }
            Ok(false) => {
                self.counters.changed.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "yolo-store: learning: dropped {name}: the file changed during the recording"
                );
            }
            Err(e) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                eprintln!("yolo-store: learning: dropped {name}: {e}");
            }
        }
    }

    /// Writes the recording of `name` as a `.yolo` in the spool, if the
    /// file is still the version that was recorded (false if not).
    fn write_spooled(&self, name: &str, session: &Session) -> Result<bool> {
        let spooled = self.spool.join(spool_name(name));
        let (file, path) = open_image_file(&self.images, name)?;
        let now = FileVersion::of(&file.metadata().map_err(|e| Error::io(&path, e))?);
        if now != session.version {
            return Ok(false);
        }
        let source =
            CaptureSource::from_reads(file, &path, name, &session.reads, self.options.block_size)?;
        // Fails, leaving no file, if the VMI changes while it is copied.
        write_boot_image(&spooled, self.options.block_size, &[source])?;
        Ok(true)
    }

    /// Imports every boot image in the spool, oldest first, removing each
    /// once imported or refused. One that waits for the writer's lock is
    /// left for the next round.
    fn import_spool(&self) -> Vec<String> {
        let mut files: Vec<PathBuf> = match fs::read_dir(&self.spool) {
            Ok(dir) => dir
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "yolo"))
                .collect(),
            Err(_) => return Vec::new(),
        };
        if files.is_empty() {
            return Vec::new();
        }
        files.sort_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok());
        let store = match Store::open(&self.store) {
            Ok(store) => store,
            Err(Error::Busy(_)) => return Vec::new(),
            Err(e) => {
                eprintln!("yolo-store: learning: cannot open the store to import: {e}");
                return Vec::new();
            }
        };
        let mut imported = Vec::new();
        for file in files {
            match BootImage::open(&file)
                .map_err(Error::from)
                .and_then(|image| import(&store, &image, &ImportOptions::default()))
            {
                Ok(report) => {
                    eprintln!(
                        "yolo-store: learning: imported the boot image of {}",
                        report.names.join(", ")
                    );
                    self.push(&store, &report.names);
                    imported.extend(report.names);
                }
                Err(e) => {
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "yolo-store: learning: dropped {}: the store refused it: {e}",
                        file.display()
                    );
                }
            }
            let _ = fs::remove_file(&file);
        }
        imported
    }

    /// Pushes newly imported `names` to the remote, if there is one. A
    /// failure is counted and logged; the boot image stays in the store.
    fn push(&self, store: &Store, names: &[String]) {
        let Some(remote) = &self.remote else { return };
        match push(store, remote, names) {
            Ok(_) => {
                self.counters
                    .pushed
                    .fetch_add(names.len() as u64, Ordering::Relaxed);
                eprintln!(
                    "yolo-store: learning: pushed {} to {}",
                    names.join(", "),
                    remote.url()
                );
            }
            Err(e) => {
                self.counters.push_failures.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "yolo-store: learning: could not push {}: {e}",
                    names.join(", ")
                );
            }
        }
    }

    /// Counts boot images imported and checked against their files: from
    /// now on their next open is served from the store.
    pub fn ready(&self, count: usize) {
        self.counters
            .imported
            .fetch_add(count as u64, Ordering::Relaxed);
    }

    pub fn stats(&self) -> LearnStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.counters;
        LearnStats {
            recording: lock(&self.sessions).len() as u64,
            learned: get(&c.learned),
            imported: get(&c.imported),
            dropped_too_few_reads: get(&c.too_few),
            dropped_vmi_changed: get(&c.changed),
            dropped_refused: get(&c.refused),
            pushed: get(&c.pushed),
            push_failures: get(&c.push_failures),
        }
    }
}

/// A spool file name for VMI `name` (which may hold `/`): its BLAKE3, so
/// the `.yolo` header alone carries the name.
fn spool_name(name: &str) -> String {
    format!("{}.yolo", &blake3::hash(name.as_bytes()).to_hex()[..32])
}

/// Temporary files of spool writes that a killed daemon left. Only old
/// ones: another mount of the same store may be writing one now.
fn remove_stale_temporaries(spool: &Path) {
    let Ok(dir) = fs::read_dir(spool) else {
        return;
    };
    for entry in dir.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if entry.file_name().to_string_lossy().starts_with('.') && stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}
