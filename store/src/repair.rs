//! `verify --repair`: a corrupt or missing chunk is rebuilt from a VMI file
//! that uses it and still is the file its boot image was recorded from
//! (same identity). The rebuilt bytes must hash to the chunk's id, so a
//! repair can only restore the original content, never invent it.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::rc::Rc;

use serde::Serialize;

use crate::id::{ChunkId, FileIdentity};
use crate::manifest::Manifest;
use crate::name::validate_name;
use crate::store::{ChunkInfo, Gap, Readable, Store, Table};
use crate::verify::{Place, Problem, VerifyReport};
use crate::{Error, Result};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RepairReport {
    /// (chunk, the VMI whose file it was rebuilt from)
    pub repaired: Vec<(ChunkId, String)>,
    /// (chunk, why no VMI could rebuild it)
    pub unrepaired: Vec<(ChunkId, String)>,
    /// Chunks of damaged packs that no VMI uses: garbage, so their refs
    /// records are deleted rather than rebuilt.
    pub dropped: Vec<ChunkId>,
    /// (chunk, refcount recorded, refcount written): set to the number of
    /// manifests that use the chunk.
    pub refcounts_fixed: Vec<(ChunkId, u64, u64)>,
    /// (chunk, pack): chunks whose refs records were lost, given new ones
    /// that point at their intact bytes in that pack.
    pub relocated: Vec<(ChunkId, u64)>,
    /// `numbers` records written again from the refs records (a number's
    /// record lost or wrong: the manifests that name it did not resolve).
    pub numbers_rewritten: u64,
}

/// What a repair writes, in one batch.
#[derive(Default)]
struct Fix {
    /// (chunk, raw bytes, refcount if known from every manifest)
    rebuilt: Vec<(ChunkId, Vec<u8>, Option<u64>)>,
    dropped: Vec<ChunkId>,
    refcounts: Vec<(ChunkId, u64)>,
    /// Packs verify found damaged: deleted once no chunk is left in them.
    damaged_packs: HashSet<u64>,
    /// Verify found refs records it could not read.
    damaged_refs: bool,
    /// Verify found `numbers` records lost or wrong: they are written
    /// again from the refs records.
    damaged_numbers: bool,
    /// (chunk, where its bytes are intact, refcount): lost refs records.
    relocated: Vec<(ChunkId, Place, u64)>,
}

/// Rebuilds every corrupt or missing chunk `report` names, and every chunk
/// of a damaged pack, from the VMI files under `images`; sets every
/// refcount it names as wrong to the number of manifests that use the
/// chunk.
pub fn repair(store: &Store, images: &Path, report: &VerifyReport) -> Result<RepairReport> {
    let mut out = RepairReport::default();
    let mut fix = Fix::default();
    // With a manifest unreadable, the VMIs that use a chunk are not all
    // known: a rebuilt chunk keeps its recorded refcount.
    let every_manifest_read = !report.problems.iter().any(|p| match p {
        Problem::BadManifest { .. } => true,
        Problem::UnreadableRecords { column_family, .. } => *column_family == Table::Manifests,
        _ => false,
    });
    let mut todo: Vec<(&ChunkId, &Vec<String>)> = Vec::new();
    for problem in &report.problems {
        match problem {
            Problem::CorruptChunk { chunk, used_by, .. } => todo.push((chunk, used_by)),
            Problem::LostRecord {
                chunk,
                used_by,
                intact_in: Some(place),
                ..
            } => {
                // Its refcount: the VMIs known to use it (at least 1).
                let refs = used_by.len() as u64;
                fix.relocated.push((*chunk, *place, refs));
                out.relocated.push((*chunk, place.pack));
            }
            Problem::LostRecord { chunk, used_by, .. } => todo.push((chunk, used_by)),
            Problem::MissingChunk { chunk, used_by } => todo.push((chunk, used_by)),
            Problem::DamagedPack { pack, chunks, .. } => {
                fix.damaged_packs.insert(*pack);
                for c in chunks {
                    // Garbage, unless an unreadable manifest uses it.
                    if c.used_by.is_empty() && every_manifest_read {
                        fix.dropped.push(c.chunk);
                        out.dropped.push(c.chunk);
                    } else {
                        todo.push((&c.chunk, &c.used_by));
                    }
                }
            }
            Problem::UnreadableRecords { column_family, .. } if *column_family == Table::Refs => {
                fix.damaged_refs = true;
            }
            Problem::UnreadableRecords { column_family, .. }
            | Problem::BadRecord { column_family, .. }
                if *column_family == Table::Numbers =>
            {
                fix.damaged_numbers = true;
            }
            Problem::RefcountMismatch {
                chunk,
                recorded,
                actual,
            } => {
                fix.refcounts.push((*chunk, *actual));
                out.refcounts_fixed.push((*chunk, *recorded, *actual));
            }
            _ => {}
        }
    }
    // Each VMI file is hashed at most once.
    let mut matches: HashMap<String, std::result::Result<Manifest, CannotRebuild>> = HashMap::new();
    for (chunk, used_by) in todo {
        let id = *chunk;
        let mut whys = Vec::new();
        let mut done = false;
        for vmi in used_by {
            let manifest = matches
                .entry(vmi.clone())
                .or_insert_with(|| matching_manifest(store, images, vmi));
            let rebuilt = match manifest {
                Ok(manifest) => rebuild(&images.join(vmi), manifest, &id),
                Err(why) => Err(why.clone()),
            };
            match rebuilt {
                Ok(raw) => {
                    // Its refcount is the truth: the VMIs that use it.
                    let refs = used_by.len() as u64;
                    fix.rebuilt
                        .push((id, raw, every_manifest_read.then_some(refs)));
                    out.repaired.push((*chunk, vmi.clone()));
                    done = true;
                    break;
                }
                Err(why) => whys.push(format!("{vmi}: {why}")),
            }
        }
        if !done {
            if whys.is_empty() {
                whys.push("no boot image uses it".into());
            }
            out.unrepaired.push((*chunk, whys.join("; ")));
        }
    }
    out.numbers_rewritten = rewrite(store, &fix)?;
    Ok(out)
}

/// Why a VMI's file cannot give back a chunk (reported as text, one
/// reason per VMI tried).
#[derive(Clone, Debug, thiserror::Error)]
enum CannotRebuild {
    /// Its name, its manifest or its file could not be read. Shared: a
    /// VMI's manifest is looked up once for all its chunks.
    #[error("{0}")]
    Unreadable(Rc<Error>),
    #[error("the file changed since its boot image was recorded")]
    FileChanged,
    #[error("its manifest does not reference the chunk")]
    NotReferenced,
    #[error("the file's bytes do not hash to the chunk's id")]
    WrongBytes,
}

impl From<Error> for CannotRebuild {
    fn from(e: Error) -> Self {
        CannotRebuild::Unreadable(Rc::new(e))
    }
}

impl From<yolo_store_format::FormatError> for CannotRebuild {
    fn from(e: yolo_store_format::FormatError) -> Self {
        Error::from(e).into()
    }
}

/// The VMI's manifest, if its file under `images` is the one recorded.
fn matching_manifest(
    store: &Store,
    images: &Path,
    vmi: &str,
) -> std::result::Result<Manifest, CannotRebuild> {
    validate_name(vmi)?;
    let manifest = store.manifest(vmi)?;
    let path = images.join(vmi);
    let identity = FileIdentity::of_file(&path)?;
    if identity != manifest.identity {
        return Err(CannotRebuild::FileChanged);
    }
    Ok(manifest)
}

/// Reads chunk `id`'s bytes back from the VMI file: the part of the boot
/// image's block stream the chunk covers, block by block.
fn rebuild(
    path: &Path,
    manifest: &Manifest,
    id: &ChunkId,
) -> std::result::Result<Vec<u8>, CannotRebuild> {
    let mut start = 0u64;
    let mut len = None;
    for chunk in &manifest.chunks {
        if chunk.id == *id {
            len = Some(u64::from(chunk.len));
            break;
        }
        start += u64::from(chunk.len);
    }
    let len = len.ok_or(CannotRebuild::NotReferenced)?;
    let end = start + len;
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let bs = u64::from(manifest.block_size);
    let mut raw = Vec::with_capacity(len as usize);
    let mut at = 0u64; // stream offset of the current block
    for &block in &manifest.blocks {
        let block_len = manifest.block_len(block) as u64;
        let (from, to) = (start.max(at), end.min(at + block_len));
        if from < to {
            let mut buf = vec![0u8; (to - from) as usize];
            file.read_exact_at(&mut buf, block * bs + (from - at))
                .map_err(|e| Error::io(path, e))?;
            raw.extend_from_slice(&buf);
        }
        at += block_len;
        if at >= end {
            break;
        }
    }
    if ChunkId::of(&raw) != *id {
        return Err(CannotRebuild::WrongBytes);
    }
    Ok(raw)
}

/// Stores the rebuilt chunks in new packs with their true refcounts,
/// writes the corrected refcounts and the records of relocated chunks,
/// deletes the refs records of dropped chunks, and deletes each pack this
/// leaves empty, in one synced batch: a repair killed part way leaves the
/// store as it was, or repaired. Damaged table files are dropped after it
/// (killed before, the next repair finds them again). Returns how many
/// `numbers` records it wrote again.
fn rewrite(store: &Store, fix: &Fix) -> Result<u64> {
    if fix.rebuilt.is_empty()
        && fix.dropped.is_empty()
        && fix.refcounts.is_empty()
        && fix.relocated.is_empty()
        && !fix.damaged_refs
        && !fix.damaged_numbers
    {
        return Ok(0);
    }
    let _guard = store.write_lock();
    let scan = store.readable_chunk_infos()?;
    // With refs records unreadable, a pack that looks empty may still hold
    // chunks only they locate: then only damaged packs are deleted.
    let every_ref_read = scan.gap.is_none();
    let mut infos: HashMap<ChunkId, ChunkInfo> = scan.infos.into_iter().collect();
    let mut batch = store.batch();
    // A damaged block of `refs` fails every scan and compaction until its
    // table file is gone: write back what can be read of the file's range
    // (in-use records read alone too, as verify does), then drop the file.
    let tables = match &scan.gap {
        Some(gap) => store.tables_holding(gap)?.unwrap_or_default(),
        None => Vec::new(),
    };
    if !tables.is_empty() {
        for (_, manifest) in store.readable_manifests()?.0 {
            let Ok(manifest) = manifest else { continue };
            for id in manifest.distinct_chunks().into_iter().map(|c| c.id) {
                if let Entry::Vacant(slot) = infos.entry(id) {
                    if let Readable::Found(info) = store.chunk_info_of(&id)? {
                        slot.insert(info);
                    }
                }
            }
        }
    }
    for range in &tables {
        batch.delete_range(Table::Refs, range)?;
        for (id, info) in &infos {
            if (&range.0[..]..=&range.1[..]).contains(&&id.as_bytes()[..]) {
                batch.put_refs(id, info)?;
            }
        }
    }
    // A number's record says which chunk it names; each refs record holds
    // its chunk's number, so lost ones are written back from there, over
    // the key ranges of damaged table files, which are then dropped.
    let number_tables = match (fix.damaged_numbers, store.numbers()?.1) {
        (true, Some(gap)) => store.tables_holding(&gap)?.unwrap_or_default(),
        _ => Vec::new(),
    };
    for range in &number_tables {
        batch.delete_range(Table::Numbers, range)?;
    }
    let mut numbers_rewritten = 0;
    if fix.damaged_numbers {
        for (id, info) in &infos {
            batch.put_number(id, info)?;
            numbers_rewritten += 1;
        }
    }
    // How many chunks live in each pack, less those that move out.
    let mut remaining: HashMap<u64, u64> = HashMap::new();
    for info in infos.values() {
        *remaining.entry(info.pack).or_default() += 1;
    }
    let mut move_out = |id: &ChunkId| {
        if let Some(count) = infos.get(id).and_then(|i| remaining.get_mut(&i.pack)) {
            *count = count.saturating_sub(1);
        }
    };
    for (id, refs) in &fix.refcounts {
        if let Some(info) = infos.get(id) {
            let info = ChunkInfo {
                refs: *refs,
                ..*info
            };
            batch.put_refs(id, &info)?;
        }
    }
    for id in &fix.dropped {
        move_out(id);
        batch.delete_refs(id)?;
    }
    // A chunk keeps its number, which manifests name it by: from its refs
    // record, or, if that is lost, from its `numbers` record.
    let mut numbers: HashMap<ChunkId, u32> = infos.iter().map(|(id, i)| (*id, i.number)).collect();
    if !fix.relocated.is_empty()
        || fix
            .rebuilt
            .iter()
            .any(|(id, _, _)| !numbers.contains_key(id))
    {
        for (id, number) in store.numbers()?.0 {
            numbers.entry(id).or_insert(number);
        }
    }
    let mut chunks = Vec::with_capacity(fix.rebuilt.len());
    for (id, raw, refs) in &fix.rebuilt {
        move_out(id);
        let recorded = infos.get(id).map(|i| i.refs);
        // Unknown either way (a manifest and its refs record unreadable):
        // 1 keeps it from gc until the manifests read again.
        let refs = refs.or(recorded).unwrap_or(1);
        chunks.push((*id, &raw[..], refs));
    }
    for (id, place, refs) in &fix.relocated {
        // Without a number no manifest can name it: a fresh one is as good.
        let Some(&number) = numbers.get(id) else {
            continue;
        };
        if let Some(info) = store.locate(place.pack, place.offset, *refs, number)? {
            batch.put_refs(id, &info)?;
            *remaining.entry(place.pack).or_default() += 1;
        }
    }
    let packs = store.build_packs(&chunks, &numbers)?;
    batch.put_packs(&packs)?;
    let mut deleted = HashSet::new();
    for (pack, count) in remaining {
        if count == 0 && (every_ref_read || fix.damaged_packs.contains(&pack)) {
            batch.delete_pack(pack)?;
            deleted.insert(pack);
        }
    }
    store.write(batch)?;
    for range in &tables {
        store.drop_tables(Table::Refs, range)?;
    }
    for range in &number_tables {
        store.drop_tables(Table::Numbers, range)?;
    }
    // With every damaged pack deleted, a scan of their table files' ranges
    // fails only on a damaged block of a table (a deleted key's blob is not
    // read): then that file goes too, or every compaction would fail on it.
    let (Some(&low), Some(&high)) = (
        fix.damaged_packs.iter().min(),
        fix.damaged_packs.iter().max(),
    ) else {
        return Ok(numbers_rewritten);
    };
    if fix.damaged_packs.is_subset(&deleted) {
        let packs = Gap::packs(low, high, String::new());
        for range in store.tables_holding(&packs)?.unwrap_or_default() {
            store.rewrite_unreadable_range(Table::Packs, &range)?;
        }
    }
    Ok(numbers_rewritten)
}
