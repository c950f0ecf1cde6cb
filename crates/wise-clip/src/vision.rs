//! The image tower: ViT (`vision_model.*`) plus `visual_projection`.
//!
//! ```text
//! pixels [B,3,H,W] -> patches [B,N,3·p·p] -> x Wᵀ (the conv as one matmul)
//!   -> [class; patches] + positions -> pre_layrnorm -> encoder -> token 0
//!   -> post_layernorm -> visual_projection -> image features [B, D]
//! ```

use candle_core::{Module, Tensor, Var};

use crate::config::VisionConfig;
use crate::nn::{Encoder, EncoderShape, LayerNorm, Linear, INIT_STD};
use crate::params::{Init, ParamBuilder};
use crate::profile;
use crate::Result;

#[derive(Debug, Clone)]
pub struct ImageEncoder {
    pub config: VisionConfig,
    /// Conv weight `[C, 3, p, p]`, kept in HF's shape; used as a `[C, 3·p·p]` matrix.
    pub patch_embedding: Var,
    pub class_embedding: Var,
    pub position_embedding: Var,
    pub pre_layrnorm: LayerNorm,
    pub encoder: Encoder,
    pub post_layernorm: LayerNorm,
    pub visual_projection: Linear,
}

impl ImageEncoder {
    pub fn new(pb: &mut ParamBuilder, config: &VisionConfig, projection_dim: usize) -> Result<Self> {
        let c = config.hidden_size;
        let p = config.patch_size;
        let shape = EncoderShape::from(config);
        let emb = "vision_model.embeddings";
        Ok(Self {
            config: config.clone(),
            patch_embedding: pb.get(
                &format!("{emb}.patch_embedding.weight"),
                &[c, config.num_channels, p, p],
                Init::Normal(INIT_STD),
            )?,
            class_embedding: pb.get(
                &format!("{emb}.class_embedding"),
                &[c],
                Init::Normal((c as f64).powf(-0.5)),
            )?,
            position_embedding: pb.get(
                &format!("{emb}.position_embedding.weight"),
                &[config.num_positions(), c],
                Init::Normal(INIT_STD),
            )?,
            pre_layrnorm: LayerNorm::new(pb, "vision_model.pre_layrnorm", c, config.layer_norm_eps)?,
            encoder: Encoder::new(pb, "vision_model.encoder", &shape)?,
            post_layernorm: LayerNorm::new(pb, "vision_model.post_layernorm", c, config.layer_norm_eps)?,
            visual_projection: Linear::new(
                pb,
                "visual_projection",
                (c, projection_dim),
                false,
                (c as f64).powf(-0.5),
            )?,
        })
    }

    /// Token embeddings before the encoder: `[B, 1 + N, C]`.
    ///
    /// The class token's row gets a zero "patch", so one product gives every token's patch
    /// term, and the class and position embeddings are one add of a `[(1 + N)·C]` row to
    /// each image's `[(1 + N)·C]` tokens (its gradient the column sums over the batch). The
    /// usual class-token concatenation and broadcast position add cost, on CUDA, strided
    /// kernels over all tokens forwards and backwards.
    fn embed(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let (b, ch, h, w) = pixels.dims4()?;
        let (s, channels) = (self.config.image_size, self.config.num_channels);
        // As transformers: any other size would be cut to the grid's top-left corner, silently.
        if (ch, h, w) != (channels, s, s) {
            candle_core::bail!(
                "images of {ch} × {h} × {w} values, but the model takes {channels} × {s} × {s}"
            );
        }
        let (p, g, c) = (self.config.patch_size, self.config.grid_size(), self.config.hidden_size);
        let (k, t) = (ch * p * p, g * g + 1);
        // A stride-p conv drops trailing pixels that do not fill a patch; so do we.
        let x = pixels.narrow(2, 0, g * p)?.narrow(3, 0, g * p)?;
        let patches = x.reshape((b, ch, g, p, g, p))?.permute((0, 2, 4, 1, 3, 5))?.reshape((b, g * g, k))?;
        let patches =
            Tensor::cat(&[&Tensor::zeros((b, 1, k), pixels.dtype(), pixels.device())?, &patches], 1)?;
        // The conv kernel `[C, 3, p, p]` as it is: `linear` reads it as `[C, 3·p·p]` and
        // hands its gradient back in that shape (as a reshaped, transposed view it cost two
        // more passes over the gradient, one of them strided).
        let w = self.patch_embedding.to_dtype(pixels.dtype())?;
        let tokens = crate::matmul::linear(&patches.reshape((b * t, k))?, &w, None)?.reshape((b, t * c))?;
        let positions = self.position_embedding.as_tensor();
        let first = (positions.narrow(0, 0, 1)? + self.class_embedding.unsqueeze(0)?)?;
        let embeddings = Tensor::cat(&[&first, &positions.narrow(0, 1, g * g)?], 0)?.flatten_all()?;
        crate::fused::bias_add(&tokens, &embeddings)?.reshape((b, t, c))
    }

    /// The encoder's input, `[B, 1 + N, C]`.
    fn encoder_input(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        profile::time("embeddings", pixels, || self.pre_layrnorm.forward(&self.embed(pixels)?))
    }

    /// Encoder output for every token, `[B, 1 + N, C]` (HF `last_hidden_state`).
    pub fn last_hidden_state(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        self.encoder.forward(&self.encoder_input(pixels)?, None)
    }

    /// Projected image features `[B, D]`, unnormalised (HF `get_image_features`): the
    /// class token's output, so the last layer computes that token only.
    pub fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.encoder_input(pixels)?;
        let class = self.encoder.forward_at(&x, None, &vec![0; x.dim(0)?])?;
        profile::time("pooling and projection", &class, || {
            self.visual_projection.forward(&self.post_layernorm.forward(&class)?)
        })
    }
}
