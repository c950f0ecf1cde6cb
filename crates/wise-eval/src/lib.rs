//! wise-eval: how good a classifier is, on the reference test set and on shifted ones.
//!
//! WiSE-FT is judged on two axes at once: accuracy on the distribution you fine-tuned for,
//! and accuracy under distribution shift (same classes, different images). [`evaluate`]
//! measures one classifier on one dataset (top-1, top-5, per class); [`ResultsFile`]
//! appends one JSON line per evaluated model in wise-ft's `"Dataset:top1"` key style, so
//! α sweeps and plots read one file.
//!
//! A dataset may hold a subset of the classifier's classes (ImageNet-R has 200 of
//! ImageNet's 1000): its classes are matched to the classifier's **by readable name**, and
//! the logits of classes it does not have are masked out before ranking, as wise-ft does.

pub mod metrics;
pub mod results;

use std::time::Instant;

use wise_data::{Dataset, Loader, OnBadImage};
use wise_zeroshot::ImageClassifier;

pub use metrics::{ClassMap, Metrics};
pub use results::ResultsFile;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] wise_clip::Error),
    #[error(transparent)]
    Data(#[from] wise_data::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// How to run an evaluation.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub batch_size: usize,
    pub on_bad_image: OnBadImage,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self { batch_size: 64, on_bad_image: OnBadImage::Error }
    }
}

/// One dataset's evaluation.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub dataset: String,
    pub metrics: Metrics,
    pub seconds: f64,
    /// Images left out under `OnBadImage::Skip`.
    pub skipped: usize,
}

/// Evaluates `classifier` on `dataset`, calling `progress(images_done)` after each batch.
pub fn evaluate(
    classifier: &ImageClassifier,
    name: &str,
    dataset: &Dataset,
    options: &EvalOptions,
    progress: impl FnMut(usize),
) -> Result<Evaluation> {
    let mut all = evaluate_many(&[classifier], name, dataset, options, progress)?;
    Ok(all.remove(0))
}

/// Evaluates several classifiers with the same preprocessing (e.g. the models of an α
/// sweep) on `dataset`, decoding each image once for all of them.
pub fn evaluate_many(
    classifiers: &[&ImageClassifier],
    name: &str,
    dataset: &Dataset,
    options: &EvalOptions,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Evaluation>> {
    let Some(first) = classifiers.first() else { return Ok(Vec::new()) };
    if let Some(other) = classifiers.iter().find(|c| c.meta.preprocessing != first.meta.preprocessing) {
        return Err(Error::Invalid(format!(
            "classifiers from {} and {} preprocess images differently: evaluate them separately",
            first.meta.source_model, other.meta.source_model
        )));
    }
    let start = Instant::now();
    let mut metrics = classifiers
        .iter()
        .map(|c| {
            ClassMap::new(&c.meta.class_names, &dataset.class_names)
                .map(|map| Metrics::new(&map))
                .map_err(|e| Error::Invalid(format!("dataset '{name}': {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let loader = Loader::new(dataset, first.preprocessor(), first.device())
        .with_batch_size(options.batch_size)
        .with_on_bad_image(options.on_bad_image);
    let mut batches = loader.eval()?;
    let mut done = 0;
    // With small batches, each weight packed once for the whole dataset (memory: a copy of
    // every model's weights until the end, bf16's or f32's).
    wise_clip::frozen_weights(|| -> Result<()> {
        for batch in batches.by_ref() {
            let batch = batch?;
            for (i, (classifier, m)) in classifiers.iter().zip(metrics.iter_mut()).enumerate() {
                let logits = wise_clip::inference_mode(|| classifier.logits(&batch.pixels))?;
                m.update(&logits, &batch.labels).map_err(|e| match classifiers.len() {
                    1 => e,
                    n => Error::Invalid(format!("model {} of {n}: {e}", i + 1)),
                })?;
            }
            done += batch.len();
            progress(done);
        }
        Ok(())
    })?;
    // The shared decode time is split evenly between the models.
    let seconds = start.elapsed().as_secs_f64() / classifiers.len() as f64;
    let skipped = batches.skipped().count;
    Ok(metrics
        .into_iter()
        .map(|metrics| Evaluation { dataset: name.to_string(), metrics, seconds, skipped })
        .collect())
}
