//! `pull`: the manifests, rebuilt through the remote's index; then only the
//! chunks this store lacks, as whole packs or as range GETs of the parts it
//! needs; each chunk checked against its BLAKE3 id before it is stored; then
//! every VMI whose chunks all arrived is registered in one atomic write.
//! Chunks are stored durably as they arrive (unreferenced until then), so a
//! killed pull, run again, fetches only what it had not stored yet.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use futures::StreamExt;
use object_store::ObjectStoreExt;
use rayon::prelude::*;
use serde::Serialize;

use super::layout::{self, Index, PackId, Place};
use super::lock::LockKind;
use super::{current_versions, ManifestVersion, ObjectDefect, Remote, RemoteFault};
use crate::codec::decode_chunk;
use crate::id::ChunkId;
use crate::import::{new_packs_batch, register_manifests, ImportReport};
use crate::manifest::Manifest;
use crate::store::Store;
use crate::{Error, Result};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PullReport {
    /// VMIs registered (new or changed).
    pub names: Vec<String>,
    /// VMIs whose local boot image already equals the remote's.
    pub unchanged: Vec<String>,
    /// Distinct chunks the pulled manifests reference.
    pub chunks: u64,
    pub downloaded_chunks: u64,
    /// Pack bytes moved (chunks as stored: compressed), including the bytes
    /// between needed chunks that a range or whole-pack GET carried along.
    pub downloaded_bytes: u64,
    /// Stored (compressed) bytes of the chunks this store lacked: what a
    /// perfect transfer would move.
    pub needed_bytes: u64,
    /// GETs of packs: whole, and ranges of them.
    pub pack_gets: u64,
    pub range_gets: u64,
    pub manifest_bytes: u64,
    /// Index objects downloaded (those not in the local cache).
    pub index_bytes: u64,
    /// Index objects refused (with why); the VMIs that need the packs only
    /// they list are in `failed`.
    pub refused_index_objects: Vec<String>,
    /// Chunks this store had already: raw bytes the transfer dedup saved.
    pub local_chunks: u64,
    pub local_raw_bytes: u64,
    /// VMIs refused, with why (a corrupt or missing remote object).
    pub failed: Vec<PullFailure>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PullFailure {
    pub name: String,
    /// The remote object at fault.
    pub object: String,
    pub why: String,
}

/// Needed stored bytes fetched per step (a killed pull keeps every step it
/// finished).
const WINDOW_BYTES: u64 = 32 << 20;
/// What a GET costs on the wire besides its body: a signed request and the
/// response's headers, about 1 KB against radosgw (benches/remote.sh).
/// Needed ranges closer than this are fetched as one.
const REQUEST_COST: u64 = 1024;

/// Pulls the named boot images (all on the remote when `names` is empty).
pub fn pull(store: &Store, remote: &Remote, names: &[String]) -> Result<PullReport> {
    remote.agree_on_config(store.config(), false)?;
    let lock = remote.lock(LockKind::Pull)?;
    let mut report = PullReport::default();

    let wanted = wanted_versions(remote, names)?;
    let mut to_fetch = Vec::new();
    for version in wanted {
        match store.manifest(&version.name) {
            Ok(local) if local.hash() == version.hash => report.unchanged.push(version.name),
            Ok(_) | Err(Error::UnknownVmi(_)) => to_fetch.push(version),
            Err(e) => return Err(e),
        }
    }
    if to_fetch.is_empty() {
        return Ok(report);
    }
    let max_raw = store.config().chunking.max_len();
    let cache = super::index_cache(store);
    let (index, index_bytes, refused) =
        remote
            .runtime
            .block_on(remote.load_index(Some(&cache), max_raw, false))?;
    report.index_bytes = index_bytes;
    report.refused_index_objects = refused
        .into_iter()
        .map(|(key, defect)| format!("{key}: {defect}"))
        .collect();

    let mut manifests: Vec<(String, Manifest)> = Vec::new();
    let mut place: HashMap<ChunkId, Place> = HashMap::new();
    for (version, fetched) in fetch_manifests(remote, &to_fetch, &index)? {
        // The index bounds each chunk by the remote's chunking; the store
        // checks its own, so decoding never allocates what a remote says.
        let fetched = fetched.and_then(|(manifest, places, len)| {
            manifest.check_chunk_lens(max_raw)?;
            Ok((manifest, places, len))
        });
        match fetched {
            Ok((manifest, places, len)) => {
                report.manifest_bytes += len;
                for (chunk, p) in manifest.chunks.iter().zip(places) {
                    place.entry(chunk.id).or_insert(p);
                }
                manifests.push((version.name, manifest));
            }
            Err(defect) => report.failed.push(PullFailure {
                object: version.key(),
                name: version.name,
                why: defect.to_string(),
            }),
        }
    }

    // Each distinct chunk with its raw length, in the order the boot images
    // first use them (the order they are packed in locally).
    let mut raw_len: HashMap<ChunkId, u32> = HashMap::new();
    let mut first_use: Vec<ChunkId> = Vec::new();
    for (_, manifest) in &manifests {
        for chunk in &manifest.chunks {
            if let std::collections::hash_map::Entry::Vacant(e) = raw_len.entry(chunk.id) {
                e.insert(chunk.len);
                first_use.push(chunk.id);
            }
        }
    }
    report.chunks = raw_len.len() as u64;

    // From here to the registration, a local gc must not take the chunks
    // this pull relies on.
    let _guard = store.write_lock();
    let mut known = store.chunk_infos_of(raw_len.keys().copied().collect())?;
    let mut missing: Vec<ChunkId> = Vec::new();
    for id in first_use {
        if known.contains_key(&id) {
            report.local_chunks += 1;
            report.local_raw_bytes += u64::from(raw_len[&id]);
        } else {
            missing.push(id);
        }
    }
    let rank: HashMap<ChunkId, usize> =
        missing.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    // The packs to read, in the order their first needed chunk is used.
    let mut by_pack: Vec<(PackId, Vec<u32>)> = Vec::new();
    let mut pack_at: HashMap<PackId, usize> = HashMap::new();
    for id in &missing {
        let (pack, pos) = place[id];
        let at = *pack_at.entry(pack).or_insert_with(|| {
            by_pack.push((pack, Vec::new()));
            by_pack.len() - 1
        });
        by_pack[at].1.push(pos);
        report.needed_bytes += u64::from(index.packs[&pack].entries[pos as usize].stored_len);
    }
    let total: u64 = missing.iter().map(|id| u64::from(raw_len[id])).sum();
    remote.report_progress(0, total);

    let mut bad: BTreeMap<ChunkId, (String, String)> = BTreeMap::new();
    let mut done = 0u64;
    let mut requests: Vec<Request> = Vec::new();
    let mut window_bytes = 0u64;
    let mut packs = by_pack.into_iter().peekable();
    while let Some((pack, positions)) = packs.next() {
        let desc = &index.packs[&pack];
        let planned = plan_requests(desc, positions);
        window_bytes += planned
            .iter()
            .map(|r| r.range.end - r.range.start)
            .sum::<u64>();
        requests.extend(planned);
        if window_bytes < WINDOW_BYTES && packs.peek().is_some() {
            continue;
        }
        window_bytes = 0;
        lock.check_held()?;
        let fetched = fetch_ranges(remote, std::mem::take(&mut requests), &mut report)?;
        let mut checked: Vec<(ChunkId, Checked)> = fetched
            .into_par_iter()
            .map(|(id, object, value)| {
                let checked = value
                    .and_then(|v| check_chunk(&id, &v, raw_len[&id]))
                    .map_err(|why| (object, why));
                (id, checked)
            })
            .collect();
        // Fetched out of order; packed locally in first-use order.
        checked.sort_by_key(|(id, _)| rank.get(id).copied());
        let mut good = Vec::with_capacity(checked.len());
        for (id, value) in &checked {
            match value {
                Ok(raw) => good.push((*id, &raw[..], 0)),
                // Kept as text: several VMIs may fail on one chunk.
                Err((object, defect)) => {
                    bad.insert(*id, (object.clone(), defect.to_string()));
                }
            }
        }
        // Synced through the WAL, unlike import's chunks: a killed pull
        // keeps every window it finished, so running it again resumes.
        let mut counts = ImportReport::default();
        let built = store.build_packs(&good, &HashMap::new())?;
        store.write(new_packs_batch(store, &built, &mut known, &mut counts)?)?;
        report.downloaded_chunks += counts.new_chunks;
        done += checked
            .iter()
            .map(|(id, _)| u64::from(raw_len[id]))
            .sum::<u64>();
        remote.report_progress(done, total);
    }
    let mut complete = Vec::with_capacity(manifests.len());
    for (name, manifest) in manifests {
        match manifest.chunks.iter().find(|c| bad.contains_key(&c.id)) {
            Some(chunk) => {
                let (object, why) = bad[&chunk.id].clone();
                report.failed.push(PullFailure { object, why, name });
            }
            None => complete.push((name, manifest)),
        }
    }
    register_manifests(store, &complete, &mut known)?;
    report.names = complete.into_iter().map(|(name, _)| name).collect();
    drop(lock);
    Ok(report)
}

/// One GET: a byte range of a pack and the chunks in it that are needed,
/// with their offsets in the pack.
pub(super) struct Request {
    pub(super) pack: PackId,
    pub(super) range: Range<u64>,
    whole: bool,
    pub(super) chunks: Vec<(ChunkId, u64, u32)>,
}

/// How to fetch the needed entries of a pack: ranges that each cover
/// needed chunks no further apart than a request costs.
pub(super) fn plan_requests(desc: &layout::PackDesc, mut positions: Vec<u32>) -> Vec<Request> {
    positions.sort_unstable();
    positions.dedup();
    let offsets = desc.offsets();
    let chunk = |p: u32| {
        let e = desc.entries[p as usize];
        (e.id, offsets[p as usize], e.stored_len)
    };
    let mut out: Vec<Request> = Vec::new();
    for &p in &positions {
        let (id, offset, stored) = chunk(p);
        let end = offset + u64::from(stored);
        match out.last_mut() {
            Some(r) if offset <= r.range.end + REQUEST_COST => {
                r.range.end = end;
                r.chunks.push((id, offset, stored));
            }
            _ => out.push(Request {
                pack: desc.id,
                range: offset..end,
                whole: false,
                chunks: vec![(id, offset, stored)],
            }),
        }
    }
    // Merging ranges whose gaps cost less than a request already makes
    // this cheaper than the whole pack (each gap left costs more than the
    // request it saves); a range that covers the pack is a whole-pack GET.
    let len = desc.len();
    for r in &mut out {
        r.whole = r.range == (0..len);
    }
    out
}

/// A chunk's raw bytes, or the object at fault and why.
type Checked = std::result::Result<Vec<u8>, (String, ObjectDefect)>;

type Fetched = (
    ChunkId,
    String,
    std::result::Result<bytes::Bytes, ObjectDefect>,
);

/// Runs the GETs, up to `--jobs` at once, and cuts the chunks out of what
/// they return. A pack missing on the remote, or a response of the wrong
/// length, is an `Err` for each chunk it should have carried; any other
/// failure (after the client's retries) ends the pull.
fn fetch_ranges(
    remote: &Remote,
    requests: Vec<Request>,
    report: &mut PullReport,
) -> Result<Vec<Fetched>> {
    for r in &requests {
        if r.whole {
            report.pack_gets += 1;
        } else {
            report.range_gets += 1;
        }
    }
    let results: Vec<Result<(Vec<Fetched>, u64)>> = remote.runtime.block_on(
        futures::stream::iter(requests)
            .map(|r| async move {
                let key = r.pack.key();
                let path = remote.path(&key);
                // A whole pack is asked for as a range too, so no server can
                // hand us more than the index announced.
                let got = remote.objects.get_range(&path, r.range.clone()).await;
                let want = r.range.end - r.range.start;
                // The length that came back, or none: each chunk of the
                // range gets its own ObjectDefect from it.
                let body = match got {
                    Ok(b) if b.len() as u64 == want => Ok(b),
                    Ok(b) => Err(Some(b.len() as u64)),
                    Err(object_store::Error::NotFound { .. }) => Err(None),
                    Err(e) => return Err(remote.error(RemoteFault::Request(e))),
                };
                let moved = body.as_ref().map_or(0, |b| b.len() as u64);
                let chunks = r
                    .chunks
                    .iter()
                    .map(|&(id, offset, stored)| {
                        let object = format!("{key} (chunk {} at byte {offset})", id.to_hex());
                        let at = (offset - r.range.start) as usize;
                        let value = match &body {
                            Ok(b) => Ok(b.slice(at..at + stored as usize)),
                            Err(Some(got)) => Err(ObjectDefect::WrongLength { got: *got, want }),
                            Err(None) => Err(ObjectDefect::Missing),
                        };
                        (id, object, value)
                    })
                    .collect();
                Ok((chunks, moved))
            })
            .buffer_unordered(remote.options.concurrency.max(1))
            .collect(),
    );
    let mut out = Vec::new();
    for result in results {
        let (chunks, moved) = result?;
        report.downloaded_bytes += moved;
        out.extend(chunks);
    }
    Ok(out)
}

/// The current version of each wanted name; every name must exist.
pub(super) fn wanted_versions(remote: &Remote, names: &[String]) -> Result<Vec<ManifestVersion>> {
    let versions = remote.runtime.block_on(remote.list_manifests())?;
    let mut current = current_versions(&versions);
    if names.is_empty() {
        let mut all: Vec<ManifestVersion> = current.into_values().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        return Ok(all);
    }
    names
        .iter()
        .map(|name| {
            current
                .remove(name)
                .ok_or_else(|| remote.error(RemoteFault::UnknownVmi(name.clone())))
        })
        .collect()
}

pub(super) type FetchedManifest = std::result::Result<(Manifest, Vec<Place>, u64), ObjectDefect>;

/// Downloads manifests and rebuilds them through the index: they must hash
/// to their key and decode.
pub(super) fn fetch_manifests(
    remote: &Remote,
    versions: &[ManifestVersion],
    index: &Index,
) -> Result<Vec<(ManifestVersion, FetchedManifest)>> {
    remote
        .runtime
        .block_on(
            futures::stream::iter(versions.iter().cloned())
                .map(|version| async move {
                    let bytes = match remote.get_if_exists(&version.key()).await? {
                        Some(bytes) => bytes,
                        None => return Ok((version, Err(ObjectDefect::Gone))),
                    };
                    let checked = layout::decode_manifest(&version.hash, &bytes, index)
                        .map(|(m, places)| (m, places, bytes.len() as u64))
                        .map_err(ObjectDefect::from);
                    Ok((version, checked))
                })
                // In order: VMIs are registered and reported in the order asked.
                .buffered(remote.options.concurrency)
                .collect::<Vec<Result<_>>>(),
        )
        .into_iter()
        .collect()
}

/// A downloaded chunk value is stored only if it decodes to `raw_len`
/// bytes whose BLAKE3 is its id.
pub(super) fn check_chunk(
    id: &ChunkId,
    value: &[u8],
    raw_len: u32,
) -> std::result::Result<Vec<u8>, ObjectDefect> {
    // Read from the header before decoding, so a hostile length cannot make
    // the decoder allocate more than the manifest allows.
    let header_len = value
        .get(1..5)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes);
    if header_len != Some(raw_len) {
        return Err(ObjectDefect::HeaderLength {
            header: header_len,
            manifest: raw_len,
        });
    }
    Ok(decode_chunk(id, value, raw_len)?)
}

#[cfg(test)]
mod plan_tests {
    use super::*;
    use layout::{PackDesc, PackEntry};

    fn pack(n: u8) -> PackDesc {
        PackDesc {
            id: PackId::of(&[n]),
            entries: (0..n)
                .map(|i| PackEntry {
                    id: ChunkId::of(&[i]),
                    raw_len: 4096,
                    stored_len: 1000,
                })
                .collect(),
        }
    }

    #[test]
    fn needed_chunks_closer_than_a_request_share_a_range() {
        let desc = pack(100);
        // A run at the end of the pack: one range, exactly those bytes.
        let tail = plan_requests(&desc, (60..100).collect());
        assert_eq!(tail.len(), 1);
        assert_eq!(tail[0].range, 60_000..100_000);
        assert!(!tail[0].whole);
        // One gap of a chunk (cheaper than a request) is carried along.
        let gapped = plan_requests(&desc, vec![10, 12, 50]);
        let ranges: Vec<_> = gapped.iter().map(|r| r.range.clone()).collect();
        assert_eq!(ranges, [10_000..13_000, 50_000..51_000]);
        assert_eq!(gapped[0].chunks.len(), 2);
        // Every other chunk, first to last: the whole pack in one GET.
        let sparse = plan_requests(&desc, (0..100).step_by(2).collect());
        assert_eq!(sparse.len(), 1);
        assert_eq!(sparse[0].range, 0..99_000);
        let all = plan_requests(&desc, (0..100).collect());
        assert!(all.len() == 1 && all[0].whole);
        assert_eq!(sparse[0].chunks.len(), 50);
    }
}
