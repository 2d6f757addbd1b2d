//! `verify`: re-hash every chunk, check every manifest reference, every
//! refcount and every size record. Reports each problem by name.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use rayon::prelude::*;
use rocksdb::IteratorMode;
use serde::Serialize;

use crate::codec::decode_chunk;
use crate::id::ChunkId;
use crate::store::{ChunkInfo, Store, CF_CHUNKS};
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
    /// A chunk without a refs record (gc would never see it).
    UntrackedChunk {
        chunk: String,
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
            Problem::UntrackedChunk { chunk } => write!(f, "chunk {chunk} has no refs record"),
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
    let mut present = HashSet::with_capacity(infos.len());
    let mut batch: Vec<(ChunkId, Box<[u8]>)> = Vec::new();
    let check_batch = |batch: &mut Vec<(ChunkId, Box<[u8]>)>, report: &mut VerifyReport| {
        let results: Vec<_> = batch
            .par_iter()
            .map(|(id, stored)| {
                (
                    *id,
                    stored.len(),
                    decode_chunk(id, stored).map(|raw| raw.len()),
                )
            })
            .collect();
        for (id, stored_len, result) in results {
            report.chunks += 1;
            match result {
                Ok(raw_len) => {
                    report.chunk_bytes_hashed += raw_len as u64;
                    check_sizes(
                        &id,
                        raw_len,
                        stored_len,
                        infos.get(&id),
                        expected_len.get(&id),
                        report,
                    );
                }
                Err(e) => report.problems.push(Problem::CorruptChunk {
                    chunk: id.to_hex(),
                    why: corrupt_reason(e),
                    used_by: used_by(&id),
                }),
            }
        }
        batch.clear();
    };
    for item in store
        .db()
        .iterator_cf(store.cf(CF_CHUNKS)?, IteratorMode::Start)
    {
        let (key, value) = item?;
        let Some(id) = ChunkId::from_slice(&key) else {
            report.problems.push(Problem::BadKey {
                column_family: CF_CHUNKS.into(),
                key_len: key.len(),
            });
            continue;
        };
        present.insert(id);
        if !infos.contains_key(&id) {
            report
                .problems
                .push(Problem::UntrackedChunk { chunk: id.to_hex() });
        }
        batch.push((id, value));
        if batch.len() >= 4096 {
            check_batch(&mut batch, &mut report);
        }
    }
    check_batch(&mut batch, &mut report);

    for (id, info) in &infos {
        let actual = users.get(id).map_or(0, |u| u.len() as u64);
        if !present.contains(id) {
            report.problems.push(Problem::MissingChunk {
                chunk: id.to_hex(),
                used_by: used_by(id),
            });
        } else if info.refs != actual {
            report.problems.push(Problem::RefcountMismatch {
                chunk: id.to_hex(),
                recorded: info.refs,
                actual,
            });
        }
    }
    for (id, names) in &users {
        if !present.contains(id) && !infos.contains_key(id) {
            report.problems.push(Problem::MissingChunk {
                chunk: id.to_hex(),
                used_by: names.clone(),
            });
        }
    }
    Ok(report)
}

fn corrupt_reason(e: crate::Error) -> String {
    match e {
        crate::Error::CorruptChunk { why, .. } => why,
        other => other.to_string(),
    }
}

fn check_sizes(
    id: &ChunkId,
    raw_len: usize,
    stored_len: usize,
    info: Option<&ChunkInfo>,
    expected: Option<&u32>,
    report: &mut VerifyReport,
) {
    let mut why = Vec::new();
    if let Some(info) = info {
        if info.raw_len as usize != raw_len || info.stored_len as usize != stored_len {
            why.push(format!(
                "refs record says {}/{} raw/stored bytes, chunk has {raw_len}/{stored_len}",
                info.raw_len, info.stored_len
            ));
        }
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
