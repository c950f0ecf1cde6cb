//! The pieces of CLIP's contrastive objective shared by pretraining from scratch
//! ([`crate::pretrain`]) and contrastive fine-tuning ([`crate::flyp`]): which caption an
//! image gets, one batch's loss, and the temperature clamp.

use candle_core::Tensor;
use rand::Rng;
use wise_clip::{ClipModel, ClipTokenizer};
use wise_data::{sample_rng, Dataset};

use crate::Result;

/// CLIP clamps the learned temperature so logits never exceed 100 · cos: `logit_scale`
/// stays in `[0, ln 100]`.
pub const MAX_LOGIT_SCALE: f64 = 4.605_170_185_988_092; // ln(100)

/// Where captions come from.
#[derive(Debug, Clone)]
pub enum Captions {
    /// Each image's class name filled into a template drawn per (seed, epoch, image).
    Templates(Vec<String>),
    /// One caption per sample (a `path,caption` manifest).
    PerSample(Vec<String>),
}

/// The caption of sample `index` of `data` in `epoch`. A template is drawn from a random
/// stream of its own, a function of (seed, epoch, index) only, so a resumed run draws the
/// same captions and changing the augmentation does not change them.
pub fn caption(captions: &Captions, data: &Dataset, seed: u64, epoch: u64, index: usize) -> String {
    match captions {
        Captions::PerSample(all) => all[index].clone(),
        Captions::Templates(templates) => {
            let mut rng = sample_rng(seed ^ 0x6361_7074_696f_6e73, epoch, index);
            let t = &templates[rng.random_range(0..templates.len())];
            t.replacen("{}", &data.class_names[data.samples[index].label], 1)
        }
    }
}

/// CLIP's symmetric InfoNCE loss of a batch: `captions[i]` describes image `i` of
/// `pixels`, every other pair of the batch is a negative
/// ([`ClipModel::contrastive_loss`]).
pub fn batch_loss(
    model: &ClipModel,
    tokenizer: &ClipTokenizer,
    captions: &[String],
    pixels: &Tensor,
) -> Result<Tensor> {
    let ids = model.ids_tensor(&tokenizer.encode_batch(captions)?)?;
    Ok(model.contrastive_loss(&ids, pixels)?)
}

/// After an optimizer step: `logit_scale` back into `[0, ln 100]`, as CLIP and open_clip.
pub fn clamp_logit_scale(model: &ClipModel) -> Result<()> {
    let clamped = model.logit_scale.as_tensor().clamp(0.0, MAX_LOGIT_SCALE)?;
    model.logit_scale.set(&clamped)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn max_logit_scale_is_ln_100() {
        assert_eq!(super::MAX_LOGIT_SCALE, 100f64.ln());
    }
}
