//! sha256 of input files, computed beside the merge.
//!
//! The merged file's metadata names the exact checkpoints it came from by digest. Hashing is
//! a second sequential pass over each input, done by its own thread while the main thread
//! merges: both passes run over the same pages at about the same time, so the disk is read
//! once, and on two or more cores the hashing costs wall time only when the CPU, not the
//! disk, is the bottleneck. The file is memory-mapped rather than `read` into a buffer
//! (a 1.7 GB checkpoint is 1.7 GB of copying saved) and its pages are given back chunk by
//! chunk, so hashing adds nothing to the resident set.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::Mmap;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Bytes hashed between two checks of the stop flag (and page releases).
const CHUNK: usize = 4 << 20;

/// Hex sha256 of the whole file.
pub fn sha256_file(path: &Path) -> Result<String> {
    sha256_file_unless(path, &AtomicBool::new(false))?
        .ok_or_else(|| Error::Invalid(format!("{}: hashing stopped", path.display())))
}

/// Hex sha256 of the whole file, or `None` as soon as `stop` is set (the merge it goes
/// with failed, so reading on would be wasted).
pub fn sha256_file_unless(path: &Path, stop: &AtomicBool) -> Result<Option<String>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    if file.metadata().map_err(|e| Error::io(path, e))?.len() == 0 {
        return Ok(Some(hex(&hasher.finalize())));
    }
    // SAFETY: read-only map; as every mmap reader, we rely on nobody truncating the file
    // while it is open.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::Sequential);
    for start in (0..map.len()).step_by(CHUNK) {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let end = (start + CHUNK).min(map.len());
        hasher.update(&map[start..end]);
        // Released from a little before the chunk, as the merge does (see `Input::release`).
        // SAFETY: read-only, file-backed map: dropping the pages only unmaps them, a later
        // access would fault the same bytes back in.
        #[cfg(unix)]
        let _ = unsafe {
            let from = start.saturating_sub(crate::inputs::RELEASE_BEHIND);
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, end - from)
        };
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
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(
            sha256_file(&empty).unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // Across chunk boundaries: a file of 2.5 chunks against a one-shot digest.
        let big: Vec<u8> = (0..CHUNK * 5 / 2).map(|i| (i * 7 % 251) as u8).collect();
        let bp = dir.path().join("big");
        std::fs::write(&bp, &big).unwrap();
        assert_eq!(sha256_file(&bp).unwrap(), hex(&Sha256::digest(&big)));
        assert_eq!(d.len(), PLACEHOLDER.len());
        assert!(sha256_file(&dir.path().join("missing")).unwrap_err().to_string().contains("missing"));
    }
}
