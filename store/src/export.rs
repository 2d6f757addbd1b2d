//! Getting boot images back out: `export` (a `.yolo` identical in block data
//! and order to what was imported), `extract` (a sparse file with every
//! recorded block at its offset).

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::UsageFault;
use crate::format::BootImageWriter;
use crate::manifest::Manifest;
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
            return Err(UsageFault::NameTwice(name.clone()).into());
        }
    }
    let manifests = names
        .iter()
        .map(|n| store.manifest(n).map(|m| (n, m)))
        .collect::<Result<Vec<_>>>()?;
    let block_size = match manifests.first() {
        Some((_, m)) => m.block_size,
        None => return Err(UsageFault::NothingToExport.into()),
    };
    if manifests.iter().any(|(_, m)| m.block_size != block_size) {
        return Err(UsageFault::MixedBlockSizes.into());
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
