//! Fine-tuning hyper-parameters: wise-ft's defaults, checked once, stored with every
//! checkpoint so a resumed run can prove it is the same run.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Micro-batches per optimizer step (the effective batch is `batch_size · grad_accum`).
    pub grad_accum: usize,
    pub lr: f64,
    pub wd: f64,
    /// Linear warmup steps (optimizer steps).
    pub warmup: usize,
    pub label_smoothing: f64,
    /// Global gradient-norm cap; `None` disables clipping.
    pub clip_grad_norm: Option<f64>,
    pub seed: u64,
    /// Stop after this many optimizer steps; the schedule then spans these steps.
    pub max_steps: Option<usize>,
    /// RandomResizedCrop training transform (else the eval transform).
    pub augment: bool,
    /// Train the head only, on cached features of the frozen tower.
    pub freeze_encoder: bool,
    /// Exclude biases, norms and embeddings from weight decay (wise-ft decays everything).
    pub no_decay_on_bias_norm_embedding: bool,
    /// Also save resumable state every this many optimizer steps (besides each epoch end).
    pub save_every: Option<usize>,
}

impl Default for TrainConfig {
    /// wise-ft's ImageNet recipe, at 10 epochs.
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 512,
            grad_accum: 1,
            lr: 3e-5,
            wd: 0.1,
            warmup: 500,
            label_smoothing: 0.0,
            clip_grad_norm: Some(1.0),
            seed: 0,
            max_steps: None,
            augment: true,
            freeze_encoder: false,
            no_decay_on_bias_norm_embedding: false,
            save_every: None,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.epochs == 0 && self.max_steps.is_none() {
            return bad("epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch size must be at least 1".into());
        }
        if self.grad_accum == 0 {
            return bad("grad-accum must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr must be a positive number, got {}", self.lr));
        }
        if !(self.wd.is_finite() && self.wd >= 0.0) {
            return bad(format!("wd must be ≥ 0, got {}", self.wd));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(format!("label smoothing must be in [0, 1), got {}", self.label_smoothing));
        }
        if let Some(c) = self.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return bad(format!("clip-grad-norm must be > 0, got {c}"));
            }
        }
        if self.max_steps == Some(0) || self.save_every == Some(0) {
            return bad("max-steps and save-every must be at least 1".into());
        }
        Ok(())
    }

    /// The keys whose values differ from `other`'s, for a resume that does not match.
    pub fn differences(&self, other: &TrainConfig) -> Vec<String> {
        let (a, b) = (serde_json::to_value(self), serde_json::to_value(other));
        let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) = (a, b) else {
            return vec!["<unreadable config>".into()];
        };
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, v)| format!("{k}: {} (saved: {})", v, b[k]))
            .collect()
    }
}
