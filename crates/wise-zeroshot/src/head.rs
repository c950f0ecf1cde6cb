//! The zero-shot head: one row per class, built from CLIP's text tower.
//!
//! Row c = normalize(mean over templates t of normalize(text_features(t(c)))) · exp(logit_scale),
//! bias 0, as wise-ft's `get_zeroshot_classifier`. Applied to *normalised* image features it
//! gives exactly CLIP's zero-shot logits, `exp(logit_scale) · cos(image, class)`.

use candle_core::{Device, Tensor};
use wise_clip::model::l2_normalize;
use wise_clip::{ClipModel, ClipTokenizer, Result};

use crate::templates::Templates;

/// `[C, D]` head weights for `class_names` (C rows, in order).
pub fn zeroshot_head(
    model: &ClipModel,
    tokenizer: &ClipTokenizer,
    class_names: &[String],
    templates: &Templates,
    batch_size: usize,
) -> Result<Tensor> {
    let mut rows = Vec::with_capacity(class_names.len());
    for name in class_names {
        let ids = tokenizer.encode_batch(&templates.fill(name))?;
        let mut feats = Vec::new();
        for chunk in ids.chunks(batch_size.max(1)) {
            let ids = model.ids_tensor(chunk)?;
            feats.push(wise_clip::inference_mode(|| model.text_features(&ids))?);
        }
        let per_template = l2_normalize(&Tensor::cat(&feats, 0)?)?;
        rows.push(l2_normalize(&per_template.mean_keepdim(0)?)?);
    }
    let head = Tensor::cat(&rows, 0)?;
    let scale = model.logit_scale.as_tensor().exp()?;
    Ok(head.broadcast_mul(&scale)?.detach().to_device(&Device::Cpu)?.contiguous()?)
}
