//! Atomic file output: a figure or report is either the old file or the complete new one,
//! never half written (a killed `wise plot`, a full disk).

use std::io::Write;
use std::path::Path;

use crate::error::{ReportError, Result};

/// Writes `bytes` to a temporary file beside `path` and renames it over `path`, creating the
/// parent folder if needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let err = |source| ReportError::Write { path: path.to_path_buf(), source };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut tmp = tempfile::Builder::new().prefix(".wise-report-").tempfile_in(dir).map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}
