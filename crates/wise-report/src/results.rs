//! Reading the results file that `wise eval --results` appends to (one JSON object a line;
//! see `wise_eval::ResultsFile`).
//!
//! Only what the figure and the table need is kept: model, α and, per dataset, top-1, top-5
//! and the number of images. Per-class accuracies and timings are ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{ReportError, Result};

/// One dataset's scores for one model. Accuracies are fractions in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub top1: f64,
    pub top5: Option<f64>,
    pub n: Option<u64>,
}

/// One evaluated model.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub model: String,
    /// The mixing coefficient of a WiSE-FT interpolation; `None` for any other model (a
    /// fine-tuned checkpoint of some epoch, an ensemble, ...).
    pub alpha: Option<f64>,
    /// Scores by dataset name.
    pub datasets: BTreeMap<String, Score>,
    /// The (last) line of the file this record comes from, for messages.
    pub line: usize,
}

/// The records of one results file.
#[derive(Debug, Clone)]
pub struct Results {
    /// The file they were read from; every error names it.
    pub path: PathBuf,
    /// In file order. A model evaluated again (same `model` and `alpha`) is one record: the
    /// results file is appended to, so re-running an evaluation adds a line, and the newer
    /// line's datasets replace the older ones.
    pub records: Vec<Record>,
}

/// Reads a results file.
pub fn read_results(path: &Path) -> Result<Results> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ReportError::Read { path: path.to_path_buf(), source })?;
    Results::parse(path, &text)
}

impl Results {
    /// Parses results-file text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let mut records: Vec<Record> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record = parse_line(line, index + 1).map_err(|message| ReportError::Parse {
                path: path.to_path_buf(),
                line: index + 1,
                message,
            })?;
            match records.iter_mut().find(|r| r.model == record.model && same_alpha(r.alpha, record.alpha)) {
                Some(old) => {
                    old.datasets.extend(record.datasets);
                    old.line = record.line;
                }
                None => records.push(record),
            }
        }
        Ok(Self { path: path.to_path_buf(), records })
    }

    /// Every dataset some record has, sorted by name.
    pub fn dataset_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.records.iter().flat_map(|r| r.datasets.keys().cloned()).collect();
        names.sort();
        names.dedup();
        names
    }
}

fn same_alpha(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// One line into a record; the error is the message without the file and line.
fn parse_line(line: &str, number: usize) -> std::result::Result<Record, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("expected a JSON object".to_string());
    };
    let model = match obj.get("model") {
        Some(Value::String(model)) => model.clone(),
        Some(other) => return Err(format!("\"model\" must be a string, found {other}")),
        None => return Err("missing key \"model\"".to_string()),
    };
    let alpha = match obj.get("alpha") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(a) if a.is_finite() => Some(a),
            _ => return Err(format!("\"alpha\" must be a finite number, found {n}")),
        },
        Some(other) => return Err(format!("\"alpha\" must be a number or null, found {other}")),
    };
    let datasets = parse_datasets(&obj)?;
    if datasets.is_empty() {
        return Err(format!("model '{model}' has no \"NAME:top1\" key, so no dataset results"));
    }
    Ok(Record { model, alpha, datasets, line: number })
}

/// The `NAME:top1` / `NAME:top5` / `NAME:n` keys; a dataset exists where `NAME:top1` does.
fn parse_datasets(obj: &Map<String, Value>) -> std::result::Result<BTreeMap<String, Score>, String> {
    let mut datasets = BTreeMap::new();
    for (key, value) in obj {
        let Some((name, metric)) = key.rsplit_once(':') else { continue };
        if !matches!(metric, "top1" | "top5" | "n") {
            continue;
        }
        if name.is_empty() {
            return Err(format!("key \"{key}\" has no dataset name"));
        }
        if metric != "top1" && !obj.contains_key(&format!("{name}:top1")) {
            return Err(format!("missing key \"{name}:top1\" (the file has \"{key}\")"));
        }
        if metric == "top1" {
            let top5 = match obj.get(&format!("{name}:top5")) {
                None | Some(Value::Null) => None,
                Some(v) => Some(accuracy(&format!("{name}:top5"), v)?),
            };
            let n = match obj.get(&format!("{name}:n")) {
                None | Some(Value::Null) => None,
                Some(v) => {
                    Some(v.as_u64().ok_or_else(|| format!("\"{name}:n\" must be a count, found {v}"))?)
                }
            };
            datasets.insert(name.to_string(), Score { top1: accuracy(key, value)?, top5, n });
        }
    }
    Ok(datasets)
}

/// An accuracy must be a fraction: the writer stores fractions, and a percentage (70.0)
/// would otherwise plot silently off the chart.
fn accuracy(key: &str, value: &Value) -> std::result::Result<f64, String> {
    match value.as_f64() {
        Some(a) if (0.0..=1.0).contains(&a) => Ok(a),
        Some(a) => Err(format!("\"{key}\" is {a}; accuracies are fractions in [0, 1]")),
        None => Err(format!("\"{key}\" must be a number, found {value}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Results> {
        Results::parse(Path::new("r.jsonl"), text)
    }

    #[test]
    fn reads_records_and_merges_reevaluations() {
        let text = concat!(
            r#"{"model": "zs", "alpha": 0.0, "A:top1": 0.5, "A:top5": 0.9, "A:n": 10, "A:per_class": {}, "seconds": 1}"#,
            "\n\n",
            r#"{"model": "ep1", "alpha": null, "A:top1": 0.7, "B:top1": 0.25}"#,
            "\n",
            r#"{"model": "zs", "alpha": 0, "B:top1": 0.4}"#,
            "\n",
        );
        let results = parse(text).unwrap();
        assert_eq!(results.records.len(), 2);
        let zs = &results.records[0];
        assert_eq!((zs.model.as_str(), zs.alpha, zs.line), ("zs", Some(0.0), 4));
        assert_eq!(zs.datasets["A"], Score { top1: 0.5, top5: Some(0.9), n: Some(10) });
        assert_eq!(zs.datasets["B"].top1, 0.4);
        assert_eq!(results.records[1].alpha, None);
        assert_eq!(results.dataset_names(), ["A", "B"]);
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases = [
            ("{\"model\": \"m\", \"A:top1\": 0.5}\n{oops", "r.jsonl:2: not valid JSON"),
            (r#"{"alpha": 0.5, "A:top1": 0.5}"#, "r.jsonl:1: missing key \"model\""),
            (r#"{"model": "m", "alpha": "half", "A:top1": 0.5}"#, "r.jsonl:1: \"alpha\" must be a number"),
            (r#"{"model": "m", "A:top5": 0.5}"#, "r.jsonl:1: missing key \"A:top1\""),
            (r#"{"model": "m", "A:top1": 70.0}"#, "r.jsonl:1: \"A:top1\" is 70; accuracies are fractions"),
            (r#"{"model": "m", "seconds": 3}"#, "r.jsonl:1: model 'm' has no \"NAME:top1\" key"),
            ("[1, 2]", "r.jsonl:1: expected a JSON object"),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{err:?} should start with {expected:?}");
        }
    }
}
