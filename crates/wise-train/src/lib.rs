//! wise-train: fine-tuning a wise image classifier, the other endpoint of WiSE-FT.
//!
//! The recipe is wise-ft's, step for step, so results are comparable with the paper:
//! cross-entropy (optionally label-smoothed) on the classifier's logits, AdamW with
//! decoupled weight decay on all parameters, warmup then cosine decay of the learning
//! rate per step, global-norm gradient clipping, the whole classifier trained end to end.
//! Runs save resumable state atomically and resume bit for bit on CPU; a non-finite loss
//! stops the run with the step named and the last good state kept.
//!
//! - [`config`]: [`TrainConfig`], wise-ft's defaults and checks.
//! - [`schedule`], [`optim`], [`loss`]: the pieces of the recipe.
//! - [`trainer`]: the loop ([`train`]); [`state`]: its checkpoint; [`features`]: the
//!   frozen-tower (linear classifier) mode; [`memory`]: whether a step fits in memory,
//!   checked before the first.
//! - [`flyp`]: contrastive fine-tuning of both towers (FLYP, `loss = contrastive`), the
//!   head rebuilt from the text tower; [`contrastive`]: CLIP's objective, shared with
//!   [`pretrain`] (contrastive training from scratch).

pub mod config;
pub mod contrastive;
pub mod features;
pub mod flyp;
pub mod fused_adamw;
pub mod loss;
pub mod memory;
pub mod optim;
pub mod pretrain;
pub mod schedule;
pub mod state;
pub mod trainer;

use std::path::PathBuf;

pub use config::{Loss, TrainConfig};
pub use trainer::{
    train, train_with_clip, Observer, Quiet, Run, StepInfo, TrainSummary, FINETUNED_FILE, RESULTS_FILE,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error(
        "loss is {value} at step {step} (epoch {epoch}, batch {batch}): stopping; the last good state is {}",
        last_good.display()
    )]
    NonFinite { step: usize, epoch: usize, batch: usize, value: f64, last_good: PathBuf },
    #[error(transparent)]
    Model(#[from] wise_clip::Error),
    #[error(transparent)]
    Data(#[from] wise_data::Error),
    #[error(transparent)]
    Eval(#[from] wise_eval::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
