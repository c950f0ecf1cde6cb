//! wise-ensemble: weight-space ensembles of wise classifiers — the "WiSE" of WiSE-FT.
//!
//! WiSE-FT's robust model is not a new training run but an average of two checkpoints:
//! θ(α) = (1−α)·θ_zero-shot + α·θ_fine-tuned, over every tensor, head included. This crate
//! makes such averages, and their relatives, from checkpoints on disk or in memory:
//!
//! - [`mod@merge`]: the streaming merge of any number of safetensors checkpoints into one or
//!   more weighted averages (several α in one pass), plain or Fisher-weighted. Inputs are
//!   memory-mapped and read one chunk at a time, so a ViT-L/14 merge runs in a few MB of
//!   resident memory; outputs appear only when complete. [`inputs`] checks the inputs agree
//!   (tensors, shapes, dtypes, classes and their order) and lists every difference.
//! - [`fisher`]: the diagonal Fisher information of a classifier, as wise-ft computes it
//!   (labels sampled from the model's own prediction, squared per-example gradients), for
//!   Fisher merging.
//! - [`memory`] and [`mod@sweep`]: the interpolation of in-memory classifiers, and the α sweep
//!   that evaluates every α without writing a checkpoint.
//! - [`soup`]: uniform and greedy model soups (Wortsman et al., 2022).
//! - [`mix`], [`writer`], [`hash`], [`alphas`]: the arithmetic, a safetensors writer that
//!   streams, input digests, and α parsing / file naming.
//!
//! The reference is wise-ft's `_merge` (and `compute_fisher`); `tests/formula.rs` checks the
//! merge against it, run by PyTorch on fixtures made by `scripts/make_fixtures.py`.
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use wise_ensemble::{alpha_file_name, merge, wise_ft_weights, MergeSpec, Output};
//! # fn main() -> wise_ensemble::Result<()> {
//! // WiSE-FT at α = 0.25 and 0.5, in one pass over the two checkpoints.
//! let outputs = [0.25, 0.5]
//!     .iter()
//!     .map(|&alpha| {
//!         Ok(Output {
//!             path: format!("wise/{}", alpha_file_name(alpha)).into(),
//!             weights: wise_ft_weights(alpha, false)?,
//!             metadata: BTreeMap::from([("wise.alpha".to_string(), alpha.to_string())]),
//!         })
//!     })
//!     .collect::<wise_ensemble::Result<Vec<_>>>()?;
//! let inputs = vec!["zeroshot.safetensors".into(), "finetuned.safetensors".into()];
//! let report = merge(&MergeSpec::new(inputs, "wise-ft", outputs), |_done, _total| {})?;
//! println!("inputs {:?} merged in {:.1} s", report.input_sha256, report.seconds);
//! # Ok(()) }
//! ```

pub mod alphas;
pub mod fisher;
pub mod hash;
pub mod inputs;
pub mod memory;
pub mod merge;
pub mod mix;
pub mod soup;
pub mod sweep;
pub mod writer;

use std::path::PathBuf;

/// The safetensors crate, whose `Dtype` and header types this API uses.
pub use safetensors;

pub use alphas::{alpha_file_name, check_weights, parse_alphas, wise_ft_weights};
pub use fisher::{diagonal_fisher, DiagonalFisher, FisherAccumulator, FisherOptions};
pub use memory::interpolate_in_memory;
pub use merge::{merge, MergeReport, MergeSpec, Output};
pub use soup::{greedy_soup, SoupPlan};
pub use sweep::{sweep, SweepPoint};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A problem with one file's content.
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// Inputs that cannot be merged, with every difference listed.
    #[error("the checkpoints cannot be merged:\n{report}")]
    Incompatible { report: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Model(#[from] wise_clip::Error),
    #[error(transparent)]
    Eval(#[from] wise_eval::Error),
    #[error(transparent)]
    Data(#[from] wise_data::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
