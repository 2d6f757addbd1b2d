//! `verify`: re-hash every chunk, check every manifest reference, every
//! refcount and every size record. Reports each problem by name.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use rayon::prelude::*;
use rocksdb::IteratorMode;
use serde::Serialize;

use crate::id::ChunkId;
use crate::pack::decode_pack;
use crate::store::{ChunkInfo, Store, CF_PACKS};
use crate::Result;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "kebab-case")]
pub enum Problem {
    /// A chunk whose bytes do not decode or do not hash to its id.
    CorruptChunk {
        chunk: String,
        why: String,
        used_by: Vec<String>,
    },
    /// A manifest references a chunk the store does not have.
    MissingChunk {
        chunk: String,
        used_by: Vec<String>,
    },
    /// A pack none of whose chunks has a refs record: space nothing can
    /// reach or collect.
    UntrackedPack {
        pack: u64,
    },
    RefcountMismatch {
        chunk: String,
        recorded: u64,
        actual: u64,
    },
    SizeMismatch {
        chunk: String,
        why: String,
    },
    BadManifest {
        vmi: String,
        why: String,
    },
    BadKey {
        column_family: String,
        key_len: usize,
    },
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
            Problem::MissingChunk { chunk, used_by } => {
                write!(f, "missing chunk {chunk}, used by: {}", list(used_by))
            }
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
            Problem::BadKey {
                column_family,
                key_len,
            } => {
                write!(f, "a {key_len}-byte key in column family {column_family}")
            }
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

pub fn verify(store: &Store) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    // Which VMIs use each chunk, and the length each manifest expects.
    let mut users: BTreeMap<ChunkId, Vec<String>> = BTreeMap::new();
    let mut expected_len: HashMap<ChunkId, u32> = HashMap::new();
    for (name, manifest) in store.manifests()? {
        report.manifests += 1;
        match manifest {
            Ok(m) => {
                let mut seen = HashSet::new();
                for c in &m.chunks {
                    expected_len.insert(c.id, c.len);
                    if seen.insert(c.id) {
                        users.entry(c.id).or_default().push(name.clone());
                    }
                }
            }
            Err(e) => report.problems.push(Problem::BadManifest {
                vmi: name,
                why: e.to_string(),
            }),
        }
    }
    let used_by = |id: &ChunkId| users.get(id).cloned().unwrap_or_default();

    let infos: HashMap<ChunkId, ChunkInfo> = store.chunk_infos()?.into_iter().collect();
    // Every pack is decoded and every chunk in it re-hashed, on every core.
    let mut packs = PackCheck {
        max_chunk: store.config().chunking.max_len(),
        ..PackCheck::default()
    };
    let mut window: Vec<(u64, Box<[u8]>)> = Vec::new();
    for item in store
        .db()
        .iterator_cf(store.cf(CF_PACKS)?, IteratorMode::Start)
    {
        let (key, value) = item?;
        let Ok(key) = <[u8; 8]>::try_from(&key[..]) else {
            report.problems.push(Problem::BadKey {
                column_family: CF_PACKS.into(),
                key_len: key.len(),
            });
            continue;
        };
        window.push((u64::from_be_bytes(key), value));
        if window.len() >= 64 {
            packs.check(&mut window, &mut report);
        }
    }
    packs.check(&mut window, &mut report);

    let mut pointed_at = HashSet::new();
    for (id, info) in &infos {
        pointed_at.insert(info.pack);
        let actual = users.get(id).map_or(0, |u| u.len() as u64);
        let corrupt = |why: String| Problem::CorruptChunk {
            chunk: id.to_hex(),
            why,
            used_by: used_by(id),
        };
        match packs.chunk(id, info) {
            Err(Found::NoPack) => report.problems.push(Problem::MissingChunk {
                chunk: id.to_hex(),
                used_by: used_by(id),
            }),
            Err(Found::BadPack(why)) => report
                .problems
                .push(corrupt(format!("pack {}: {why}", info.pack))),
            Err(Found::NotThere) => report.problems.push(corrupt(format!(
                "pack {} has no such chunk at offset {}",
                info.pack, info.offset
            ))),
            Err(Found::BadChunk(why)) => report.problems.push(corrupt(why)),
            Ok(raw_len) => {
                check_sizes(id, raw_len, info, expected_len.get(id), &mut report);
                if info.refs != actual {
                    report.problems.push(Problem::RefcountMismatch {
                        chunk: id.to_hex(),
                        recorded: info.refs,
                        actual,
                    });
                }
            }
        }
    }
    for pack in packs.ids() {
        if !pointed_at.contains(&pack) {
            report.problems.push(Problem::UntrackedPack { pack });
        }
    }
    for (id, names) in &users {
        if !infos.contains_key(id) {
            report.problems.push(Problem::MissingChunk {
                chunk: id.to_hex(),
                used_by: names.clone(),
            });
        }
    }
    Ok(report)
}

/// What verify found in the `packs` column family.
#[derive(Default)]
struct PackCheck {
    /// Packs that did not decode, and why.
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
    BadPack(String),
    NotThere,
    BadChunk(String),
}

impl PackCheck {
    fn check(&mut self, window: &mut Vec<(u64, Box<[u8]>)>, report: &mut VerifyReport) {
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
                    self.bad.insert(pack_id, why);
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
        window.clear();
    }

    /// Chunk `id` where its refs record `info` places it.
    fn chunk(&self, id: &ChunkId, info: &ChunkInfo) -> std::result::Result<usize, Found> {
        if let Some(why) = self.bad.get(&info.pack) {
            return Err(Found::BadPack(why.clone()));
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
            chunk: id.to_hex(),
            why: why.join("; "),
        });
    }
}
