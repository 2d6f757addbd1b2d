//! Getting boot images back out: `export` (a `.yolo` identical in block data
//! and order to what was imported), `extract` (a sparse file with every
//! recorded block at its offset) and [`VmiReader`], the `read_at` view the
//! mount builds on.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::format::BootImageWriter;
use crate::manifest::{Manifest, ManifestIndex};
use crate::output::{write_file, write_stream, PRIVATE_MODE};
use crate::store::Store;
use crate::{Error, Result};

/// Streams every chunk of `manifest`, in order, to `sink`.
fn for_each_chunk(
    store: &Store,
    manifest: &Manifest,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    for chunk in &manifest.chunks {
        let raw = store.read_chunk(&chunk.id)?;
        if raw.len() != chunk.len as usize {
            return Err(Error::CorruptChunk {
                id: chunk.id,
                why: format!(
                    "{} bytes where the manifest expects {}",
                    raw.len(),
                    chunk.len
                ),
            });
        }
        sink(&raw)?;
    }
    Ok(())
}

/// Writes the boot images of `names` as one `.yolo` to `out` (`-` for
/// standard output), private to its owner.
pub fn export(store: &Store, names: &[String], out: &Path) -> Result<()> {
    for (i, name) in names.iter().enumerate() {
        if names[..i].contains(name) {
            // A .yolo naming one file twice is one import refuses.
            return Err(Error::Invalid(format!("{name:?} is given twice")));
        }
    }
    let manifests = names
        .iter()
        .map(|n| store.manifest(n).map(|m| (n, m)))
        .collect::<Result<Vec<_>>>()?;
    let block_size = match manifests.first() {
        Some((_, m)) => m.block_size,
        None => return Err(Error::Invalid("nothing to export".into())),
    };
    if manifests.iter().any(|(_, m)| m.block_size != block_size) {
        return Err(Error::Invalid(
            "these boot images have different block sizes; export them separately".into(),
        ));
    }
    write_stream(out, PRIVATE_MODE, |w| {
        let mut writer = BootImageWriter::new(w, block_size, manifests.len() as u32)?;
        for (name, manifest) in &manifests {
            writer.begin_file(&manifest.file_header(name))?;
            for_each_chunk(store, manifest, |raw| Ok(writer.write_data(raw)?))?;
        }
        writer.finish()?;
        Ok(())
    })
}

/// Writes a sparse file of the VMI's size holding every recorded block at
/// its offset, holes elsewhere, private to its owner. Written aside and
/// renamed, so a failure leaves an existing `out` as it was.
pub fn extract(store: &Store, name: &str, out: &Path) -> Result<()> {
    let manifest = store.manifest(name)?;
    write_file(out, PRIVATE_MODE, |file| {
        file.set_len(manifest.file_size)
            .map_err(|e| Error::io(out, e))?;
        // Walk the stream: a block may span two chunks, so carry a partial one.
        let mut blocks = manifest.blocks.iter();
        let mut pending: Vec<u8> = Vec::new();
        let bs = u64::from(manifest.block_size);
        let mut current = blocks.next().copied();
        for_each_chunk(store, &manifest, |mut raw| {
            while let Some(id) = current {
                let need = manifest.block_len(id) - pending.len();
                if raw.len() < need {
                    pending.extend_from_slice(raw);
                    return Ok(());
                }
                let write_at = |data: &[u8]| {
                    file.write_all_at(data, id * bs)
                        .map_err(|e| Error::io(out, e))
                };
                if pending.is_empty() {
                    write_at(&raw[..need])?;
                } else {
                    pending.extend_from_slice(&raw[..need]);
                    write_at(&pending)?;
                    pending.clear();
                }
                raw = &raw[need..];
                current = blocks.next().copied();
            }
            Ok(())
        })
    })
}

/// Reads a VMI's recorded blocks out of the store, by file offset.
pub struct VmiReader<'a> {
    store: &'a Store,
    index: ManifestIndex,
}

impl<'a> VmiReader<'a> {
    pub fn open(store: &'a Store, name: &str) -> Result<Self> {
        Ok(VmiReader {
            store,
            index: ManifestIndex::new(store.manifest(name)?),
        })
    }

    pub fn manifest(&self) -> &Manifest {
        self.index.manifest()
    }

    /// Fills `buf` with the file's bytes at `offset` where the boot image
    /// holds them. Returns, per block-sized step, whether it was filled;
    /// bytes of blocks the boot image lacks are left untouched.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<Vec<bool>> {
        let bs = u64::from(self.manifest().block_size);
        let mut filled = Vec::new();
        let end = offset + buf.len() as u64;
        let mut at = offset;
        while at < end {
            let id = at / bs;
            let block_end = ((id + 1) * bs).min(end);
            let Some(stream) = self.index.block(id) else {
                filled.push(false);
                at = block_end;
                continue;
            };
            let want = (at - id * bs)..(block_end - id * bs);
            let want = (stream.start + want.start)..(stream.start + want.end).min(stream.end);
            let mut dst = (at - offset) as usize;
            for (i, chunk_range) in self.index.chunks_for(want.clone()) {
                let raw = self.store.read_chunk(&self.manifest().chunks[i].id)?;
                let from = want.start.max(chunk_range.start);
                let to = want.end.min(chunk_range.end);
                let src = (from - chunk_range.start) as usize..(to - chunk_range.start) as usize;
                buf[dst..dst + src.len()].copy_from_slice(&raw[src.clone()]);
                dst += src.len();
            }
            filled.push(true);
            at = block_end;
        }
        Ok(filled)
    }
}
