//! Typed content ids. A chunk is named by the BLAKE3 hash of its raw
//! (uncompressed) bytes, so equal content is stored once.

use std::fmt;
use std::str::FromStr;

use crate::FormatError;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(ChunkId)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

/// A chunk id in reports (gc plans, verify's problems) is its hex name.
impl serde::Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

/// The BLAKE3 of an encoded manifest: names one version of a VMI's boot
/// image. Not a chunk id: it names no stored bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ManifestHash(pub [u8; 32]);

impl fmt::Debug for ManifestHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ManifestHash({})", &hex(&self.0)[..16])
    }
}

impl ManifestHash {
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Display for ManifestHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for ManifestHash {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, FormatError> {
        parse_hex32(s).map(ManifestHash)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

impl FromStr for ChunkId {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, FormatError> {
        parse_hex32(s).map(ChunkId)
    }
}

/// The identity of a VMI file: BLAKE3 of its whole content. The mount compares
/// it with the file it serves, so a boot image is never applied to a VMI that
/// changed after it was recorded.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileIdentity(pub [u8; 32]);

impl FileIdentity {
    /// Hashes the whole file with `pread` into a buffer, each piece on
    /// every core. Not through a memory map: a file truncated meanwhile
    /// would raise SIGBUS and kill the process.
    pub fn of_file(path: &std::path::Path) -> crate::Result<Self> {
        use std::os::unix::fs::FileExt;
        let io = |e| crate::FormatError::io(path, e);
        let file = std::fs::File::open(path).map_err(io)?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 16 << 20];
        let mut at = 0u64;
        loop {
            let n = match file.read_at(&mut buf, at) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io(e)),
            };
            hasher.update_rayon(&buf[..n]);
            at += n as u64;
        }
        Ok(FileIdentity(*hasher.finalize().as_bytes()))
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Display for FileIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for FileIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileIdentity({})", &self.to_hex()[..16])
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn parse_hex32(s: &str) -> Result<[u8; 32], FormatError> {
    let bad = || FormatError::Hex(s.to_string());
    if s.len() != 64 || !s.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ChunkId::of(b"hello");
        assert_eq!(id.to_hex().parse::<ChunkId>().unwrap(), id);
        assert!("zz".parse::<ChunkId>().is_err());
        assert!("g".repeat(64).parse::<ChunkId>().is_err());
    }
}
