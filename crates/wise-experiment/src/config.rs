//! The experiment file. Every section maps onto one stage; unknown keys are errors that
//! name the key and its line (serde's `deny_unknown_fields` + toml's spans), because a
//! typo'd hyper-parameter silently left at its default wastes a whole run.
//!
//! Paths may use `{out}` for the output folder and `{datasets}` for the raw public datasets
//! (`$WISE_DATASETS`, else `../shared/datasets`); other relative paths are relative to the
//! folder `wise run` is started from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wise_train::pretrain::{ArchSpec, PretrainConfig};
use wise_train::TrainConfig;

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    pub output: Output,
    /// Raw public datasets to turn into ImageFolders first (`wise data import`).
    #[serde(default)]
    pub import: Vec<Import>,
    /// Corrupted copies of test sets (`wise shift`), made after the imports.
    #[serde(default)]
    pub shift: Vec<Shift>,
    pub model: Model,
    pub zeroshot: Zeroshot,
    pub data: Data,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub ensemble: Ensemble,
    #[serde(default)]
    pub eval: Eval,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    pub dir: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Import {
    /// mnist, mnist-5k, usps, semeion, optdigits, cifar10.
    pub source: String,
    /// The raw files (folder or file).
    pub from: String,
    /// Destination folder.
    pub to: String,
    /// Keep only the first N images of each class in every split (a smaller, balanced subset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_per_class: Option<usize>,
}

/// A `wise shift` stage: CIFAR-10-C / ImageNet-C corruptions of an ImageFolder. With one
/// corruption and one severity `to` is the corrupted ImageFolder; otherwise each pair is
/// `to/<corruption>/<severity>/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shift {
    /// The ImageFolder to corrupt (usually the reference test set).
    pub data: String,
    /// `"all"`, a name, a comma-separated list of names, or a list of names.
    pub corruptions: Names,
    /// 1..5: `3`, `[1, 3, 5]`, `"2..4"` or `"all"`.
    pub severity: Levels,
    /// Seeds every image's random draws (with the corruption and the image's path).
    #[serde(default)]
    pub seed: u64,
    /// Destination folder.
    pub to: String,
}

/// One string (`"all"`, `"fog, snow"`) or a list of strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, expecting = "a corruption name, \"all\", or a list of names")]
pub enum Names {
    One(String),
    Many(Vec<String>),
}

/// One level, a list of levels, or a string (`"1..5"`, `"all"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, expecting = "a severity 1..5, a list of them, or a string such as \"1..5\" or \"all\"")]
pub enum Levels {
    One(i64),
    Many(Vec<i64>),
    Text(String),
}

impl Shift {
    pub fn corruption_list(&self) -> std::result::Result<Vec<wise_shift::Corruption>, String> {
        let text = match &self.corruptions {
            Names::One(s) => s.clone(),
            Names::Many(v) => v.join(","),
        };
        wise_shift::Corruption::parse_list(&text).map_err(|e| format!("[[shift]] to = \"{}\": {e}", self.to))
    }

    pub fn severity_list(&self) -> std::result::Result<Vec<wise_shift::Severity>, String> {
        let text = match &self.severity {
            Levels::One(n) => n.to_string(),
            Levels::Many(v) => v.iter().map(i64::to_string).collect::<Vec<_>>().join(","),
            Levels::Text(s) => s.clone(),
        };
        wise_shift::Severity::parse_list(&text).map_err(|e| format!("[[shift]] to = \"{}\": {e}", self.to))
    }
}

/// Where the CLIP comes from: an existing model, or pretrained here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// An HF model dir, open_clip .safetensors, or hub id.
    pub path: Option<String>,
    pub pretrain: Option<Pretrain>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pretrain {
    /// ImageFolders (captioned from `captions` templates) or `path,caption` manifests.
    pub data: Vec<String>,
    #[serde(default = "simple")]
    pub captions: String,
    #[serde(default)]
    pub arch: ArchSpec,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    #[serde(default = "default_wd")]
    pub wd: f64,
    #[serde(default)]
    pub warmup: usize,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "yes")]
    pub augment: bool,
}

impl Pretrain {
    /// The options `wise_train::pretrain` takes.
    pub fn config(&self) -> PretrainConfig {
        PretrainConfig {
            architecture: self.arch.to_config(),
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            wd: self.wd,
            warmup: self.warmup,
            seed: self.seed,
            augment: self.augment,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zeroshot {
    /// A classnames.txt or a dataset folder whose class names to use.
    pub classes: String,
    #[serde(default = "openai_imagenet")]
    pub templates: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    /// The fine-tuning set.
    pub train: String,
    /// The name (in `eval`) of the reference test set; the others are the shifts.
    pub reference: String,
    /// Test sets by name: the reference and the distribution shifts.
    pub eval: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ensemble {
    /// The mixing coefficients to evaluate: θ(α) = (1−α)·θ_zero-shot + α·θ_fine-tuned.
    pub alphas: Vec<f64>,
}

impl Default for Ensemble {
    fn default() -> Self {
        Self { alphas: (0..=10).map(|i| i as f64 / 10.0).collect() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eval {
    #[serde(default = "eval_batch")]
    pub batch_size: usize,
}

impl Default for Eval {
    fn default() -> Self {
        Self { batch_size: eval_batch() }
    }
}

fn simple() -> String {
    "simple".into()
}
fn openai_imagenet() -> String {
    "openai_imagenet".into()
}
fn default_wd() -> f64 {
    0.1
}
fn yes() -> bool {
    true
}
fn eval_batch() -> usize {
    256
}

impl Experiment {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
        let exp: Experiment = toml::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            msg: e.to_string().trim_end().to_string(),
        })?;
        exp.validate().map_err(|msg| Error::Config { path: path.to_path_buf(), msg })?;
        Ok(exp)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        match (&self.model.path, &self.model.pretrain) {
            (Some(_), Some(_)) => return Err("[model]: give either `path` or `pretrain`, not both".into()),
            (None, None) => {
                return Err("[model]: give `path` (dir, file or hub id) or a `pretrain` table".into())
            }
            _ => {}
        }
        if !self.data.eval.contains_key(&self.data.reference) {
            return Err(format!(
                "[data]: reference '{}' is not one of the eval sets ({})",
                self.data.reference,
                self.data.eval.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if self.data.eval.len() < 2 {
            return Err("[data.eval]: name the reference and at least one shifted test set".into());
        }
        if let Some(a) = self.ensemble.alphas.iter().find(|a| !(0.0..=1.0).contains(*a)) {
            return Err(format!("[ensemble]: alpha {a} is outside [0, 1]"));
        }
        if let Some(pretrain) = &self.model.pretrain {
            pretrain.config().validate().map_err(|e| format!("[model.pretrain]: {e}"))?;
        }
        self.train.validate().map_err(|e| format!("[train]: {e}"))?;
        if let Some(imp) = self.import.iter().find(|i| i.limit_per_class == Some(0)) {
            return Err(format!("[[import]] to = \"{}\": limit_per_class must be at least 1", imp.to));
        }
        for shift in &self.shift {
            shift.corruption_list()?;
            shift.severity_list()?;
        }
        let mut targets: Vec<&str> = self.import.iter().map(|i| i.to.as_str()).collect();
        targets.extend(self.shift.iter().map(|s| s.to.as_str()));
        targets.sort_unstable();
        if let Some(w) = targets.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("two [[import]]/[[shift]] stages write to \"{}\"", w[0]));
        }
        Ok(())
    }

    /// `{out}` expanded to the output folder and `{datasets}` to `$WISE_DATASETS`, else
    /// `../shared/datasets` (where the offline copies of the public datasets live).
    pub fn path(&self, raw: &str) -> PathBuf {
        let datasets = std::env::var("WISE_DATASETS").unwrap_or_else(|_| "../shared/datasets".into());
        PathBuf::from(raw.replace("{out}", &self.output.dir).replace("{datasets}", &datasets))
    }

    pub fn out(&self) -> PathBuf {
        PathBuf::from(&self.output.dir)
    }
}
