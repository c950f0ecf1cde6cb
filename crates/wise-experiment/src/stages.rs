//! The stages of an experiment and the rule for skipping them.
//!
//! Each stage has a key: the hash of its own settings and of the keys of the stages it
//! reads from. A finished stage leaves `<out>/.wise-run/<stage>.json` with its key; a
//! re-run skips every stage whose key is unchanged and whose outputs exist, and redoes the
//! rest (and, through the keys, everything downstream of a change). The fine-tuning stage
//! resumes an interrupted run instead of starting over.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// One step of the plan.
#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    pub description: String,
    /// Files or folders the stage produces; all must exist for it to count as done.
    pub outputs: Vec<PathBuf>,
    pub key: String,
    /// The keys of the stages it reads from: when one of them runs again (`--force`), so
    /// does this one, its inputs having been rewritten.
    pub reads: Vec<String>,
}

/// The key of a stage: its settings (as JSON) and its inputs' keys.
pub fn stage_key(settings: &serde_json::Value, upstream: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(settings.to_string().as_bytes());
    for key in upstream {
        h.update(b"|");
        h.update(key.as_bytes());
    }
    h.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect()
}

fn marker(out: &Path, stage: &str, suffix: &str) -> PathBuf {
    out.join(".wise-run").join(format!("{}{suffix}.json", stage.replace([':', '/'], "_")))
}

fn read_key(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["key"].as_str().map(str::to_string)
}

fn write_key(path: &Path, key: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.to_path_buf(), source: e })?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::json!({ "key": key }).to_string())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Error::Io { path: path.to_path_buf(), source: e })
}

impl Stage {
    /// A stage with `settings` (as JSON) reading from the stages keyed `reads`.
    pub fn new(
        name: String,
        description: String,
        outputs: Vec<PathBuf>,
        settings: &serde_json::Value,
        reads: Vec<String>,
    ) -> Self {
        Self { name, description, outputs, key: stage_key(settings, &reads), reads }
    }

    /// Finished with this key, outputs present.
    pub fn is_done(&self, out: &Path) -> bool {
        read_key(&marker(out, &self.name, "")).as_deref() == Some(self.key.as_str())
            && self.outputs.iter().all(|p| p.exists())
    }

    /// Started with this key before (an interrupted run of the same settings).
    pub fn was_started(&self, out: &Path) -> bool {
        read_key(&marker(out, &self.name, ".started")).as_deref() == Some(self.key.as_str())
    }

    pub fn mark_started(&self, out: &Path) -> Result<()> {
        write_key(&marker(out, &self.name, ".started"), &self.key)
    }

    pub fn mark_done(&self, out: &Path) -> Result<()> {
        write_key(&marker(out, &self.name, ""), &self.key)
    }

    /// Forget that it ran (for `--force`).
    pub fn forget(&self, out: &Path) {
        let _ = std::fs::remove_file(marker(out, &self.name, ""));
        let _ = std::fs::remove_file(marker(out, &self.name, ".started"));
    }
}

/// Removes a stage output (file or folder) before the stage writes it anew.
pub fn clear(path: &Path) -> Result<()> {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else if path.exists() {
        std::fs::remove_file(path)
    } else {
        Ok(())
    };
    result.map_err(|e| Error::Io { path: path.to_path_buf(), source: e })
}
