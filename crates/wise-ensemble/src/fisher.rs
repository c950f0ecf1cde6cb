//! The diagonal Fisher information of a classifier, for Fisher-weighted merging.
//!
//! Fisher merging (Matena & Raffel, 2021; wise-ft's `--fisher`) weighs each parameter of
//! each model by how much that model's predictions depend on it. The diagonal of the
//! Fisher is estimated as wise-ft's `compute_fisher` does:
//!
//! 1. for an image x, the model's logits; a label y **sampled from the model's own
//!    softmax** (not the true label: the Fisher is an expectation under the model);
//! 2. the gradient g of the cross-entropy of y, for that one example (batch size 1, so
//!    squaring gives per-example squared gradients, not the square of a batch mean);
//! 3. F = the mean of g² over the examples, per parameter.
//!
//! Images are decoded by `wise_data::Loader` in eval batches (decoding in parallel), then
//! fed one at a time. The examples are a seeded random subset of the dataset, with the eval
//! transform (wise-ft's default, `_TRAIN_PREPROCESSING = False`).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, IndexOp, Shape, Storage, Tensor, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use wise_clip::weights::save_safetensors_atomic;
use wise_data::{shuffled_order, Dataset, Loader, OnBadImage};
use wise_zeroshot::ImageClassifier;

use crate::{Error, Result};

/// How to estimate the Fisher.
#[derive(Debug, Clone)]
pub struct FisherOptions {
    /// Examples to use (a seeded random subset); `None`: the whole dataset.
    pub samples: Option<usize>,
    /// Seeds both the subset and the sampled labels.
    pub seed: u64,
    /// Images decoded per loader batch (the backward pass is still one image at a time).
    pub batch_size: usize,
    pub on_bad_image: OnBadImage,
}

impl Default for FisherOptions {
    fn default() -> Self {
        Self { samples: None, seed: 0, batch_size: 32, on_bad_image: OnBadImage::Error }
    }
}

/// A diagonal Fisher: one non-negative tensor per parameter, under the parameter's name.
#[derive(Debug, Clone)]
pub struct DiagonalFisher {
    pub tensors: BTreeMap<String, Tensor>,
    /// Examples averaged over.
    pub examples: usize,
    /// Parameters no example had a gradient for; they are left out (and a merge then
    /// interpolates them plainly), as wise-ft does.
    pub without_gradient: Vec<String>,
}

impl DiagonalFisher {
    /// Writes the Fisher as f32 safetensors (atomically), `wise.kind = "fisher"` and
    /// `extra` in the metadata.
    pub fn save(&self, path: &Path, extra: &BTreeMap<String, String>) -> Result<()> {
        let tensors: Vec<(String, Tensor)> =
            self.tensors.iter().map(|(n, t)| (n.clone(), t.clone())).collect();
        let mut meta: std::collections::HashMap<String, String> =
            extra.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        meta.insert("format".into(), "pt".into());
        meta.insert("wise.kind".into(), "fisher".into());
        meta.insert("wise.fisher_examples".into(), self.examples.to_string());
        Ok(save_safetensors_atomic(path, &tensors, Some(meta))?)
    }
}

/// Sums of squared per-example gradients, one example at a time.
#[derive(Default)]
pub struct FisherAccumulator {
    sums: BTreeMap<String, SquaredSum>,
    counts: BTreeMap<String, usize>,
    examples: usize,
}

impl FisherAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// One example (`pixels` `[1, 3, S, S]`): the label is `choose(softmax probabilities)`,
    /// and the squared gradient of its cross-entropy is added for every parameter.
    /// Returns the label.
    pub fn add(
        &mut self,
        classifier: &ImageClassifier,
        pixels: &Tensor,
        choose: impl FnOnce(&[f64]) -> usize,
    ) -> Result<usize> {
        if pixels.dim(0)? != 1 {
            return Err(Error::Invalid(format!(
                "Fisher examples go one at a time, got a batch of {}",
                pixels.dim(0)?
            )));
        }
        let logits = classifier.logits(pixels)?; // [1, C], f32
        let row = logits.i(0)?.to_vec1::<f32>()?;
        // A broken model's NaN logits would give NaN gradients, and a NaN Fisher file.
        wise_eval::metrics::finite_logits(&row)
            .map_err(|e| Error::Invalid(format!("example {}: {e}", self.examples + 1)))?;
        let probabilities = softmax(&row);
        let label = choose(&probabilities);
        if label >= probabilities.len() {
            return Err(Error::Invalid(format!("label {label} of {} classes", probabilities.len())));
        }
        // Cross-entropy of `label`: −log_softmax(logits)[label], from differentiable ops.
        let max = logits.max_keepdim(D::Minus1)?.detach();
        let shifted = logits.broadcast_sub(&max)?;
        let log_sum_exp = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        let loss = shifted.broadcast_sub(&log_sum_exp)?.i((0, label))?.neg()?;
        let grads = wise_clip::backward(&loss)?;
        for (name, var) in &classifier.params {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let g = g.to_dtype(DType::F32)?;
            match self.sums.get_mut(name) {
                Some(sum) => sum.add_squares(&g)?,
                None => {
                    self.sums.insert(name.clone(), SquaredSum::new(&g)?);
                }
            }
            *self.counts.entry(name.clone()).or_default() += 1;
        }
        self.examples += 1;
        Ok(label)
    }

    /// The means: each parameter's sum divided by the number of examples that gave it a
    /// gradient (wise-ft's `grad2_acc / grad_counter`).
    pub fn finish(self, classifier: &ImageClassifier) -> Result<DiagonalFisher> {
        let mut tensors = BTreeMap::new();
        for (name, sum) in self.sums {
            let n = self.counts.get(&name).copied().unwrap_or(1).max(1);
            tensors.insert(name, (sum.into_tensor()? / n as f64)?);
        }
        let without_gradient =
            classifier.params.keys().filter(|n| !tensors.contains_key(*n)).cloned().collect();
        Ok(DiagonalFisher { tensors, examples: self.examples, without_gradient })
    }
}

/// One parameter's running sum of squared gradients. On the CPU a buffer added to in place,
/// `sum += g²` in one pass over it (a ViT-B/32 has 88 M parameters: as tensor ops, `g.sqr()`
/// and `sum + g²` made two new 352 MB tensors an example, ~15 % of `wise fisher`'s time);
/// on other devices a tensor.
enum SquaredSum {
    Host(Vec<f32>, Shape),
    Device(Tensor),
}

impl SquaredSum {
    /// The first example's `g²`.
    fn new(g: &Tensor) -> Result<Self> {
        let g2 = g.sqr()?;
        Ok(if g.device().is_cpu() {
            Self::Host(g2.flatten_all()?.to_vec1::<f32>()?, g2.shape().clone())
        } else {
            Self::Device(g2)
        })
    }

    /// `sum += g²` (g f32, of the sum's shape).
    fn add_squares(&mut self, g: &Tensor) -> Result<()> {
        match self {
            Self::Device(sum) => *sum = (&*sum + g.sqr()?)?,
            Self::Host(sum, shape) => {
                if g.shape() != shape {
                    return Err(Error::Invalid(format!("gradient of shape {:?}, sum {shape:?}", g.shape())));
                }
                let g = g.contiguous()?;
                let (storage, layout) = g.storage_and_layout();
                let Storage::Cpu(cpu) = &*storage else {
                    return Err(Error::Invalid("a CPU sum got a gradient from another device".into()));
                };
                let g = wise_clip::fused::f32_slice(cpu, layout, "Fisher sum")?;
                sum.par_chunks_mut(1 << 16).zip(g.par_chunks(1 << 16)).for_each(|(sum, g)| {
                    for (s, g) in sum.iter_mut().zip(g) {
                        *s += g * g;
                    }
                });
            }
        }
        Ok(())
    }

    fn into_tensor(self) -> Result<Tensor> {
        Ok(match self {
            Self::Host(sum, shape) => Tensor::from_vec(sum, shape, &candle_core::Device::Cpu)?,
            Self::Device(sum) => sum,
        })
    }
}

/// Softmax in f64 (for sampling only; the loss has its own differentiable one).
fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let e: Vec<f64> = logits.iter().map(|&x| (x as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|x| x / sum).collect()
}

/// A class drawn from `probabilities` (`torch.multinomial(p, 1)`): the first class whose
/// cumulative probability exceeds a uniform draw.
pub fn sample_label(probabilities: &[f64], rng: &mut StdRng) -> usize {
    let total: f64 = probabilities.iter().sum();
    let u = rng.random::<f64>() * total;
    let mut cumulative = 0.0;
    for (i, p) in probabilities.iter().enumerate() {
        cumulative += p;
        if u < cumulative {
            return i;
        }
    }
    // Rounding can leave u just above the last cumulative sum: the last class with mass.
    probabilities.iter().rposition(|&p| p > 0.0).unwrap_or(0)
}

/// Estimates the diagonal Fisher of `classifier` on `dataset`; `progress(done, total)`
/// after each example.
pub fn diagonal_fisher(
    classifier: &ImageClassifier,
    dataset: &Dataset,
    options: &FisherOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<DiagonalFisher> {
    let available = dataset.samples.len();
    let n = options.samples.unwrap_or(available);
    if n == 0 || available == 0 {
        return Err(Error::Invalid("the Fisher needs at least one example".into()));
    }
    if n > available {
        return Err(Error::Invalid(format!("asked for {n} Fisher examples, the dataset has {available}")));
    }
    // A random subset, not the first n: datasets are ordered by class.
    let order = shuffled_order(available, options.seed, 0);
    let mut subset = dataset.clone();
    subset.samples = order[..n].iter().map(|&i| dataset.samples[i].clone()).collect();
    let loader = Loader::new(&subset, classifier.preprocessor(), classifier.device())
        .with_batch_size(options.batch_size.max(1))
        .with_on_bad_image(options.on_bad_image);
    // Labels get their own stream, apart from the subset's.
    let mut rng = StdRng::seed_from_u64(options.seed ^ 0x5eed_f15e_4000_0000);
    let mut acc = FisherAccumulator::new();
    // The weights do not change: each is packed once for all the examples (one image a
    // product: packing would cost as much as the product).
    wise_clip::frozen_weights(|| -> Result<()> {
        for batch in loader.eval()? {
            let batch = batch?;
            for i in 0..batch.len() {
                let pixels = batch.pixels.narrow(0, i, 1)?;
                acc.add(classifier, &pixels, |p| sample_label(p, &mut rng))?;
                progress(acc.examples, n);
            }
        }
        Ok(())
    })?;
    if acc.examples == 0 {
        return Err(Error::Invalid("no readable images for the Fisher".into()));
    }
    acc.finish(classifier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_labels_follow_the_probabilities() {
        let p = [0.1, 0.0, 0.6, 0.3];
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = [0usize; 4];
        for _ in 0..20_000 {
            counts[sample_label(&p, &mut rng)] += 1;
        }
        assert_eq!(counts[1], 0, "a class with probability 0 is never drawn");
        for (c, p) in counts.iter().zip(p) {
            let f = *c as f64 / 20_000.0;
            assert!((f - p).abs() < 0.015, "{counts:?}");
        }
        assert_eq!(sample_label(&[0.0, 1.0, 0.0], &mut rng), 1);
    }

    #[test]
    fn softmax_is_stable() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p[0] - 0.5).abs() < 1e-12 && p[2] < 1e-300);
    }
}
