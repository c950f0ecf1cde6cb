//! Contrastive CLIP training from scratch (`wise pretrain`): CLIP's own objective, the
//! symmetric InfoNCE loss over a batch of (image, caption) pairs, with the learnable
//! temperature clamped at 100 as in CLIP and open_clip.
//!
//! wise has no access to web-scale pretrained weights offline, so this is how its demos
//! get a zero-shot model that is robust in the way the paper needs: pretrained on
//! captioned data (e.g. USPS and optdigits digits with template captions), evaluated
//! zero-shot on other digit datasets. The output is an HF model directory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use wise_clip::{ClipConfig, ClipModel, ClipTokenizer, ImagePreprocessor};
use wise_data::{Dataset, Loader};

pub use crate::contrastive::Captions;
use crate::contrastive::{batch_loss, caption, clamp_logit_scale};
use crate::memory::{self, StepMemory};
use crate::optim::{clip_scale, grad_norm, is_no_decay, AdamW, AdamWConfig};
use crate::schedule::cosine_lr;
use crate::trainer::{Observer, StepInfo};
use crate::{Error, Result};

/// A small CLIP's shape, in the few numbers that matter; the defaults make a model that
/// pretrains on a few thousand digits in minutes on a laptop CPU.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchSpec {
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub text_width: usize,
    pub text_layers: usize,
    pub text_heads: usize,
    pub embed_dim: usize,
    pub context_length: usize,
}

impl Default for ArchSpec {
    fn default() -> Self {
        Self {
            image_size: 28,
            patch_size: 7,
            width: 64,
            layers: 3,
            heads: 4,
            text_width: 64,
            text_layers: 2,
            text_heads: 4,
            embed_dim: 64,
            context_length: 20,
        }
    }
}

impl ArchSpec {
    /// The HF config of this shape: CLIP's vocabulary, QuickGELU, MLPs 4× wide.
    pub fn to_config(&self) -> ClipConfig {
        let mut c = ClipConfig::preset("ViT-B/32").expect("the ViT-B/32 preset exists");
        c.vision_config.image_size = self.image_size;
        c.vision_config.patch_size = self.patch_size;
        c.vision_config.hidden_size = self.width;
        c.vision_config.intermediate_size = 4 * self.width;
        c.vision_config.num_hidden_layers = self.layers;
        c.vision_config.num_attention_heads = self.heads;
        c.text_config.hidden_size = self.text_width;
        c.text_config.intermediate_size = 4 * self.text_width;
        c.text_config.num_hidden_layers = self.text_layers;
        c.text_config.num_attention_heads = self.text_heads;
        c.text_config.max_position_embeddings = self.context_length;
        c.projection_dim = self.embed_dim;
        c
    }
}

#[derive(Debug, Clone)]
pub struct PretrainConfig {
    pub architecture: ClipConfig,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub wd: f64,
    pub warmup: usize,
    pub seed: u64,
    pub augment: bool,
}

impl PretrainConfig {
    /// What pretraining needs of its options and architecture, checked before any data is
    /// read (a whole experiment checks it when it loads).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.batch_size < 2 {
            return Err("contrastive pretraining needs a batch size of at least 2".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) || self.epochs == 0 {
            return Err(format!(
                "pretraining needs lr > 0 and at least one epoch (lr {}, {} epochs)",
                self.lr, self.epochs
            ));
        }
        if !(self.wd.is_finite() && self.wd >= 0.0) {
            return Err(format!("weight decay {} is not a number ≥ 0", self.wd));
        }
        self.architecture.validate()
    }
}

#[derive(Debug, Clone)]
pub struct PretrainSummary {
    pub steps: usize,
    pub last_loss: f64,
    pub seconds: f64,
    pub out: PathBuf,
}

/// Trains a fresh CLIP of `config`'s architecture on `data` and its `captions` with CLIP's
/// contrastive loss, and writes it to `out_dir` as an HF model folder. The step's memory is
/// checked before the first ([`memory::check_before_training`]); an accelerator running
/// out of memory in a step is an error that says which batch to try.
pub fn pretrain(
    config: &PretrainConfig,
    data: &Dataset,
    captions: &Captions,
    out_dir: &Path,
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<PretrainSummary> {
    config.validate().map_err(Error::Config)?;
    if let Captions::PerSample(c) = captions {
        if c.len() != data.len() {
            return Err(Error::Config(format!("{} captions for {} images", c.len(), data.len())));
        }
    }
    let arch = &config.architecture;
    let model =
        ClipModel::fresh(arch, config.seed, device)?.with_compute_dtype(wise_clip::compute_dtype(device));
    let tokenizer = ClipTokenizer::openai(arch.text_config.max_position_embeddings)?;
    if tokenizer.vocab_size() != arch.text_config.vocab_size {
        return Err(Error::Config(format!(
            "text vocab_size {} does not match the CLIP tokenizer's {}",
            arch.text_config.vocab_size,
            tokenizer.vocab_size()
        )));
    }
    let preprocessor = ImagePreprocessor::new(arch.vision_config.image_size);
    // Full batches only: the contrastive loss of a tiny last batch is a poor signal.
    let loader = Loader::new(data, preprocessor.clone(), device)
        .with_batch_size(config.batch_size)
        .with_drop_last(true);
    let steps_per_epoch = loader.num_batches();
    if steps_per_epoch == 0 {
        return Err(Error::Config(format!(
            "{} images is less than one batch of {}",
            data.len(),
            config.batch_size
        )));
    }
    let total = config.epochs * steps_per_epoch;
    let parameters = model.params.values().map(|v| v.elem_count()).sum();
    let step_memory = StepMemory::image_classifier(
        device,
        &arch.vision_config,
        parameters,
        parameters,
        config.batch_size,
        1,
    )
    .with_text(&arch.text_config);
    if let Some(warning) = memory::check_before_training(&step_memory, config.batch_size, device)? {
        observer.warning(&warning);
    }
    let adamw = AdamWConfig { weight_decay: config.wd, ..AdamWConfig::default() };
    let mut optimizer = AdamW::new(adamw, &model.params)?;
    // No decay on gains, biases, embeddings and the temperature, as CLIP trains.
    optimizer.no_decay = model.params.keys().filter(|n| is_no_decay(n)).cloned().collect();
    let start = Instant::now();
    let mut step = 0;
    let mut last_loss = f64::NAN;
    for epoch in 0..config.epochs {
        observer.epoch_start(epoch, config.epochs, steps_per_epoch);
        let epoch_start = Instant::now();
        let mut seen = 0usize;
        let mut batches = loader.train_from(config.seed, epoch as u64, config.augment, 0)?;
        let mut b = 0;
        while let Some(batch) = batches.next() {
            let batch = batch?;
            let texts: Vec<String> = batch
                .indices
                .iter()
                .map(|&i| caption(captions, data, config.seed, epoch as u64, i))
                .collect();
            let out_of_memory = |e: Error| memory::explain_out_of_memory(e, config.batch_size, 1, true);
            let loss = batch_loss(&model, &tokenizer, &texts, &batch.pixels).map_err(out_of_memory)?;
            let value = loss.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                return Err(Error::NonFinite {
                    step,
                    epoch,
                    batch: b,
                    value,
                    last_good: out_dir.to_path_buf(),
                });
            }
            let grads = wise_clip::backward(&loss).map_err(|e| out_of_memory(e.into()))?;
            let grad_norm = grad_norm(&model.params, &grads)?;
            let lr = cosine_lr(config.lr, config.warmup, total, step);
            optimizer.step(&model.params, &grads, lr, clip_scale(grad_norm, 1.0))?;
            clamp_logit_scale(&model)?;
            step += 1;
            seen += batch.len();
            last_loss = value;
            observer.step(&StepInfo {
                epoch,
                step,
                total_steps: total,
                batch: b + 1,
                loss: value,
                lr,
                grad_norm,
                images_per_sec: seen as f64 / epoch_start.elapsed().as_secs_f64().max(1e-9),
                data_wait: batches.waited().as_secs_f64() / epoch_start.elapsed().as_secs_f64().max(1e-9),
            });
            b += 1;
        }
        observer.epoch_end(epoch, &[]);
    }
    // An HF model directory: weights + config, tokenizer, preprocessing.
    model.save_hf_dir(out_dir)?;
    tokenizer.save(out_dir)?;
    preprocessor.save(out_dir)?;
    Ok(PretrainSummary {
        steps: step,
        last_loss,
        seconds: start.elapsed().as_secs_f64(),
        out: out_dir.to_path_buf(),
    })
}

/// ImageFolders (captioned from `templates`: a named set or a file) or `path,caption`
/// manifests, combined into one dataset.
pub fn load_captioned(paths: &[PathBuf], templates: &str) -> Result<(Dataset, Captions)> {
    let is_csv = |p: &PathBuf| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let manifests = paths.iter().filter(|p| is_csv(p)).count();
    if manifests > 0 {
        if manifests != paths.len() {
            return Err(Error::Config("a mix of caption manifests and ImageFolders: give one kind".into()));
        }
        let mut parts = Vec::new();
        let mut captions = Vec::new();
        for p in paths {
            let (d, c) = Dataset::caption_manifest(p)?;
            parts.push(d);
            captions.extend(c);
        }
        return Ok((Dataset::concat(&parts), Captions::PerSample(captions)));
    }
    let parts = paths.iter().map(|p| Dataset::open(p, None)).collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((Dataset::concat(&parts), Captions::Templates(wise_zeroshot::Templates::resolve(templates)?.items)))
}
