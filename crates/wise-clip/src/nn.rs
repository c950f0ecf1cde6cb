//! Transformer building blocks, differentiable end to end.
//!
//! candle-nn's fused `LayerNorm` and `softmax_last_dim` have no backward pass: a model
//! built on them trains silently wrong (no gradient reaches anything below them). Here
//! both are written from differentiable tensor ops, and the parity tests check the
//! gradient of every parameter against PyTorch.
//!
//! On CPU in f32 the three run as fused kernels with hand-written backwards
//! ([`crate::fused`]), matrix products go through the system BLAS when there is one
//! ([`crate::matmul`]), and then each [`EncoderLayer`] runs as one op (`block.rs`, trained
//! through [`crate::backward`]); elsewhere the op-by-op versions below run.
//!
//! Weights are f32 master copies ([`Var`]); each layer casts them to the activations'
//! dtype, so the same model runs f32 on CPU and bf16 compute on CUDA.

use candle_core::{DType, Device, Module, Tensor, Var, D};

use crate::config::Activation;
use crate::fused::{self, HeadsLayout};
use crate::matmul::{linear, matmul, on_blas};
use crate::params::{Init, ParamBuilder};
use crate::profile;
use crate::Result;

/// HF's `initializer_range` for CLIP: the scale of patch, token and position embeddings.
/// The other fresh weights follow `CLIPPreTrainedModel._init_weights`, scaled by width and
/// depth (see [`Linear::new`]'s callers): with 0.02 everywhere, a narrow model starts
/// with residual branches so small that its features barely depend on the input.
pub(crate) const INIT_STD: f64 = 0.02;

/// `y = x Wᵀ + b`, weight `[out, in]` as in PyTorch.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Var,
    pub bias: Option<Var>,
}

impl Linear {
    /// `dims` = (in, out); `init_std` is used only when the model is freshly initialised.
    pub fn new(
        pb: &mut ParamBuilder,
        name: &str,
        dims: (usize, usize),
        bias: bool,
        init_std: f64,
    ) -> Result<Self> {
        let (in_dim, out_dim) = dims;
        let weight = pb.get(&format!("{name}.weight"), &[out_dim, in_dim], Init::Normal(init_std))?;
        let bias = match bias {
            true => Some(pb.get(&format!("{name}.bias"), &[out_dim], Init::Const(0.0))?),
            false => None,
        };
        Ok(Self { weight, bias })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // One gemm over all leading dims, reading the transposed weight in place; the bias
        // stays the f32 master copy (`linear` adds it in f32, and its gradient is f32).
        let w = self.weight.to_dtype(x.dtype())?;
        linear(x, &w, self.bias.as_ref().map(|b| b.as_tensor()))
    }
}

/// LayerNorm over the last dim, from differentiable ops; statistics in f32 whatever the
/// activations' dtype, as PyTorch autocast does.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Var,
    pub bias: Var,
    pub(crate) eps: f64,
}

impl LayerNorm {
    pub fn new(pb: &mut ParamBuilder, name: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: pb.get(&format!("{name}.weight"), &[dim], Init::Const(1.0))?,
            bias: pb.get(&format!("{name}.bias"), &[dim], Init::Const(0.0))?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if fused::applies_to_layer_norm(x) {
            return fused::layer_norm(x, &self.weight, &self.bias, self.eps);
        }
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let centered = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed.broadcast_mul(self.weight.as_tensor())?.broadcast_add(self.bias.as_tensor())?.to_dtype(dtype)
    }
}

/// Softmax over the last dim with a backward pass. Subtracting the (detached) row max
/// changes nothing mathematically and keeps `exp` finite.
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    if fused::applies(x) {
        return fused::softmax_last_dim(x);
    }
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

impl Activation {
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            act if fused::applies(x) => fused::activation(*act, x),
            Activation::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
        }
    }
}

/// Per-head `[B, H, T, D]` → `[B, T, H·D]`.
fn merge_heads(y: &Tensor) -> candle_core::Result<Tensor> {
    if fused::applies(y) {
        return fused::merge_heads(y, 1.0, HeadsLayout::TokensByWidth);
    }
    let (b, h, t, d) = y.dims4()?;
    y.transpose(1, 2)?.reshape((b, t, h * d))
}

/// HF's fresh-initialisation scales for a block of width `dim` in a `layers`-deep encoder:
/// `(dim^-½ · (2·layers)^-½, dim^-½)` for the input and output projections.
fn attention_init(dim: usize, layers: usize) -> (f64, f64) {
    let d = (dim as f64).powf(-0.5);
    (d * ((2 * layers.max(1)) as f64).powf(-0.5), d)
}

/// Multi-head self-attention with separate q/k/v projections (HF layout).
#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub(crate) heads: usize,
}

impl Attention {
    /// `layers`: the encoder's depth, which scales the fresh initialisation as HF's.
    pub fn new(pb: &mut ParamBuilder, name: &str, dim: usize, heads: usize, layers: usize) -> Result<Self> {
        let (in_std, out_std) = attention_init(dim, layers);
        let proj = |pb: &mut ParamBuilder, p: &str, std| {
            Linear::new(pb, &format!("{name}.{p}"), (dim, dim), true, std)
        };
        Ok(Self {
            q_proj: proj(pb, "q_proj", in_std)?,
            k_proj: proj(pb, "k_proj", in_std)?,
            v_proj: proj(pb, "v_proj", in_std)?,
            out_proj: proj(pb, "out_proj", out_std)?,
            heads,
        })
    }

    /// `x`: [B, T, C]; `mask`: additive [T, T] (the text tower's causal mask) or none.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let (_, _, c) = x.dims3()?;
        let scale = ((c / self.heads) as f64).powf(-0.5);
        let (q, kt, v) = profile::time("q/k/v projections", x, || {
            let q = self.split_heads(&self.q_proj.forward(x)?, scale, HeadsLayout::TokensByWidth)?;
            let kt = self.split_heads(&self.k_proj.forward(x)?, 1.0, HeadsLayout::WidthByTokens)?;
            Ok((q, kt, self.split_heads(&self.v_proj.forward(x)?, 1.0, HeadsLayout::TokensByWidth)?))
        })?;
        let y = profile::time("attention (scores, softmax, values)", &q, || {
            let scores = matmul(&q, &kt)?;
            let scores = match mask {
                Some(m) => scores.broadcast_add(&m.to_dtype(scores.dtype())?)?,
                None => scores,
            };
            let probs = softmax_last_dim(&scores)?;
            merge_heads(&matmul(&probs, &v)?)
        })?;
        profile::time("out projection", &y, || self.out_proj.forward(&y))
    }

    /// `[B, T, C]` → `scale · y` per head, `[B, H, T, D]`, or `[B, H, D, T]` (keys).
    fn split_heads(&self, y: &Tensor, scale: f64, layout: HeadsLayout) -> candle_core::Result<Tensor> {
        if fused::applies(y) {
            return fused::split_heads(y, self.heads, scale, layout);
        }
        let (b, t, c) = y.dims3()?;
        let y = y.reshape((b, t, self.heads, c / self.heads))?.transpose(1, 2)?;
        let y = if scale == 1.0 { y.contiguous()? } else { (y * scale)? };
        match layout {
            HeadsLayout::TokensByWidth => y.contiguous(),
            HeadsLayout::WidthByTokens => y.transpose(2, 3),
        }
    }

    /// Attention output for one query per sequence, `[B, C]`: `x` `[B, T, C]` gives the
    /// keys and values, `x_at` `[B, C]` the queries; `mask`: additive `[B, T]`, the mask's
    /// row for each query's position.
    fn forward_at(&self, x: &Tensor, x_at: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let head_dim = c / self.heads;
        let scale = (head_dim as f64).powf(-0.5);
        let q = (self.q_proj.forward(x_at)? * scale)?.reshape((b, self.heads, 1, head_dim))?;
        let kt = self.split_heads(&self.k_proj.forward(x)?, 1.0, HeadsLayout::WidthByTokens)?;
        let v = self.split_heads(&self.v_proj.forward(x)?, 1.0, HeadsLayout::TokensByWidth)?;
        let scores = matmul(&q, &kt)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(&m.to_dtype(scores.dtype())?.reshape((b, 1, 1, t))?)?,
            None => scores,
        };
        // [B, heads, 1, d] is [B, C] in memory: heads side by side, as the full forward's.
        let y = matmul(&softmax_last_dim(&scores)?, &v)?.reshape((b, c))?;
        self.out_proj.forward(&y)
    }
}

#[derive(Debug, Clone)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
    pub(crate) act: Activation,
}

/// One pre-norm transformer block: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Debug, Clone)]
pub struct EncoderLayer {
    pub self_attn: Attention,
    pub layer_norm1: LayerNorm,
    pub mlp: Mlp,
    pub layer_norm2: LayerNorm,
}

/// Width, depth and the rest of one tower's transformer.
#[derive(Debug, Clone, Copy)]
pub struct EncoderShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub act: Activation,
    pub eps: f64,
}

/// `From` a tower's config: both name the transformer's fields alike.
macro_rules! encoder_shape_from {
    ($config:ty) => {
        impl From<&$config> for EncoderShape {
            fn from(config: &$config) -> Self {
                Self {
                    hidden: config.hidden_size,
                    intermediate: config.intermediate_size,
                    layers: config.num_hidden_layers,
                    heads: config.num_attention_heads,
                    act: config.hidden_act,
                    eps: config.layer_norm_eps,
                }
            }
        }
    };
}
encoder_shape_from!(crate::config::VisionConfig);
encoder_shape_from!(crate::config::TextConfig);

impl EncoderLayer {
    pub fn new(pb: &mut ParamBuilder, name: &str, s: &EncoderShape) -> Result<Self> {
        let (in_std, _) = attention_init(s.hidden, s.layers);
        let fc_std = ((2 * s.hidden) as f64).powf(-0.5);
        Ok(Self {
            self_attn: Attention::new(pb, &format!("{name}.self_attn"), s.hidden, s.heads, s.layers)?,
            layer_norm1: LayerNorm::new(pb, &format!("{name}.layer_norm1"), s.hidden, s.eps)?,
            mlp: Mlp {
                fc1: Linear::new(pb, &format!("{name}.mlp.fc1"), (s.hidden, s.intermediate), true, fc_std)?,
                fc2: Linear::new(pb, &format!("{name}.mlp.fc2"), (s.intermediate, s.hidden), true, in_std)?,
                act: s.act,
            },
            layer_norm2: LayerNorm::new(pb, &format!("{name}.layer_norm2"), s.hidden, s.eps)?,
        })
    }

    /// One op of candle's graph on CPU in f32 with a BLAS (`block.rs`) and on CUDA
    /// (`device_block.rs`; train both through [`crate::backward`]); op by op elsewhere.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        if on_blas(&[x]) {
            if let Some(y) =
                profile::time("transformer block (fused)", x, || crate::block::forward(self, x, mask, None))?
            {
                return Ok(y);
            }
        } else if !x.device().is_cpu() && crate::device_block::applies(self, x) {
            return crate::device_block::forward(self, x, mask);
        }
        self.forward_op_by_op(x, mask)
    }

    /// The block's output at one position per sequence, `[B, C]`: `positions[b]` of
    /// sequence b (each checked to be `< T`); `mask`: the additive `[T, T]` mask, as for
    /// [`EncoderLayer::forward`]. Keys and values need every token; all else runs on B rows.
    pub fn forward_at(
        &self,
        x: &Tensor,
        positions: &[usize],
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        check_positions(positions, (b, t))?;
        if on_blas(&[x]) {
            if let Some(y) = crate::block::forward(self, x, mask, Some(positions))? {
                return Ok(y);
            }
        } else if !x.device().is_cpu() && crate::device_block::applies(self, x) {
            return crate::device_block::forward_at(self, x, positions, mask);
        }
        self.forward_at_op_by_op(x, positions, mask)
    }

    /// [`EncoderLayer::forward_at`] from differentiable tensor ops (any device and dtype).
    pub fn forward_at_op_by_op(
        &self,
        x: &Tensor,
        positions: &[usize],
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let rows = pooled_rows_tensor(positions, t, x.device())?;
        let mask = match mask {
            Some(m) => {
                let at = Tensor::from_vec(positions.iter().map(|&p| p as u32).collect(), b, x.device())?;
                Some(m.index_select(&at, 0)?)
            }
            None => None,
        };
        let at = |y: &Tensor| y.reshape((b * t, c))?.index_select(&rows, 0);
        let h = self.layer_norm1.forward(x)?;
        let x = (at(x)? + self.self_attn.forward_at(&h, &at(&h)?, mask.as_ref())?)?;
        let h = self
            .mlp
            .fc2
            .forward(&self.mlp.act.apply(&self.mlp.fc1.forward(&self.layer_norm2.forward(&x)?)?)?)?;
        &x + h
    }

    /// The block from differentiable tensor ops (any device and dtype).
    pub fn forward_op_by_op(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let h = profile::time("layer norm", x, || self.layer_norm1.forward(x))?;
        let a = self.self_attn.forward(&h, mask)?;
        let x = profile::time("residual add", &a, || x + &a)?;
        let h = profile::time("layer norm", &x, || self.layer_norm2.forward(&x))?;
        let h = profile::time("mlp fc1", &h, || self.mlp.fc1.forward(&h))?;
        let h = profile::time("activation", &h, || self.mlp.act.apply(&h))?;
        let h = profile::time("mlp fc2", &h, || self.mlp.fc2.forward(&h))?;
        profile::time("residual add", &h, || &x + &h)
    }
}

#[derive(Debug, Clone)]
pub struct Encoder {
    pub layers: Vec<EncoderLayer>,
}

impl Encoder {
    pub fn new(pb: &mut ParamBuilder, name: &str, s: &EncoderShape) -> Result<Self> {
        let layers = (0..s.layers)
            .map(|i| EncoderLayer::new(pb, &format!("{name}.layers.{i}"), s))
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        crate::on_compute_threads(x.device(), || {
            self.layers.iter().try_fold(x.clone(), |x, layer| layer.forward(&x, mask))
        })
    }

    /// The output at one position per sequence, `[B, C]` (`positions[b]` for sequence b):
    /// what pooling keeps of [`Encoder::forward`]'s `[B, T, C]`, computed without the last
    /// layer's work for the other positions (for ViT-B/32, ~7 % of the tower's products).
    pub fn forward_at(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        positions: &[usize],
    ) -> candle_core::Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        check_positions(positions, (b, t))?;
        let Some((last, first)) = self.layers.split_last() else {
            let rows = pooled_rows_tensor(positions, t, x.device())?;
            return x.reshape((b * t, c))?.index_select(&rows, 0);
        };
        crate::on_compute_threads(x.device(), || {
            let x = first.iter().try_fold(x.clone(), |x, layer| layer.forward(&x, mask))?;
            profile::time("last block (pooled position only)", &x, || last.forward_at(&x, positions, mask))
        })
    }
}

/// One pooling position per sequence, each inside it.
fn check_positions(positions: &[usize], (b, t): (usize, usize)) -> candle_core::Result<()> {
    if positions.len() != b || positions.iter().any(|&p| p >= t) {
        candle_core::bail!("pooling positions {positions:?} for {b} sequences of {t} tokens");
    }
    Ok(())
}

/// The rows of `positions[b]` of sequence b among `[B·T]` tokens.
pub(crate) fn pooled_rows(positions: &[usize], t: usize) -> Vec<usize> {
    positions.iter().enumerate().map(|(i, &p)| i * t + p).collect()
}

/// [`pooled_rows`] as an index tensor.
fn pooled_rows_tensor(positions: &[usize], t: usize, device: &Device) -> candle_core::Result<Tensor> {
    let rows: Vec<u32> = pooled_rows(positions, t).into_iter().map(|r| r as u32).collect();
    Tensor::from_vec(rows, positions.len(), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{assert_gradients_match, rel_diff};
    use candle_core::Device;

    /// `Encoder::forward_at` gives the full encoder's rows at the pooled positions, and the
    /// same gradient for every parameter and the input, with and without the causal mask.
    #[test]
    fn forward_at_equals_the_full_encoder_at_those_positions() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let (b, t, c) = (3, 6, 16);
        let causal: Vec<f32> = (0..t * t).map(|i| if i % t > i / t { f32::MIN } else { 0.0 }).collect();
        let causal = Tensor::from_vec(causal, (t, t), &dev)?;
        let positions = [t - 1, 0, 3];
        let rows = Tensor::new(&[(t - 1) as u32, t as u32, (2 * t + 3) as u32], &dev)?;
        for mask in [None, Some(&causal)] {
            let shape = EncoderShape {
                hidden: c,
                intermediate: 32,
                layers: 3,
                heads: 2,
                act: Activation::QuickGelu,
                eps: 1e-5,
            };
            let mut pb = ParamBuilder::fresh(11, &dev);
            let encoder = Encoder::new(&mut pb, "encoder", &shape)?;
            let params = pb.finish()?;
            let x = Var::randn(0f32, 1.0, (b, t, c), &dev)?;
            let probe = Tensor::randn(0f32, 1.0, (b, c), &dev)?;
            let pooled = encoder.forward_at(&x, mask, &positions)?;
            let full = encoder.forward(&x, mask)?.reshape((b * t, c))?.index_select(&rows, 0)?;
            let what = format!("mask {}", mask.is_some());
            assert!(rel_diff(&pooled, &full) < 1e-5, "{what}: off by {}", rel_diff(&pooled, &full));
            let g_pooled = crate::backward(&(pooled * &probe)?.sum_all()?)?;
            let g_full = crate::backward(&(full * &probe)?.sum_all()?)?;
            let vars = params.iter().map(|(n, v)| (n.as_str(), v)).chain([("x", &x)]);
            let checked = assert_gradients_match(&what, vars, &g_pooled, &g_full);
            assert_eq!(checked, 3 * 16 + 1, "every parameter and the input");
        }
        let encoder = Encoder { layers: vec![] };
        let x = Tensor::randn(0f32, 1.0, (b, t, c), &dev)?;
        let pooled = encoder.forward_at(&x, None, &positions)?;
        assert_eq!(
            pooled.to_vec2::<f32>()?,
            x.reshape((b * t, c))?.index_select(&rows, 0)?.to_vec2::<f32>()?
        );
        assert!(encoder.forward_at(&x, None, &[0, t, 1]).is_err(), "a position past the end is an error");
        Ok(())
    }

    #[test]
    fn softmax_matches_candle_and_has_gradient() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let x = Var::new(&[[1.0f32, 2.0, -3.0], [0.5, 0.5, 80.0]], &dev)?;
        let ours = softmax_last_dim(x.as_tensor())?;
        let fused = candle_nn::ops::softmax_last_dim(x.as_tensor())?;
        let diff = (&ours - &fused)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{diff}");
        // d/dx of sum(w * softmax(x)): softmax Jacobian applied to w, computed by hand.
        let w = Tensor::new(&[[1.0f32, 0.0, 2.0], [3.0, -1.0, 0.0]], &dev)?;
        let grads = (ours.clone() * &w)?.sum_all()?.backward()?;
        let g = grads.get(&x).expect("x has a gradient");
        let s = ours.to_vec2::<f32>()?;
        let wv = w.to_vec2::<f32>()?;
        for r in 0..2 {
            let dot: f32 = (0..3).map(|j| s[r][j] * wv[r][j]).sum();
            for j in 0..3 {
                let expect = s[r][j] * (wv[r][j] - dot);
                let got = g.to_vec2::<f32>()?[r][j];
                assert!((got - expect).abs() < 1e-6, "row {r} col {j}: {got} vs {expect}");
            }
        }
        Ok(())
    }
}
