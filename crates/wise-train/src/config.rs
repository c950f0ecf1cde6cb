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
    /// The training objective: wise-ft's cross-entropy on the head, or FLYP's contrastive
    /// loss on both towers (see [`crate::flyp`]). Left out of the serialised config when it
    /// is the default, so cross-entropy configs (and the stage keys of `wise run`) read as
    /// they did before the option existed.
    #[serde(skip_serializing_if = "Loss::is_cross_entropy")]
    pub loss: Loss,
}

/// What a fine-tuning run minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Cross-entropy of the classifier's logits (optionally label-smoothed): wise-ft.
    #[default]
    CrossEntropy,
    /// CLIP's symmetric contrastive loss between images and class-prompt captions, both
    /// towers trained, the head rebuilt from the text tower: FLYP (Goyal et al., 2022).
    Contrastive,
}

impl Loss {
    pub fn is_cross_entropy(&self) -> bool {
        *self == Loss::CrossEntropy
    }

    /// The name used in configs and on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Loss::CrossEntropy => "cross_entropy",
            Loss::Contrastive => "contrastive",
        }
    }
}

impl std::str::FromStr for Loss {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.replace('-', "_").as_str() {
            "cross_entropy" => Ok(Loss::CrossEntropy),
            "contrastive" => Ok(Loss::Contrastive),
            _ => Err(format!("unknown loss '{s}': cross_entropy or contrastive")),
        }
    }
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
            loss: Loss::CrossEntropy,
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
        if self.loss == Loss::Contrastive {
            if self.freeze_encoder {
                return bad(
                    "the contrastive loss trains both towers: it cannot be combined with freeze-encoder \
                     (a linear probe is a cross-entropy run)"
                        .into(),
                );
            }
            if self.label_smoothing != 0.0 {
                return bad(
                    "label smoothing applies to the cross-entropy loss only, not to the contrastive loss"
                        .into(),
                );
            }
            if self.batch_size < 2 {
                return bad("the contrastive loss needs a batch size of at least 2 (the other images of a \
                     batch are the negatives)"
                    .into());
            }
        }
        Ok(())
    }

    /// The keys whose values differ from `other`'s, for a resume that does not match.
    pub fn differences(&self, other: &TrainConfig) -> Vec<String> {
        // Every key, the ones skipped when at their default included.
        let full = |c: &TrainConfig| {
            let mut v = serde_json::to_value(c);
            if let Ok(serde_json::Value::Object(m)) = &mut v {
                m.insert("loss".into(), c.loss.name().into());
            }
            v
        };
        let (a, b) = (full(self), full(other));
        let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) = (a, b) else {
            return vec!["<unreadable config>".into()];
        };
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, v)| format!("{k}: {} (saved: {})", v, b[k]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_defaults_to_cross_entropy_and_is_named_in_differences() {
        let ce: TrainConfig = serde_json::from_str(r#"{"epochs": 2}"#).unwrap();
        assert_eq!(ce.loss, Loss::CrossEntropy);
        // A cross-entropy config serialises as before the option existed.
        assert!(serde_json::to_value(&ce).unwrap().get("loss").is_none());
        let flyp: TrainConfig = serde_json::from_str(r#"{"epochs": 2, "loss": "contrastive"}"#).unwrap();
        assert_eq!(flyp.loss, Loss::Contrastive);
        assert_eq!(serde_json::to_value(&flyp).unwrap()["loss"], "contrastive");
        assert_eq!(ce.differences(&flyp), [r#"loss: "cross_entropy" (saved: "contrastive")"#]);
        assert_eq!(flyp.differences(&ce), [r#"loss: "contrastive" (saved: "cross_entropy")"#]);
        assert!(serde_json::from_str::<TrainConfig>(r#"{"loss": "flyp"}"#).is_err());
        assert_eq!("contrastive".parse::<Loss>(), Ok(Loss::Contrastive));
        assert_eq!("cross-entropy".parse::<Loss>(), Ok(Loss::CrossEntropy));
        assert!("mse".parse::<Loss>().unwrap_err().contains("cross_entropy or contrastive"));
    }

    #[test]
    fn contrastive_refuses_what_it_cannot_do() {
        let flyp = TrainConfig { loss: Loss::Contrastive, ..TrainConfig::default() };
        assert!(flyp.validate().is_ok());
        for (bad, want) in [
            (TrainConfig { freeze_encoder: true, ..flyp.clone() }, "freeze-encoder"),
            (TrainConfig { label_smoothing: 0.1, ..flyp.clone() }, "label smoothing"),
            (TrainConfig { batch_size: 1, ..flyp.clone() }, "at least 2"),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
