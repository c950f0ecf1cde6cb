//! The results file: one JSON line per evaluated model, appended.
//!
//! Keys follow wise-ft's results files (`"MNIST:top1"`), plus `model`, `alpha` (null for a
//! model that is not an interpolation) and `seconds`. Appending one line per model lets
//! many runs (an α sweep, several fine-tunes) share a file that plots read.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::Evaluation;

pub struct ResultsFile {
    path: PathBuf,
}

impl ResultsFile {
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf() }
    }

    /// The JSON object for one model evaluated on several datasets.
    pub fn record(model: &str, alpha: Option<f64>, evaluations: &[Evaluation]) -> Value {
        let mut obj = Map::new();
        obj.insert("model".into(), json!(model));
        obj.insert("alpha".into(), json!(alpha));
        let mut seconds = 0.0;
        for e in evaluations {
            let m = &e.metrics;
            obj.insert(format!("{}:top1", e.dataset), json!(m.top1()));
            obj.insert(format!("{}:top5", e.dataset), json!(m.top5()));
            obj.insert(format!("{}:n", e.dataset), json!(m.n));
            let per_class: Map<String, Value> =
                m.per_class_accuracy().into_iter().map(|(name, acc, _)| (name, json!(acc))).collect();
            obj.insert(format!("{}:per_class", e.dataset), Value::Object(per_class));
            seconds += e.seconds;
        }
        obj.insert("seconds".into(), json!(seconds));
        Value::Object(obj)
    }

    /// Appends `record` as one line (one `write` call, so concurrent appenders do not
    /// interleave within a line).
    pub fn append(&self, record: &Value) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        file.write_all(format!("{record}\n").as_bytes())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
