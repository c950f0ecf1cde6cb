//! FLYP, "Finetune like you pretrain" (Goyal et al., CVPR 2023): fine-tuning with CLIP's
//! own contrastive loss instead of cross-entropy on a head (`wise train --loss
//! contrastive`, `[train] loss = "contrastive"`).
//!
//! Each training image gets a caption: one of the classifier's prompt templates, drawn by
//! a seeded generator per (seed, epoch, image) so a resumed run draws the same, filled
//! with the image's class name. Both towers and the temperature are trained on CLIP's
//! symmetric InfoNCE loss over the batch (the temperature clamped at 100, as CLIP). As in
//! FLYP's reference implementation, the only positive of an image is its own caption:
//! another image of the same class in the batch, and its identical caption, count as
//! negatives.
//!
//! The classifier is then rebuilt as `wise zeroshot` builds one: the fine-tuned image
//! tower plus a zero-shot head computed from the fine-tuned text tower with the same
//! templates ([`wise_zeroshot::zeroshot_head`]: row c = normalize(mean_t
//! normalize(text(t(c)))) · exp(logit_scale), bias 0). This happens after every epoch, so
//! `epoch_N.safetensors`, the per-epoch evaluations and `finetuned.safetensors` are
//! ordinary image classifiers that `wise eval` and `wise ensemble` use as after
//! cross-entropy fine-tuning; the fine-tuned text tower itself is kept only in the resume
//! state.
//!
//! The text tower comes from the CLIP the classifier was made from: its `source_model`
//! (a model folder, an open_clip file or a hub id), or another given instead (`--clip`),
//! whose image tower must have the classifier's shapes. The classifier's own image tower
//! (possibly already fine-tuned) replaces the CLIP's.
//!
//! With gradient accumulation each micro-batch is its own contrastive problem (its
//! negatives are its own images), so it is not the same as a larger batch; an epoch uses
//! full batches only (the images of a last short batch wait for a later epoch's order).

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};
use wise_clip::{ClipModel, ClipTokenizer, ModelSource};
use wise_data::Dataset;
use wise_zeroshot::{zeroshot_head, ImageClassifier, Templates, PROMPT_BATCH};

use crate::contrastive::{batch_loss, caption, clamp_logit_scale, Captions};
use crate::{Error, Result};

/// A classifier's image tower joined to a CLIP's text tower and temperature, ready for
/// contrastive fine-tuning.
pub struct Flyp {
    /// Both towers and the temperature. The image tower's parameters *are* the
    /// classifier's (shared `Var`s): a step on this model updates the classifier.
    pub clip: ClipModel,
    pub tokenizer: ClipTokenizer,
    /// The classifier's templates: captions while training, head rows after.
    pub templates: Templates,
    /// Where the text tower came from (path or hub id).
    pub source: String,
    /// The templates as the caption source shared with pretraining.
    captions: Captions,
}

fn is_vision(name: &str) -> bool {
    name.starts_with("vision_model.") || name.starts_with("visual_projection.")
}

impl Flyp {
    /// Loads the CLIP `clip` (a model folder, open_clip file or hub id), else the
    /// classifier's `source_model`, and puts the classifier's image tower in it.
    pub fn new(classifier: &ImageClassifier, clip: Option<&str>) -> Result<Self> {
        let (spec, origin) = match clip {
            Some(spec) => (spec, "given with --clip"),
            None => (classifier.meta.source_model.as_str(), "the classifier's source_model"),
        };
        let source = ModelSource::resolve(spec).map_err(|e| {
            Error::Config(format!(
                "the contrastive loss trains the text tower of the CLIP '{spec}' ({origin}), which \
                 cannot be found: {e}; give the CLIP the classifier was made from with --clip \
                 (a model folder, an open_clip .safetensors file or a hub id)"
            ))
        })?;
        Self::from_source(classifier, &source)
    }

    /// As [`Self::new`], from a resolved CLIP.
    pub fn from_source(classifier: &ImageClassifier, source: &ModelSource) -> Result<Self> {
        if classifier.meta.templates.is_empty() {
            return Err(Error::Config(
                "the classifier has no prompt templates in its metadata: the contrastive loss \
                 captions images with them (make the classifier with `wise zeroshot`)"
                    .into(),
            ));
        }
        let device = classifier.device();
        let cannot = |e: &dyn std::fmt::Display| {
            Error::Config(format!(
                "the CLIP '{}' cannot give the text tower for contrastive fine-tuning: {e}",
                source.spec
            ))
        };
        let clip = ClipModel::load(source, device).map_err(|e| cannot(&e))?;
        let tower: BTreeMap<String, Var> = classifier
            .params
            .iter()
            .filter(|(n, _)| is_vision(n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        let clip = clip
            .with_vision(classifier.encoder.clone(), &tower)
            .map_err(|e| {
                Error::Config(format!(
                    "the classifier's image tower does not match the CLIP '{}' whose text tower \
                     the contrastive loss trains (give the CLIP the classifier was made from with \
                     --clip): {e}",
                    source.spec
                ))
            })?
            .with_compute_dtype(classifier.compute_dtype);
        let tokenizer = source.tokenizer().map_err(|e| cannot(&e))?;
        let templates = Templates { name: "classifier".into(), items: classifier.meta.templates.clone() };
        let captions = Captions::Templates(templates.items.clone());
        Ok(Self { clip, tokenizer, templates, source: source.spec.clone(), captions })
    }

    /// Everything the contrastive loss trains: both towers and the temperature.
    pub fn params(&self) -> &BTreeMap<String, Var> {
        &self.clip.params
    }

    /// The trained parameters that are not the classifier's: the text tower and the
    /// temperature (what a resume state holds besides the classifier).
    pub fn text_params(&self) -> BTreeMap<String, Var> {
        self.clip.params.iter().filter(|(n, _)| !is_vision(n)).map(|(n, v)| (n.clone(), v.clone())).collect()
    }

    /// The captions of the samples `indices` of `data` in `epoch` (see the module docs).
    pub fn captions(&self, data: &Dataset, seed: u64, epoch: u64, indices: &[usize]) -> Vec<String> {
        indices.iter().map(|&i| caption(&self.captions, data, seed, epoch, i)).collect()
    }

    /// CLIP's symmetric contrastive loss of images `pixels` and their `captions`.
    pub fn loss(&self, captions: &[String], pixels: &Tensor) -> Result<Tensor> {
        batch_loss(&self.clip, &self.tokenizer, captions, pixels)
    }

    /// After each optimizer step: the temperature back into `[0, ln 100]`.
    pub fn clamp_logit_scale(&self) -> Result<()> {
        clamp_logit_scale(&self.clip)
    }

    /// The zero-shot head of the current text tower for `class_names`, `[C, D]` on the CPU;
    /// `progress(done, total)` as [`zeroshot_head`]'s.
    pub fn head(&self, class_names: &[String], progress: impl FnMut(usize, usize)) -> Result<Tensor> {
        Ok(zeroshot_head(&self.clip, &self.tokenizer, class_names, &self.templates, PROMPT_BATCH, progress)?)
    }

    /// Sets the classifier's head to [`Self::head`] of its classes, bias 0.
    pub fn rebuild_head(
        &self,
        classifier: &ImageClassifier,
        progress: impl FnMut(usize, usize),
    ) -> Result<()> {
        let head = self.head(&classifier.meta.class_names, progress)?.to_device(classifier.device())?;
        classifier.head.weight.set(&head)?;
        if let Some(bias) = &classifier.head.bias {
            bias.set(&Tensor::zeros(bias.dims(), DType::F32, classifier.device())?)?;
        }
        Ok(())
    }
}
