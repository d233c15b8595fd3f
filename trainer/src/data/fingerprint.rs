//! Fingerprints of data files: FNV-1a, 64 bits, over the bytes. Enough to tell a file that
//! changed under a run from the one it started with, which is all they are for (not a
//! defence against a file made to collide).

use std::hash::Hasher;
use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// FNV-1a over everything written, as 16 hex digits by [`Fnv1a::hex`].
#[derive(Default)]
pub struct Fnv1a(Option<u64>);

impl Fnv1a {
    pub fn hex(&self) -> String {
        format!("{:016x}", self.finish())
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0.unwrap_or(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.finish();
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = Some(h);
    }
}

/// Feeds the bytes of `path` to `h`, a block at a time.
pub fn hash_file(h: &mut Fnv1a, path: &Path) -> Result<()> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        h.write(&buf[..n]);
    }
}

/// The fingerprint of one file's bytes.
pub fn file_digest(path: &Path) -> Result<String> {
    let mut h = Fnv1a::default();
    hash_file(&mut h, path)?;
    Ok(h.hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_follows_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, "a").unwrap();
        // FNV-1a 64 of "a", the published test vector.
        assert_eq!(file_digest(&path).unwrap(), "af63dc4c8601ec8c");
        let first = file_digest(&path).unwrap();
        std::fs::write(&path, "b").unwrap();
        assert_ne!(file_digest(&path).unwrap(), first);
        // Larger than one read block.
        std::fs::write(&path, vec![7u8; (1 << 16) + 3]).unwrap();
        let mut whole = Fnv1a::default();
        whole.write(&vec![7u8; (1 << 16) + 3]);
        assert_eq!(file_digest(&path).unwrap(), whole.hex());
    }
}
