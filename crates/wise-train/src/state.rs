//! Resumable training state in one file, `resume.safetensors`, written atomically:
//! the classifier (its checkpoint names and metadata, so it also loads as a classifier's
//! weights), in a contrastive run also the text tower and temperature (HF `CLIPModel`
//! names: `text_model.*`, `text_projection.weight`, `logit_scale`), the AdamW moments
//! (`adamw.m.<name>`, `adamw.v.<name>`), and where the run is (`wise.train_state`: step,
//! epoch, next batch, the config).
//!
//! One file means one rename commits everything: a run killed at any instant resumes from
//! the last complete state, never from weights of one step and moments of another.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use wise_clip::weights::{save_safetensors_atomic, Checkpoint, WeightSource};
use wise_zeroshot::{ClassifierMeta, ImageClassifier};

use crate::config::TrainConfig;
use crate::optim::AdamW;
use crate::{Error, Result};

pub const RESUME_FILE: &str = "resume.safetensors";

/// Where a run is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimizer steps taken.
    pub step: usize,
    /// The epoch in progress (0-based).
    pub epoch: usize,
    /// Micro-batches of `epoch` already consumed.
    pub batch: usize,
    pub config: TrainConfig,
    /// Images in the training set, to refuse resuming on other data.
    pub train_images: usize,
    /// Contrastive runs: the CLIP (path or hub id) whose text tower is trained, so a resumed
    /// run finds its tokenizer and text config again without being told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<String>,
}

/// Is `name` one of an image classifier's tensors (the rest of a state file is the
/// optimizer's or a contrastive run's text tower)?
fn is_classifier_tensor(name: &str) -> bool {
    name.starts_with("vision_model.")
        || name.starts_with("visual_projection.")
        || name.starts_with("classification_head.")
}

/// Writes the state: the classifier, `extra` parameters trained beside it (a contrastive
/// run's text tower and temperature; empty otherwise), the optimizer and the progress.
pub fn save(
    dir: &Path,
    classifier: &ImageClassifier,
    extra: &BTreeMap<String, Var>,
    optimizer: &AdamW,
    progress: &Progress,
) -> Result<PathBuf> {
    let mut tensors: Vec<(String, Tensor)> =
        classifier.params.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    for (name, var) in extra {
        if is_classifier_tensor(name) || name.starts_with("adamw.") {
            return Err(Error::Config(format!("{name} cannot be saved beside the classifier")));
        }
        tensors.push((name.clone(), var.as_tensor().clone()));
    }
    for (prefix, moments) in [("adamw.m.", &optimizer.m), ("adamw.v.", &optimizer.v)] {
        tensors.extend(moments.iter().map(|(n, t)| (format!("{prefix}{n}"), t.clone())));
    }
    let mut meta = classifier.meta.to_metadata()?;
    let state = serde_json::json!({ "progress": progress, "adamw_step": optimizer.step });
    meta.insert("wise.train_state".into(), state.to_string());
    let path = dir.join(RESUME_FILE);
    save_safetensors_atomic(&path, &tensors, Some(meta))?;
    Ok(path)
}

/// The checkpoint's classifier tensors only (the moments are read separately).
struct ClassifierPart<'a>(&'a Checkpoint);

impl WeightSource for ClassifierPart<'_> {
    fn describe(&self) -> String {
        self.0.describe()
    }
    fn names(&self) -> Vec<String> {
        self.0.names().into_iter().filter(|n| is_classifier_tensor(n)).collect()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.0.shape(name)
    }
    fn load_f32(&self, name: &str, device: &Device) -> wise_clip::Result<Tensor> {
        self.0.load_f32(name, device)
    }
}

/// A saved state, read back: the classifier and progress at once, the optimizer moments
/// and other tensors on request (which ones depends on what the resumed run trains).
pub struct Restored {
    pub classifier: ImageClassifier,
    pub progress: Progress,
    adamw_step: u64,
    checkpoint: Checkpoint,
}

pub fn load(dir: &Path, device: &Device) -> Result<Restored> {
    let path = dir.join(RESUME_FILE);
    if !path.exists() {
        return Err(Error::Config(format!("--resume {}: no {RESUME_FILE} in this folder", dir.display())));
    }
    let checkpoint = Checkpoint::open(&path)?;
    let meta_map: HashMap<String, String> = checkpoint.user_metadata().cloned().unwrap_or_default();
    let meta = ClassifierMeta::from_metadata(&path, Some(&meta_map))?;
    let classifier = ImageClassifier::from_weights(meta, &ClassifierPart(&checkpoint), device)?;
    let bad = |m: String| Error::Config(format!("{}: {m}", path.display()));
    let state: serde_json::Value = meta_map
        .get("wise.train_state")
        .ok_or_else(|| bad("no training state".into()))
        .and_then(|s| serde_json::from_str(s).map_err(|e| bad(e.to_string())))?;
    let progress: Progress =
        serde_json::from_value(state["progress"].clone()).map_err(|e| bad(e.to_string()))?;
    let adamw_step = state["adamw_step"].as_u64().ok_or_else(|| bad("no optimizer step".into()))?;
    Ok(Restored { classifier, progress, adamw_step, checkpoint })
}

impl Restored {
    /// `optimizer` (fresh, over the parameters the resumed run trains) with the saved step
    /// count and the saved moments of each of its parameters.
    pub fn optimizer(&self, mut optimizer: AdamW, device: &Device) -> Result<AdamW> {
        optimizer.step = self.adamw_step;
        let names: Vec<String> = optimizer.m.keys().cloned().collect();
        let moments = |prefix: &str| -> Result<BTreeMap<String, Tensor>> {
            names.iter().map(|n| Ok((n.clone(), self.tensor(&format!("{prefix}{n}"), device)?))).collect()
        };
        optimizer.m = moments("adamw.m.")?;
        optimizer.v = moments("adamw.v.")?;
        Ok(optimizer)
    }

    /// The saved tensor `name` (e.g. a contrastive run's `text_model.*`), as f32.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        if self.checkpoint.shape(name).is_none() {
            return Err(Error::Config(format!(
                "{}: no tensor {name} (saved by a run of another kind?)",
                self.checkpoint.describe()
            )));
        }
        Ok(self.checkpoint.load_f32(name, device)?)
    }
}
