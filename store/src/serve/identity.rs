//! The identity service: which boot image may serve which version of a
//! file. A boot image serves only once the file's recorded blocks have been
//! read back and hash to its chunks ([`crate::trust`]); what was learned is
//! kept per (file version, boot image) on disk, so a restart does not read
//! the files again. Checks run on the server's background pool, never on a
//! thread that answers reads.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::files::open_image_file;
use crate::id::ManifestHash;
use crate::manifest::Manifest;
use crate::store::lock;
use crate::trust::{blocks_match, now_ns, verified_path, FileVersion, Verified};
use crate::{Error, Result};

/// What is known of a boot image against a version of its file.
pub(super) enum Checked {
    Matches,
    Differs,
    /// Not known yet (being checked, or to be checked).
    Unknown,
}

pub(super) struct Identities {
    images: PathBuf,
    trust: Arc<Mutex<Trust>>,
    background: Arc<rayon::ThreadPool>,
    startup_done: AtomicBool,
    pub(super) mismatches: AtomicU64,
    pub(super) unverified_opens: AtomicU64,
}

/// What is known of (file version, boot image) pairs.
struct Trust {
    verified: Verified,
    /// Being checked now.
    pending: HashSet<(FileVersion, ManifestHash)>,
    /// Checked, and the blocks differ: served from the file.
    mismatched: HashSet<(FileVersion, ManifestHash)>,
    /// The version of each name last seen: what the kept set is pruned to.
    current: HashMap<String, FileVersion>,
}

impl Identities {
    /// The service for the files of `images`, with what the store at
    /// `store` kept from earlier runs.
    pub(super) fn load(store: &Path, images: &Path, background: Arc<rayon::ThreadPool>) -> Self {
        Identities {
            images: images.to_path_buf(),
            trust: Arc::new(Mutex::new(Trust {
                verified: Verified::load(Some(verified_path(store))),
                pending: HashSet::new(),
                mismatched: HashSet::new(),
                current: HashMap::new(),
            })),
            background,
            startup_done: AtomicBool::new(false),
            mismatches: AtomicU64::new(0),
            unverified_opens: AtomicU64::new(0),
        }
    }

    /// What is known of `manifest` against this version of file `name`.
    /// Also returns the manifest's hash, so callers compute it once (it
    /// encodes and hashes the whole manifest).
    pub(super) fn checked(
        &self,
        name: &str,
        version: FileVersion,
        manifest: &Manifest,
    ) -> (Checked, ManifestHash) {
        let hash = manifest.hash();
        if version.size() != manifest.file_size {
            return (Checked::Differs, hash);
        }
        let mut trust = lock(&self.trust);
        trust.current.insert(name.to_string(), version);
        let checked = if trust.verified.contains(version, hash) {
            Checked::Matches
        } else if trust.mismatched.contains(&(version, hash)) {
            Checked::Differs
        } else {
            Checked::Unknown
        };
        (checked, hash)
    }

    /// Queues a check of `manifest` against file `name` at `version`,
    /// unless one is queued or running.
    pub(super) fn check_in_background(
        &self,
        name: &str,
        version: FileVersion,
        manifest: Manifest,
        hash: ManifestHash,
    ) {
        if !lock(&self.trust).pending.insert((version, hash)) {
            return;
        }
        let (trust, images, name) = (self.trust.clone(), self.images.clone(), name.to_string());
        self.background.spawn(move || {
            let _ = check(&trust, &images, &name, version, &manifest, hash);
            let _ = save(&trust);
        });
    }

    /// Checks file `name` against `manifest` now, unless this version is
    /// known already: whether the boot image serves, and whether the file
    /// was read for it (then [`Self::save`] keeps the result).
    pub(super) fn check_now(&self, name: &str, manifest: &Manifest) -> Result<(bool, bool)> {
        let (file, path) = open_image_file(&self.images, name)?;
        let version = FileVersion::of(&file.metadata().map_err(|e| Error::io(&path, e))?);
        drop(file);
        match self.checked(name, version, manifest) {
            (Checked::Matches, _) => Ok((true, false)),
            (Checked::Differs, _) => Ok((false, false)),
            (Checked::Unknown, hash) => {
                lock(&self.trust).pending.insert((version, hash));
                let matches = check(&self.trust, &self.images, name, version, manifest, hash)?;
                Ok((matches, true))
            }
        }
    }

    /// Writes the verified pairs of the versions still current.
    pub(super) fn save(&self) -> Result<()> {
        save(&self.trust)
    }

    /// The check of every boot image at start has finished.
    pub(super) fn startup_done(&self) {
        self.startup_done.store(true, Ordering::Relaxed);
    }

    /// (pairs being checked, pairs known to match, start-up check done).
    pub(super) fn progress(&self) -> (u64, u64, bool) {
        let trust = lock(&self.trust);
        (
            trust.pending.len() as u64,
            trust.verified.len() as u64,
            self.startup_done.load(Ordering::Relaxed),
        )
    }
}

/// Reads file `name`'s recorded blocks and records whether they are the
/// boot image's, unless the file changed from `version` meanwhile. The
/// caller has put the pair in `pending`; it leaves there whatever happens.
fn check(
    trust: &Mutex<Trust>,
    images: &Path,
    name: &str,
    version: FileVersion,
    manifest: &Manifest,
    hash: ManifestHash,
) -> Result<bool> {
    let checked_at = now_ns();
    let result = open_image_file(images, name).and_then(|(file, path)| {
        let version_now = || -> Result<FileVersion> {
            Ok(FileVersion::of(
                &file.metadata().map_err(|e| Error::io(&path, e))?,
            ))
        };
        if version_now()? != version {
            return Ok(None);
        }
        let matches = blocks_match(&file, manifest)?;
        // A change while we read voids what we read.
        Ok((version_now()? == version).then_some(matches))
    });
    let mut trust = lock(trust);
    trust.pending.remove(&(version, hash));
    match result {
        Ok(Some(true)) => {
            trust.verified.insert(version, hash, checked_at);
            Ok(true)
        }
        Ok(Some(false)) => {
            trust.mismatched.insert((version, hash));
            Ok(false)
        }
        // Changed meanwhile: the next open sees the new version.
        Ok(None) => Ok(false),
        Err(e) => Err(e),
    }
}

fn save(trust: &Mutex<Trust>) -> Result<()> {
    let trust = lock(trust);
    let current: HashSet<FileVersion> = trust.current.values().copied().collect();
    trust.verified.save(&current)
}
