//! `ClipModel`: both towers and the learned temperature, under HF `CLIPModel` names.
//!
//! ```no_run
//! use wise_clip::{ClipModel, ModelSource, ClipTokenizer};
//! use candle_core::Device;
//! # fn main() -> wise_clip::Result<()> {
//! let source = ModelSource::resolve("openai/clip-vit-base-patch32")?;
//! let model = ClipModel::load(&source, &Device::Cpu)?;
//! let ids = source.tokenizer()?.encode_batch(&["a photo of a cat.".to_string()])?;
//! let text = model.text_features(&model.ids_tensor(&ids)?)?; // [1, 512]
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var, D};

use crate::config::ClipConfig;
use crate::hub::ModelSource;
use crate::params::{Init, ParamBuilder};
use crate::text::TextEncoder;
use crate::vision::ImageEncoder;
use crate::weights::{save_safetensors_atomic, WeightSource};
use crate::Result;

#[derive(Debug, Clone)]
pub struct ClipModel {
    pub config: ClipConfig,
    pub vision: ImageEncoder,
    pub text: TextEncoder,
    /// log of the inverse temperature; logits are `exp(logit_scale) · cos`.
    pub logit_scale: Var,
    /// Every parameter by HF name: what an optimiser updates and what is saved.
    pub params: BTreeMap<String, Var>,
    /// Activations' dtype: f32, or bf16 on accelerators (weights stay f32).
    pub compute_dtype: DType,
    device: Device,
}

impl ClipModel {
    fn build(config: &ClipConfig, mut pb: ParamBuilder) -> Result<Self> {
        let device = pb.device().clone();
        let vision = ImageEncoder::new(&mut pb, &config.vision_config, config.projection_dim)?;
        let text = TextEncoder::new(&mut pb, &config.text_config, config.projection_dim)?;
        let logit_scale = pb.get("logit_scale", &[], Init::Const(config.logit_scale_init_value))?;
        let params = pb.finish()?;
        Ok(Self {
            config: config.clone(),
            vision,
            text,
            logit_scale,
            params,
            compute_dtype: DType::F32,
            device,
        })
    }

    /// Every tensor from `weights`; anything missing, unexpected or mis-shaped is an error
    /// that lists them all.
    pub fn from_weights(config: &ClipConfig, weights: &dyn WeightSource, device: &Device) -> Result<Self> {
        Self::build(config, ParamBuilder::from_checkpoint(weights, device))
    }

    /// A randomly initialised model (HF's initialiser scales), reproducible from `seed`.
    pub fn fresh(config: &ClipConfig, seed: u64, device: &Device) -> Result<Self> {
        Self::build(config, ParamBuilder::fresh(seed, device))
    }

    /// From a resolved location: local HF dir, hub snapshot or open_clip file.
    pub fn load(source: &ModelSource, device: &Device) -> Result<Self> {
        let weights = source.weights()?;
        Self::from_weights(&source.config, weights.as_ref(), device)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Switch activations to `dtype` (e.g. bf16 on CUDA); parameters stay f32.
    pub fn with_compute_dtype(mut self, dtype: DType) -> Self {
        self.compute_dtype = dtype;
        self
    }

    /// `[B, 3, S, S]` f32 pixels → `[B, D]` f32 image features.
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = pixels.to_dtype(self.compute_dtype)?;
        Ok(self.vision.forward(&x)?.to_dtype(DType::F32)?)
    }

    /// `[B, T]` u32 token ids → `[B, D]` f32 text features.
    pub fn text_features(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.text.forward(ids, self.compute_dtype)?.to_dtype(DType::F32)?)
    }

    /// Token id rows (from the tokenizer) as the `[B, T]` u32 tensor the text tower takes.
    pub fn ids_tensor(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let t = ids.first().map_or(0, |r| r.len());
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        Ok(Tensor::from_vec(flat, (ids.len(), t), &self.device)?)
    }

    /// CLIP's symmetric contrastive loss over a batch of matching (text, image) pairs:
    /// the mean of the cross-entropies over rows and over columns of
    /// `exp(logit_scale) · cos(text_i, image_j)` (HF `CLIPModel(return_loss=True)`).
    pub fn contrastive_loss(&self, ids: &Tensor, pixels: &Tensor) -> Result<Tensor> {
        let img = l2_normalize(&self.image_features(pixels)?)?;
        let txt = l2_normalize(&self.text_features(ids)?)?;
        let logits = crate::matmul::matmul(&txt, &img.t()?)?.broadcast_mul(&self.logit_scale.exp()?)?;
        let targets = Tensor::arange(0u32, logits.dim(0)? as u32, &self.device)?;
        let rows = candle_nn::loss::cross_entropy(&logits, &targets)?;
        let cols = candle_nn::loss::cross_entropy(&logits.t()?, &targets)?;
        Ok(((rows + cols)? / 2.0)?)
    }

    /// This CLIP with `vision` as its image tower, *sharing* its parameters: `vision_params`
    /// are that tower's `Var`s by HF name (e.g. an image classifier's fine-tuned tower,
    /// which then trains through this model). Each must have the name and shape of one of
    /// this model's image-tower parameters and none may be missing; otherwise the error
    /// lists every difference.
    pub fn with_vision(
        mut self,
        vision: ImageEncoder,
        vision_params: &BTreeMap<String, Var>,
    ) -> Result<Self> {
        let is_vision = |n: &str| n.starts_with("vision_model.") || n.starts_with("visual_projection.");
        let mut problems = Vec::new();
        for (name, own) in self.params.iter().filter(|(n, _)| is_vision(n)) {
            match vision_params.get(name) {
                None => problems.push(format!("missing {name} {:?}", own.dims())),
                Some(v) if v.dims() != own.dims() => {
                    problems.push(format!("{name}: the CLIP has {:?}, the tower {:?}", own.dims(), v.dims()))
                }
                Some(_) => {}
            }
        }
        for (name, v) in vision_params {
            if !is_vision(name) || !self.params.contains_key(name) {
                problems.push(format!("unexpected {name} {:?}", v.dims()));
            }
        }
        if !problems.is_empty() {
            let more = problems.len().saturating_sub(20);
            return Err(crate::Error::Invalid(format!(
                "the image tower does not fit this CLIP ({} difference{}):\n  {}{}",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                problems[..problems.len() - more].join("\n  "),
                if more > 0 { format!("\n  ... and {more} more") } else { String::new() }
            )));
        }
        self.params.extend(vision_params.iter().map(|(n, v)| (n.clone(), v.clone())));
        self.config.vision_config = vision.config.clone();
        self.vision = vision;
        Ok(self)
    }

    /// Parameter counts per tower: (vision incl. projection, text incl. projection, other).
    pub fn parameter_counts(&self) -> (usize, usize, usize) {
        let mut counts = (0, 0, 0);
        for (name, v) in &self.params {
            let n = v.elem_count();
            if name.starts_with("vision_model.") || name.starts_with("visual_projection.") {
                counts.0 += n;
            } else if name.starts_with("text_model.") || name.starts_with("text_projection.") {
                counts.1 += n;
            } else {
                counts.2 += n;
            }
        }
        counts
    }

    /// Writes an HF model directory (`config.json` + `model.safetensors`) that
    /// transformers' `CLIPModel.from_pretrained` loads.
    pub fn save_hf_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
        let tensors: Vec<(String, Tensor)> =
            self.params.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        save_safetensors_atomic(&dir.join("model.safetensors"), &tensors, Some(meta))?;
        let config = serde_json::to_string_pretty(&self.config.to_hf_json())
            .map_err(|e| crate::Error::Invalid(e.to_string()))?;
        let path = dir.join("config.json");
        std::fs::write(&path, config).map_err(|e| crate::Error::io(&path, e))
    }
}

/// `x / ‖x‖` along the last dim (differentiable).
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)
}
