//! The WiSE-FT α sweep in memory: every α evaluated on every dataset, no checkpoint written.
//!
//! wise-ft saves a checkpoint per α and evaluates it. The sweep needs only the
//! interpolated weights, so they are made in memory ([`interpolate_in_memory`]) and
//! dropped after evaluation: three models in memory at a time (zero-shot, fine-tuned and
//! the current mix), nothing on disk.

use wise_data::Dataset;
use wise_eval::{evaluate, EvalOptions, Evaluation};
use wise_zeroshot::ImageClassifier;

use crate::alphas::wise_ft_weights;
use crate::memory::interpolate_in_memory;
use crate::{Error, Result};

/// One α of a sweep and its evaluation on each dataset.
#[derive(Debug, Clone)]
pub struct SweepPoint {
    pub alpha: f64,
    pub evaluations: Vec<Evaluation>,
}

/// Evaluates θ(α) = (1−α)·θ_zeroshot + α·θ_finetuned for every α, calling `on_point` as
/// each is done (to print it or append it to a results file before the next starts).
/// Every α is checked before the first evaluation: outside `[0, 1]` only with `extrapolate`.
pub fn sweep(
    zeroshot: &ImageClassifier,
    finetuned: &ImageClassifier,
    alphas: &[f64],
    extrapolate: bool,
    datasets: &[(String, Dataset)],
    options: &EvalOptions,
    mut on_point: impl FnMut(&SweepPoint) -> Result<()>,
) -> Result<Vec<SweepPoint>> {
    let weights = alphas.iter().map(|&a| wise_ft_weights(a, extrapolate)).collect::<Result<Vec<_>>>()?;
    let mut points = Vec::with_capacity(alphas.len());
    for (&alpha, weights) in alphas.iter().zip(&weights) {
        let model = interpolate_in_memory(&[zeroshot, finetuned], weights)?;
        let evaluations = datasets
            .iter()
            .map(|(name, dataset)| {
                evaluate(&model, name, dataset, options, |_| {})
                    .map_err(|e| Error::Invalid(format!("α = {alpha}, on '{name}': {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let point = SweepPoint { alpha, evaluations };
        on_point(&point)?;
        points.push(point);
    }
    Ok(points)
}
