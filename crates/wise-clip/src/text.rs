//! The text tower: causal transformer (`text_model.*`) plus `text_projection`.
//!
//! ```text
//! ids [B,T] -> token + position embeddings -> encoder (causal mask)
//!   -> final_layer_norm -> hidden at the end-of-text token -> text_projection [B, D]
//! ```

use candle_core::{DType, Device, Module, Tensor, Var};

use crate::config::TextConfig;
use crate::nn::{Encoder, EncoderShape, LayerNorm, Linear, INIT_STD};
use crate::params::{Init, ParamBuilder};
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct TextEncoder {
    pub config: TextConfig,
    pub token_embedding: Var,
    pub position_embedding: Var,
    pub encoder: Encoder,
    pub final_layer_norm: LayerNorm,
    pub text_projection: Linear,
}

impl TextEncoder {
    pub fn new(pb: &mut ParamBuilder, config: &TextConfig, projection_dim: usize) -> Result<Self> {
        let c = config.hidden_size;
        let shape = EncoderShape::from(config);
        Ok(Self {
            config: config.clone(),
            token_embedding: pb.get(
                "text_model.embeddings.token_embedding.weight",
                &[config.vocab_size, c],
                Init::Normal(INIT_STD),
            )?,
            position_embedding: pb.get(
                "text_model.embeddings.position_embedding.weight",
                &[config.max_position_embeddings, c],
                Init::Normal(INIT_STD),
            )?,
            encoder: Encoder::new(pb, "text_model.encoder", &shape)?,
            final_layer_norm: LayerNorm::new(pb, "text_model.final_layer_norm", c, config.layer_norm_eps)?,
            text_projection: Linear::new(
                pb,
                "text_projection",
                (c, projection_dim),
                false,
                (c as f64).powf(-0.5),
            )?,
        })
    }

    /// The position each sequence is pooled at, as HF: with the legacy `eos_token_id == 2`
    /// the argmax of the ids (end-of-text has the largest id), else the first end-of-text
    /// token (position 0 when there is none, as HF's argmax of an all-false mask).
    pub fn pool_positions(&self, ids: &[Vec<u32>]) -> Vec<usize> {
        let eos = self.config.eos_token_id;
        ids.iter()
            .map(|row| {
                if eos == 2 {
                    // First maximum, like torch.argmax.
                    let max = row.iter().copied().max().unwrap_or(0);
                    row.iter().position(|&t| t == max).unwrap_or(0)
                } else {
                    row.iter().position(|&t| t == eos).unwrap_or(0)
                }
            })
            .collect()
    }

    /// Checks token ids `[B, T]` against the model (length, vocabulary) and returns them
    /// as rows.
    fn checked_ids(&self, ids: &Tensor) -> Result<Vec<Vec<u32>>> {
        let t = ids.dim(1)?;
        if t > self.config.max_position_embeddings {
            return Err(Error::Invalid(format!(
                "{t} tokens per text, the model takes at most {}",
                self.config.max_position_embeddings
            )));
        }
        let rows = ids.to_vec2::<u32>()?;
        let vocab = self.config.vocab_size as u32;
        if let Some(bad) = rows.iter().flatten().find(|&&i| i >= vocab) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the model's vocabulary ({vocab} ids): wrong tokenizer?"
            )));
        }
        Ok(rows)
    }

    /// The encoder's input and the causal mask, `[B, T, C]` and `[T, T]`, of checked ids.
    fn encoder_input(&self, ids: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let (b, t) = ids.dims2()?;
        let c = self.config.hidden_size;
        let tokens =
            self.token_embedding.to_dtype(dtype)?.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, c))?;
        let positions = self.position_embedding.to_dtype(dtype)?.narrow(0, 0, t)?;
        Ok((tokens.broadcast_add(&positions.unsqueeze(0)?)?, causal_mask(t, ids.device())?))
    }

    /// Encoder output for every position, `[B, T, C]` (HF `last_hidden_state`).
    pub fn last_hidden_state(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        self.checked_ids(ids)?;
        let (x, mask) = self.encoder_input(ids, dtype)?;
        let x = self.encoder.forward(&x, Some(&mask))?;
        Ok(self.final_layer_norm.forward(&x)?)
    }

    /// Projected text features `[B, D]`, unnormalised (HF `get_text_features`): the
    /// output at each text's pooling position. `ids`: u32 `[B, T]`; `dtype`: compute dtype.
    ///
    /// Only the positions up to the batch's last pooling position are computed. Attention
    /// is causal, so no token sees a later one: what follows the last end-of-text token
    /// (padding, mostly: prompts are ~10–20 of the 77 tokens they are padded to) changes
    /// nothing that is pooled, and its gradients are zero. Dropping it is exact and saves
    /// most of the work (open_clip and wise-ft run all 77). The last layer computes the pooled
    /// positions only.
    pub fn forward(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        let positions = self.pool_positions(&self.checked_ids(ids)?);
        let t = ids.dim(1)?;
        let used = positions.iter().max().map_or(t, |&p| p + 1);
        let ids = if used < t { ids.narrow(1, 0, used)? } else { ids.clone() };
        let (x, mask) = self.encoder_input(&ids, dtype)?;
        let pooled = self.encoder.forward_at(&x, Some(&mask), &positions)?;
        Ok(self.text_projection.forward(&self.final_layer_norm.forward(&pooled)?)?)
    }
}

/// Additive mask: 0 on and below the diagonal, a large negative above (HF uses the dtype's
/// minimum rather than -inf, which keeps fully masked arithmetic finite).
fn causal_mask(t: usize, device: &Device) -> candle_core::Result<Tensor> {
    let mask: Vec<f32> =
        (0..t).flat_map(|i| (0..t).map(move |j| if j > i { f32::MIN } else { 0.0 })).collect();
    Tensor::from_vec(mask, (t, t), device)
}
