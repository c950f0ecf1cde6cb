//! Writing a whole folder tree safely: build it in a hidden staging folder beside the
//! destination, then move it into place in one rename. An interrupted import or shift
//! leaves no half-written tree, and `--overwrite` replaces the old tree only once the new
//! one is complete.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// `out` may be written: absent, an empty folder, or (with `overwrite`) any folder.
pub fn check_out(out: &Path, overwrite: bool) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        return Err(Error::invalid(out, "exists and is not a folder"));
    }
    let empty = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?.next().is_none();
    if !empty && !overwrite {
        return Err(Error::invalid(out, "is not empty; refusing to write into it (--overwrite replaces it)"));
    }
    Ok(())
}

/// A hidden staging folder (`.<prefix>…`) in `out`'s parent, so the final rename stays on
/// one file system.
pub fn staging_dir(out: &Path, prefix: &str) -> Result<tempfile::TempDir> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    tempfile::Builder::new()
        .prefix(&format!(".{prefix}-"))
        .tempdir_in(&parent)
        .map_err(|e| Error::io(&parent, e))
}

/// Moves the finished staging tree to `out`, replacing an existing `out` (empty, or with
/// `overwrite`) only now that the new tree is complete.
pub fn install(staging: tempfile::TempDir, out: &Path, overwrite: bool) -> Result<()> {
    check_out(out, overwrite)?; // again: it may have changed while we worked
    let staged = staging.keep();
    let result = replace_dir(&staged, out);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staged);
    }
    result
}

fn replace_dir(staged: &Path, out: &Path) -> Result<()> {
    if !out.exists() {
        return std::fs::rename(staged, out).map_err(|e| Error::io(out, e));
    }
    let parent = staged.parent().unwrap_or(Path::new("."));
    let old = tempfile::Builder::new()
        .prefix(".wise-replaced-")
        .tempdir_in(parent)
        .map_err(|e| Error::io(parent, e))?;
    let old_path = old.path().join("old");
    std::fs::rename(out, &old_path).map_err(|e| Error::io(out, e))?;
    if let Err(e) = std::fs::rename(staged, out) {
        let _ = std::fs::rename(&old_path, out); // put the previous tree back
        return Err(Error::io(out, e));
    }
    drop(old); // deletes the previous tree
    Ok(())
}
