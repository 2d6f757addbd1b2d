//! `verify`: re-hash every chunk, check every manifest reference, every
//! refcount and every size record. Reports each problem by name.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use rayon::prelude::*;
use serde::Serialize;

use crate::id::ChunkId;
use crate::manifest::Manifest;
use crate::pack::decode_pack;
use crate::store::{hex, number_key_text, ChunkInfo, Gap, Readable, Store, Table};
use crate::Result;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "kebab-case")]
pub enum Problem {
    /// A chunk whose bytes do not decode or do not hash to its id.
    CorruptChunk {
        chunk: ChunkId,
        why: String,
        used_by: Vec<String>,
    },
    /// A chunk in use whose refs record RocksDB cannot read, and where
    /// verify found its bytes intact, if anywhere.
    LostRecord {
        chunk: ChunkId,
        why: String,
        used_by: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        intact_in: Option<Place>,
    },
    /// A manifest references a chunk the store does not have.
    MissingChunk {
        chunk: ChunkId,
        used_by: Vec<String>,
    },
    /// A pack that RocksDB cannot read (a checksum mismatch in its blob
    /// file or SST block) or that does not decode, with every chunk that
    /// its refs records place in it and the VMIs that use each.
    DamagedPack {
        pack: u64,
        why: String,
        chunks: Vec<DamagedChunk>,
    },
    /// A pack none of whose chunks has a refs record: space nothing can
    /// reach or collect.
    UntrackedPack {
        pack: u64,
    },
    /// Records RocksDB could not read (a damaged SST block): every key of
    /// the column family after `after` and before `before` (absent: from
    /// the first, to the last).
    UnreadableRecords {
        column_family: Table,
        #[serde(skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        before: Option<String>,
        why: String,
    },
    RefcountMismatch {
        chunk: ChunkId,
        recorded: u64,
        actual: u64,
    },
    SizeMismatch {
        chunk: ChunkId,
        why: String,
    },
    BadManifest {
        vmi: String,
        why: String,
    },
    /// A record that does not decode.
    BadRecord {
        column_family: Table,
        key: String,
        why: String,
    },
}

/// Where a chunk's bytes are: its pack and raw offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Place {
    pub pack: u64,
    pub offset: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DamagedChunk {
    pub chunk: ChunkId,
    pub used_by: Vec<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::CorruptChunk {
                chunk,
                why,
                used_by,
            } => {
                write!(
                    f,
                    "corrupt chunk {chunk} ({why}), used by: {}",
                    list(used_by)
                )
            }
            Problem::LostRecord {
                chunk,
                why,
                used_by,
                intact_in,
            } => write!(
                f,
                "chunk {chunk}: its refs record is unreadable ({why}); {}, used by: {}",
                intact_in.map_or("no intact copy in any pack".to_string(), |p| format!(
                    "an intact copy is in pack {} at offset {}",
                    p.pack, p.offset
                )),
                list(used_by)
            ),
            Problem::MissingChunk { chunk, used_by } => {
                write!(f, "missing chunk {chunk}, used by: {}", list(used_by))
            }
            Problem::DamagedPack { pack, why, chunks } => {
                let mut vmis: Vec<&String> = chunks.iter().flat_map(|c| &c.used_by).collect();
                vmis.sort();
                vmis.dedup();
                let vmis: Vec<String> = vmis.into_iter().cloned().collect();
                write!(
                    f,
                    "pack {pack} is damaged ({why}): it holds {} chunk(s), used by: {}",
                    chunks.len(),
                    list(&vmis)
                )
            }
            Problem::UnreadableRecords {
                column_family,
                after,
                before,
                why,
            } => match (after, before) {
                (None, None) => write!(f, "no record of {column_family} can be read ({why})"),
                (Some(a), None) => write!(
                    f,
                    "the records of {column_family} after {a} are unreadable ({why})"
                ),
                (None, Some(b)) => write!(
                    f,
                    "the records of {column_family} before {b} are unreadable ({why})"
                ),
                (Some(a), Some(b)) => write!(
                    f,
                    "the records of {column_family} after {a} and before {b} are unreadable ({why})"
                ),
            },
            Problem::UntrackedPack { pack } => {
                write!(f, "pack {pack} holds no chunk that has a refs record")
            }
            Problem::RefcountMismatch {
                chunk,
                recorded,
                actual,
            } => write!(
                f,
                "chunk {chunk}: refcount {recorded} recorded, {actual} manifests reference it"
            ),
            Problem::SizeMismatch { chunk, why } => write!(f, "chunk {chunk}: {why}"),
            Problem::BadManifest { vmi, why } => {
                write!(f, "manifest of {vmi:?} is unreadable: {why}")
            }
            Problem::BadRecord {
                column_family,
                key,
                why,
            } => write!(f, "record {key} of {column_family} does not decode: {why}"),
        }
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "no boot image".into()
    } else {
        names.join(", ")
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub manifests: u64,
    pub chunks: u64,
    pub chunk_bytes_hashed: u64,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Which VMIs use each chunk, each manifest counted once per chunk: the
/// length of a chunk's list is the refcount its refs record must hold.
pub(crate) fn chunk_users<'a>(
    manifests: impl IntoIterator<Item = (&'a str, &'a Manifest)>,
) -> BTreeMap<ChunkId, Vec<String>> {
    let mut users: BTreeMap<ChunkId, Vec<String>> = BTreeMap::new();
    for (name, manifest) in manifests {
        for id in manifest.distinct_chunks().into_iter().map(|c| c.id) {
            users.entry(id).or_default().push(name.to_string());
        }
    }
    users
}

/// Packs read and checked per window: bounds the memory verify needs.
const PACKS_PER_WINDOW: u64 = 64;

pub fn verify(store: &Store) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let (manifests, gap) = store.readable_manifests()?;
    // Refcounts are checked only against every manifest: counted against
    // some, they would all look too high.
    let mut every_manifest_read = gap.is_none();
    if let Some(gap) = gap {
        report.problems.push(unreadable(gap, |key| {
            String::from_utf8_lossy(key).into_owned()
        }));
    }
    let mut good = Vec::new();
    for (name, manifest) in manifests {
        report.manifests += 1;
        match manifest {
            Ok(m) => good.push((name, m)),
            Err(e) => {
                every_manifest_read = false;
                report.problems.push(Problem::BadManifest {
                    vmi: name,
                    why: e.to_string(),
                })
            }
        }
    }
    // Which VMIs use each chunk, and the length each manifest expects.
    let users = chunk_users(good.iter().map(|(name, m)| (name.as_str(), m)));
    let expected_len: HashMap<ChunkId, u32> = good
        .iter()
        .flat_map(|(_, m)| m.chunks.iter().map(|c| (c.id, c.len)))
        .collect();
    drop(good);
    let used_by = |id: &ChunkId| users.get(id).cloned().unwrap_or_default();

    let scan = store.readable_chunk_infos()?;
    let mut infos: HashMap<ChunkId, ChunkInfo> = scan.infos.into_iter().collect();
    for (key, why) in scan.bad {
        report.problems.push(Problem::BadRecord {
            column_family: Table::Refs,
            key,
            why,
        });
    }
    // Chunks in use whose refs records could not be read in order: read
    // alone, a newer version of the record may still be found.
    let mut unreadable_refs: BTreeMap<ChunkId, String> = BTreeMap::new();
    if let Some(gap) = scan.gap {
        report.problems.push(unreadable(gap, hex));
        for id in users.keys() {
            if infos.contains_key(id) {
                continue;
            }
            match store.chunk_info_of(id)? {
                Readable::Found(info) => {
                    infos.insert(*id, info);
                }
                Readable::Absent => {}
                Readable::Damaged(why) => {
                    unreadable_refs.insert(*id, why);
                }
            }
        }
    }

    // Every pack id ever given is read alone (a damaged one fails only its
    // own read), decoded, and every chunk in it re-hashed, on every core.
    let mut packs = PackCheck {
        max_chunk: store.config().chunking.max_len(),
        ..PackCheck::default()
    };
    let end = store.pack_ids_end();
    let mut from = 0;
    while from < end {
        let ids: Vec<u64> = (from..end.min(from + PACKS_PER_WINDOW)).collect();
        let mut window = Vec::new();
        for (id, value) in ids.iter().zip(store.read_packs_each(&ids)?) {
            match value {
                Readable::Found(value) => window.push((*id, value)),
                Readable::Absent => {}
                Readable::Damaged(why) => {
                    packs.bad.insert(*id, why);
                }
            }
        }
        packs.check(&window, &mut report);
        from += PACKS_PER_WINDOW;
    }

    // Every chunk's number names it back: manifests resolve through it.
    let (numbers, numbers_gap) = store.numbers()?;
    if let Some(gap) = numbers_gap {
        report.problems.push(unreadable(gap, hex));
    }
    let mut misnumbered: Vec<(&ChunkId, u32)> = infos
        .iter()
        .filter(|(id, info)| numbers.get(id) != Some(&info.number))
        .map(|(id, info)| (id, info.number))
        .collect();
    misnumbered.sort_unstable_by_key(|(_, n)| *n);
    for (id, number) in misnumbered {
        report.problems.push(Problem::BadRecord {
            column_family: Table::Numbers,
            key: number_key_text(number),
            why: format!("chunk {id} has number {number}, and no numbers record says so"),
        });
    }
    drop(numbers);

    let mut pointed_at = HashSet::new();
    let mut damaged: BTreeMap<u64, Vec<DamagedChunk>> = BTreeMap::new();
    for (id, info) in &infos {
        pointed_at.insert(info.pack);
        let actual = users.get(id).map_or(0, |u| u.len() as u64);
        let corrupt = |why: String| Problem::CorruptChunk {
            chunk: *id,
            why,
            used_by: used_by(id),
        };
        match packs.chunk(id, info) {
            Err(Found::NoPack) => report.problems.push(Problem::MissingChunk {
                chunk: *id,
                used_by: used_by(id),
            }),
            Err(Found::BadPack) => damaged.entry(info.pack).or_default().push(DamagedChunk {
                chunk: *id,
                used_by: used_by(id),
            }),
            Err(Found::NotThere) => report.problems.push(corrupt(format!(
                "pack {} has no such chunk at offset {}",
                info.pack, info.offset
            ))),
            Err(Found::BadChunk(why)) => report.problems.push(corrupt(why)),
            Ok(raw_len) => {
                check_sizes(id, raw_len, info, expected_len.get(id), &mut report);
                if info.refs != actual && every_manifest_read {
                    report.problems.push(Problem::RefcountMismatch {
                        chunk: *id,
                        recorded: info.refs,
                        actual,
                    });
                }
            }
        }
    }
    for (pack, mut chunks) in damaged {
        chunks.sort_by_key(|c| c.chunk);
        let why = packs.bad.get(&pack).cloned().unwrap_or_default();
        report
            .problems
            .push(Problem::DamagedPack { pack, why, chunks });
    }
    for pack in packs.ids() {
        if !pointed_at.contains(&pack) {
            report.problems.push(Problem::UntrackedPack { pack });
        }
    }
    // Where the chunks whose records are lost still are, intact.
    let mut intact: HashMap<ChunkId, Place> = HashMap::new();
    if !unreadable_refs.is_empty() {
        for (&(pack, offset), (id, _)) in &packs.chunks {
            if unreadable_refs.contains_key(id) {
                intact.entry(*id).or_insert(Place { pack, offset });
            }
        }
    }
    for (id, why) in &unreadable_refs {
        report.problems.push(Problem::LostRecord {
            chunk: *id,
            why: why.clone(),
            used_by: used_by(id),
            intact_in: intact.get(id).copied(),
        });
    }
    for (id, names) in &users {
        if !infos.contains_key(id) && !unreadable_refs.contains_key(id) {
            report.problems.push(Problem::MissingChunk {
                chunk: *id,
                used_by: names.clone(),
            });
        }
    }
    Ok(report)
}

fn unreadable(gap: Gap, show: impl Fn(&[u8]) -> String) -> Problem {
    Problem::UnreadableRecords {
        column_family: gap.table,
        after: gap.after.as_deref().map(&show),
        before: gap.before.as_deref().map(&show),
        why: gap.why,
    }
}

/// What verify found in the `packs` column family.
#[derive(Default)]
struct PackCheck {
    /// Packs that RocksDB could not read or that did not decode, and why.
    bad: HashMap<u64, String>,
    /// Every chunk of the packs that decoded: (pack, offset) -> (the BLAKE3
    /// of its bytes, its length).
    chunks: HashMap<(u64, u32), (ChunkId, usize)>,
    good: HashSet<u64>,
    /// The store's chunking maximum: bounds every length a pack gives.
    max_chunk: u32,
}

enum Found {
    NoPack,
    BadPack,
    NotThere,
    BadChunk(String),
}

impl PackCheck {
    fn check(&mut self, window: &[(u64, Vec<u8>)], report: &mut VerifyReport) {
        let results: Vec<_> = window
            .par_iter()
            .map(|(pack_id, value)| {
                let found = decode_pack(value, self.max_chunk).map(|pack| {
                    pack.identified()
                        .into_iter()
                        .map(|(id, offset, raw)| (id, offset, raw.len()))
                        .collect::<Vec<_>>()
                });
                (*pack_id, found)
            })
            .collect();
        for (pack_id, found) in results {
            match found {
                Err(why) => {
                    self.bad.insert(pack_id, why.to_string());
                }
                Ok(chunks) => {
                    self.good.insert(pack_id);
                    for (id, offset, len) in chunks {
                        report.chunks += 1;
                        report.chunk_bytes_hashed += len as u64;
                        self.chunks.insert((pack_id, offset), (id, len));
                    }
                }
            }
        }
    }

    /// Chunk `id` where its refs record `info` places it.
    fn chunk(&self, id: &ChunkId, info: &ChunkInfo) -> std::result::Result<usize, Found> {
        if self.bad.contains_key(&info.pack) {
            return Err(Found::BadPack);
        }
        if !self.good.contains(&info.pack) {
            return Err(Found::NoPack);
        }
        match self.chunks.get(&(info.pack, info.offset)) {
            None => Err(Found::NotThere),
            Some((found, _)) if found != id => Err(Found::BadChunk(
                "content does not match its BLAKE3 id".into(),
            )),
            Some((_, len)) => Ok(*len),
        }
    }

    fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.good.iter().chain(self.bad.keys()).copied()
    }
}

fn check_sizes(
    id: &ChunkId,
    raw_len: usize,
    info: &ChunkInfo,
    expected: Option<&u32>,
    report: &mut VerifyReport,
) {
    let mut why = Vec::new();
    if info.raw_len as usize != raw_len {
        why.push(format!(
            "refs record says {} raw bytes, chunk has {raw_len}",
            info.raw_len
        ));
    }
    if let Some(&len) = expected {
        if len as usize != raw_len {
            why.push(format!(
                "a manifest expects {len} bytes, chunk has {raw_len}"
            ));
        }
    }
    if !why.is_empty() {
        report.problems.push(Problem::SizeMismatch {
            chunk: *id,
            why: why.join("; "),
        });
    }
}
