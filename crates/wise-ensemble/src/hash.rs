//! sha256 of input files, computed beside the merge.
//!
//! The merged file's metadata names the exact checkpoints it came from by digest. Hashing is
//! a second sequential read of each input, done by its own thread with plain `read`s
//! while the main thread merges: the two passes run over the same pages at about the same
//! time, so the disk is read once and the hashing costs wall time only if the CPU is the
//! bottleneck.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Hex sha256 of the whole file.
pub fn sha256_file(path: &Path) -> Result<String> {
    sha256_file_unless(path, &AtomicBool::new(false))?
        .ok_or_else(|| Error::Invalid(format!("{}: hashing stopped", path.display())))
}

/// Hex sha256 of the whole file, or `None` as soon as `stop` is set (the merge it goes
/// with failed, so reading on would be wasted).
pub fn sha256_file_unless(path: &Path, stop: &AtomicBool) -> Result<Option<String>> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(path, e)),
        };
        hasher.update(&buf[..n]);
    }
    Ok(Some(hex(&hasher.finalize())))
}

/// A stand-in of the same length as a digest, for a header written before the digest is known.
pub const PLACEHOLDER: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        let d = sha256_file(&p).unwrap();
        assert_eq!(d, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(d.len(), PLACEHOLDER.len());
        assert!(sha256_file(&dir.path().join("missing")).unwrap_err().to_string().contains("missing"));
    }
}
