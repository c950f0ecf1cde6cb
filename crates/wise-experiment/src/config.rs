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
use wise_train::pretrain::ArchSpec;
use wise_train::TrainConfig;

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    pub output: Output,
    /// Raw public datasets to turn into ImageFolders first (`wise data import`).
    #[serde(default)]
    pub import: Vec<Import>,
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
        self.train.validate().map_err(|e| format!("[train]: {e}"))?;
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
