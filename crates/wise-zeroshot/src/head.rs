//! The zero-shot head: one row per class, built from CLIP's text tower.
//!
//! Row c = normalize(mean over templates t of normalize(text_features(t(c)))) · exp(logit_scale),
//! bias 0, as wise-ft's `get_zeroshot_classifier`. Applied to *normalised* image features it
//! gives exactly CLIP's zero-shot logits, `exp(logit_scale) · cos(image, class)`.

use candle_core::{DType, Device, Tensor};
use wise_clip::model::l2_normalize;
use wise_clip::{ClipModel, ClipTokenizer, Result};

use crate::templates::Templates;

/// Prompts a text-tower batch when building a head (what `wise zeroshot` and FLYP's head
/// rebuilds use).
pub const PROMPT_BATCH: usize = 256;

/// `[C, D]` head weights for `class_names` (C rows, in order), on the CPU.
///
/// Every (class, template) prompt goes through the text tower in batches of `batch_size`,
/// shortest prompts first: the tower runs a batch only up to its longest prompt
/// ([`wise_clip::text::TextEncoder::forward`]), so batches of like lengths do the least
/// work, and few-template classes still fill whole batches (wise-ft batches per class).
/// `progress(done, total)` is called with the prompts encoded after each batch.
pub fn zeroshot_head(
    model: &ClipModel,
    tokenizer: &ClipTokenizer,
    class_names: &[String],
    templates: &Templates,
    batch_size: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Tensor> {
    let mut prompts = Vec::with_capacity(class_names.len() * templates.items.len());
    let mut class_of = Vec::with_capacity(prompts.capacity());
    for (class, name) in class_names.iter().enumerate() {
        for ids in tokenizer.encode_batch(&templates.fill(name))? {
            prompts.push(ids);
            class_of.push(class);
        }
    }
    let positions = model.text.pool_positions(&prompts);
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| positions[i]);

    // Per class, the sum of its prompts' normalised features (f64: up to 80 per class).
    let dim = model.config.projection_dim;
    let mut sums = vec![vec![0f64; dim]; class_names.len()];
    let mut counts = vec![0usize; class_names.len()];
    let mut done = 0;
    // Each weight packed once for all the prompts.
    wise_clip::frozen_weights(|| -> Result<()> {
        for batch in order.chunks(batch_size.max(1)) {
            let ids: Vec<Vec<u32>> = batch.iter().map(|&i| prompts[i].clone()).collect();
            let ids = model.ids_tensor(&ids)?;
            let features = wise_clip::inference_mode(|| model.text_features(&ids))?;
            let features = l2_normalize(&features)?.to_vec2::<f32>()?;
            for (&i, row) in batch.iter().zip(features) {
                let sum = &mut sums[class_of[i]];
                sum.iter_mut().zip(row).for_each(|(s, x)| *s += x as f64);
                counts[class_of[i]] += 1;
            }
            done += batch.len();
            progress(done, prompts.len());
        }
        Ok(())
    })?;
    let means: Vec<f32> = sums
        .iter()
        .zip(&counts)
        .flat_map(|(sum, &n)| sum.iter().map(move |s| (s / n as f64) as f32))
        .collect();
    let head = l2_normalize(&Tensor::from_vec(means, (class_names.len(), dim), &Device::Cpu)?)?;
    let scale = model.logit_scale.as_tensor().exp()?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    Ok(head.broadcast_mul(&scale)?.contiguous()?)
}
