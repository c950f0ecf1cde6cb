//! One pre-norm transformer block as a single autograd node on an accelerator, from
//! candle's matrix products (cuBLAS on CUDA) and the fused kernels, backward written out.
//!
//! Op by op, a block is ~25 nodes of candle's graph, and its backward gives every node a
//! zero-filled gradient buffer and an add: on a GPU two more memory-bound passes over
//! each of the block's activations, the largest ones `[B·T, 4C]`. Here the forward runs on
//! detached tensors (no graph), keeps what the backward needs, and enters the graph as one
//! node (its last op, the residual add with fc2's bias) whose backward is the products and
//! kernels below;
//! the parameters' gradients go to [`crate::backward`] as the CPU block's do (`block.rs`).
//!
//! Gradients, with `n = B·T` rows, `Y = X·Wᵀ + b` for every projection (`dW = dYᵀ·X`,
//! `db = Σ_rows dY`, `dX = dY·W`), `S = Q·Kᵀ` (Q scaled by `D^-½`), `P = softmax(S)`,
//! `O = P·V`: `dP = dO·Vᵀ`, `dV = Pᵀ·dO`, `dS = P·(dP − Σ dP·P)`, `dQ = dS·K`, `dK = dSᵀ·Q`.
//!
//! Where the fused kernels run (CUDA; the CPU, which has its own block, in tests), for
//! blocks with biases (CLIP's); `nn::EncoderLayer` runs the others op by op.

use std::sync::Mutex;

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Device, Layout, Shape, Storage, Tensor};

use crate::config::Activation;
use crate::fused::{self, HeadsLayout, ResidualBiasAdd};
use crate::matmul::matmul;
use crate::nn::{EncoderLayer, LayerNorm, Linear};
use crate::profile;

/// Whether `layer` on `x` can run as this op: fused kernels for `x`, biases.
pub(crate) fn applies(layer: &EncoderLayer, x: &Tensor) -> bool {
    let heads = layer.self_attn.heads;
    fused::applies(x)
        && projections(layer).iter().all(|l| l.bias.is_some())
        && heads > 0
        && x.dims().last().is_some_and(|c| c % heads == 0)
}

/// q, k, v, out, fc1, fc2.
fn projections(layer: &EncoderLayer) -> [&Linear; 6] {
    let attn = &layer.self_attn;
    [&attn.q_proj, &attn.k_proj, &attn.v_proj, &attn.out_proj, &layer.mlp.fc1, &layer.mlp.fc2]
}

/// Zero token slots to add after the `t` tokens of each head, so that the attention's
/// products see rows of a multiple of 8 values (16 bytes in bf16): cuBLAS runs tensor-core
/// kernels on aligned rows only, and a ViT's 50 or 197 tokens (or the text's 77) are not.
/// The padded keys' probabilities are 0 (softmax over the first `t` only) and the padded
/// queries' outputs are dropped by the merge, so the result is the same.
/// `WISE_ATTENTION_PADDING=off` turns it off (to measure it).
fn attention_padding(t: usize) -> usize {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on =
        *ON.get_or_init(|| std::env::var("WISE_ATTENTION_PADDING").map_or(true, |v| v != "off" && v != "0"));
    if on {
        t.next_multiple_of(8) - t
    } else {
        0
    }
}

/// A projection's weight in the compute dtype and its f32 bias, detached.
struct Projection {
    w: Tensor,
    b: Tensor,
}

impl Projection {
    /// `ls`' weights stacked (one product for all: q, k and v), biases concatenated.
    fn new(ls: &[&Linear], dtype: DType) -> candle_core::Result<Self> {
        let mut ws = Vec::with_capacity(ls.len());
        let mut bs = Vec::with_capacity(ls.len());
        for l in ls {
            let b =
                l.bias.as_ref().ok_or_else(|| candle_core::Error::msg("block: projection without a bias"))?;
            ws.push(l.weight.as_tensor().detach().to_dtype(dtype)?);
            bs.push(b.as_tensor().detach());
        }
        Ok(Self { w: Tensor::cat(&ws, 0)?, b: Tensor::cat(&bs, 0)? })
    }

    /// `x·Wᵀ` for `x` `[n, in]`: the bias goes into the op after it (split, residual add,
    /// activation), saving a pass over the output.
    fn product(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        matmul(x, &self.w.t()?)
    }

    /// `dX` and the f32 `(dW, db)` from `x` and `dY`, both `[n, ·]`.
    fn backward(&self, x: &Tensor, dy: &Tensor) -> candle_core::Result<(Tensor, [Tensor; 2])> {
        let dw = matmul(&dy.t()?, x)?.to_dtype(DType::F32)?;
        Ok((matmul(dy, &self.w)?, [dw, fused::col_sums(dy)?]))
    }
}

/// What the attention's backward needs besides q, k and v.
enum Attention {
    /// The probabilities `[B, H, slots, slots]` (cuBLAS products around a softmax).
    Probs(Tensor),
    /// Flash attention's output per head `[B, H, slots, D]`, its lse, and the padded mask.
    Flash { o: Tensor, lse: Tensor, mask: Option<Tensor> },
}

/// What the backward needs: the block's input, activations (all `[n, ·]` but the
/// per-head q, k, v and the attention's) and its weights as the forward used them.
struct Saved {
    x: Tensor,
    ln1: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attention: Attention,
    ctx: Tensor,
    x_mid: Tensor,
    ln2: Tensor,
    /// fc1's product (without its bias) and `act(h + b₁)`.
    h: Tensor,
    act: Tensor,
    /// q, k and v as one, out, fc1, fc2.
    proj: [Projection; 4],
    ln: [(Tensor, f64); 2],
}

/// `layer(x)` for `x` `[B, T, C]`, when [`applies`].
pub(crate) fn forward(
    layer: &EncoderLayer,
    x: &Tensor,
    mask: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    enter(x, prepare(layer, x, mask, None, None)?)
}

/// The block's output at `positions[b]` of each sequence b (checked by the caller), `[B, C]`
/// (`Encoder::forward_at`'s last block), when [`applies`]: keys and values on every token,
/// the rest on B rows.
pub(crate) fn forward_at(
    layer: &EncoderLayer,
    x: &Tensor,
    positions: &[usize],
    mask: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    enter(x, prepare(layer, x, mask, Some(positions), None)?)
}

/// The pooled block's rows: one query per sequence.
struct Pooled {
    /// The pooled positions (u32 `[B]`).
    positions: Tensor,
    /// The pooled tokens among the `B·T` (u32 `[B]`).
    rows: Tensor,
    /// Their queries among the `B·H·slots` rows of the heads (u32 `[B·H]`).
    head_rows: Tensor,
}

impl Pooled {
    fn new(
        positions: &[usize],
        (t, slots, heads): (usize, usize, usize),
        dev: &Device,
    ) -> candle_core::Result<Self> {
        let rows = crate::nn::pooled_rows(positions, t).into_iter().map(|r| r as u32).collect::<Vec<_>>();
        let head_rows = positions
            .iter()
            .enumerate()
            .flat_map(|(i, &p)| (0..heads).map(move |h| ((i * heads + h) * slots + p) as u32))
            .collect::<Vec<_>>();
        let (b, bh) = (rows.len(), head_rows.len());
        Ok(Self {
            positions: Tensor::from_vec(positions.iter().map(|&p| p as u32).collect(), b, dev)?,
            rows: Tensor::from_vec(rows, b, dev)?,
            head_rows: Tensor::from_vec(head_rows, bh, dev)?,
        })
    }

    /// The additive mask's rows at the pooled positions, `[B, 1, 1, slots]`, from `[slots, slots]`.
    fn mask_rows(&self, mask: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
        let rows = mask.index_select(&self.positions, 0)?;
        rows.reshape((rows.dim(0)?, 1, 1, rows.dim(1)?))?.to_dtype(dtype)
    }

    /// The pooled queries `[B, H, 1, D]` of all `[B, H, slots, D]`.
    fn select(&self, q: &Tensor) -> candle_core::Result<Tensor> {
        let (b, h, slots, d) = q.dims4()?;
        q.reshape((b * h * slots, d))?.index_select(&self.head_rows, 0)?.reshape((b, h, 1, d))
    }

    /// `[B, H, slots, D]` zeros but for the pooled queries' `dq` `[B, H, 1, D]`.
    fn spread(&self, dq: &Tensor, slots: usize) -> candle_core::Result<Tensor> {
        let (b, h, _, d) = dq.dims4()?;
        let zeros = Tensor::zeros((b * h * slots, d), dq.dtype(), dq.device())?;
        zeros.index_add(&self.head_rows, &dq.reshape((b * h, d))?, 0)?.reshape((b, h, slots, d))
    }
}

/// The block's node entered into candle's graph after `x` (training), or its output
/// (inference).
fn enter(x: &Tensor, prepared: Prepared) -> candle_core::Result<Tensor> {
    match prepared {
        Prepared::Output(y) => Ok(y),
        Prepared::Node(node) => x.apply_op1(*node),
    }
}

/// A block's forward before it enters the graph.
enum Prepared {
    /// In inference mode: the output, nothing kept.
    Output(Tensor),
    /// Training: the node whose forward gives the output.
    Node(Box<Node>),
}

/// [`forward`], or [`forward_at`] with `positions`, up to the graph; with flash attention
/// (`crate::flash`) or not as `flash` says, or where it applies when `None` (the pooled
/// block's single queries never).
fn prepare(
    layer: &EncoderLayer,
    x: &Tensor,
    mask: Option<&Tensor>,
    positions: Option<&[usize]>,
    flash: Option<bool>,
) -> candle_core::Result<Prepared> {
    let (b, t, c) = x.dims3()?;
    let (heads, n, dtype) = (layer.self_attn.heads, b * t, x.dtype());
    // Output rows: every token, or one per sequence.
    let m = if positions.is_some() { b } else { n };
    let scale = ((c / heads) as f64).powf(-0.5);
    let [q, k, v, out, fc1, fc2] = projections(layer);
    let proj = [
        Projection::new(&[q, k, v], dtype)?,
        Projection::new(&[out], dtype)?,
        Projection::new(&[fc1], dtype)?,
        Projection::new(&[fc2], dtype)?,
    ];
    let norm = |ln: &LayerNorm, x: &Tensor| {
        profile::time("layer norm", x, || {
            fused::layer_norm(x, &ln.weight.as_tensor().detach(), &ln.bias.as_tensor().detach(), ln.eps)
        })
    };

    let x2 = x.detach().reshape((n, c))?;
    let ln1 = norm(&layer.layer_norm1, &x2)?;
    let padding = attention_padding(t);
    let pooled = positions.map(|p| Pooled::new(p, (t, t + padding, heads), x.device())).transpose()?;
    // A mask of the padded size: the padded rows and columns' values are never used.
    let mask = mask.map(|m| m.pad_with_zeros(0, 0, padding)?.pad_with_zeros(1, 0, padding)).transpose()?;
    // q, k and v from one product, split into heads in one pass (their biases added, q
    // scaled). Keys as [B, H, T, D] like the others, read transposed by the products (the
    // op-by-op block splits them transposed instead: there autograd would add the gradient
    // of a transposed view with a strided kernel; here no autograd runs).
    let (q, k, v) = profile::time("q/k/v projections", &ln1, || {
        let qkv = proj[0].product(&ln1)?.reshape((b, t, 3 * c))?;
        let heads = fused::split_qkv(&qkv, &proj[0].b, (heads, scale), padding)?;
        let q = heads.get(0)?;
        let q = match &pooled {
            Some(pooled) => pooled.select(&q)?,
            None => q,
        };
        Ok((q, heads.get(1)?, heads.get(2)?))
    })?;
    let (attention, ctx) = profile::time("attention (scores, softmax, values)", &q, || {
        let flash = pooled.is_none() && flash.unwrap_or_else(|| crate::flash::applies(&q));
        let (attention, o) = match flash {
            true => {
                let (o, lse) = crate::flash::attention(&q, &k, &v, t, mask.as_ref())?;
                (Attention::Flash { o: o.clone(), lse, mask: mask.clone() }, o)
            }
            false => {
                let scores = matmul(&q, &k.t()?)?;
                let probs = match (&pooled, &mask) {
                    // One query per sequence: the mask's rows at the pooled positions.
                    (Some(pooled), Some(mask)) => {
                        let scores = scores.broadcast_add(&pooled.mask_rows(mask, dtype)?)?;
                        fused::softmax_of_first(&scores, t, None)?
                    }
                    _ => fused::softmax_of_first(&scores, t, mask.as_ref())?,
                };
                let o = matmul(&probs, &v)?;
                (Attention::Probs(probs), o)
            }
        };
        // [B, H, 1, D] is [B, C] in memory: heads side by side, as the merge's.
        let ctx = match pooled {
            Some(_) => o,
            None => fused::merge_heads_padded(&o, 1.0, HeadsLayout::TokensByWidth, padding)?,
        };
        Ok((attention, ctx.reshape((m, c))?))
    })?;
    let o = profile::time("out projection", &ctx, || proj[1].product(&ctx))?;
    let x_at = match &pooled {
        Some(pooled) => x2.index_select(&pooled.rows, 0)?,
        None => x2.clone(),
    };
    let x_mid = profile::time("residual add", &o, || fused::residual_bias_add(&x_at, &o, &proj[1].b))?;
    let ln2 = norm(&layer.layer_norm2, &x_mid)?;
    let h = profile::time("mlp fc1", &ln2, || proj[2].product(&ln2))?;
    let act = profile::time("activation", &h, || fused::activation_with_bias(layer.mlp.act, &h, &proj[2].b))?;
    let h2 = profile::time("mlp fc2", &act, || proj[3].product(&act))?;
    let out_shape = if pooled.is_some() { Shape::from((b, c)) } else { Shape::from((b, t, c)) };
    if !crate::block::keeps_activations() {
        return Ok(Prepared::Output(fused::residual_bias_add(&x_mid, &h2, &proj[3].b)?.reshape(out_shape)?));
    }
    let ln = [&layer.layer_norm1, &layer.layer_norm2].map(|ln| (ln.weight.as_tensor().detach(), ln.eps));
    let saved = Saved { x: x2, ln1, q, k, v, attention, ctx, x_mid, ln2, h, act, proj, ln };
    let lns = [&layer.layer_norm1, &layer.layer_norm2].map(|ln| [&ln.weight, &ln.bias]);
    let linears = projections(layer).map(|l| [Some(&l.weight), l.bias.as_ref()]);
    let params = lns.into_iter().flatten().chain(linears.into_iter().flatten().flatten());
    let params = params.map(|v| v.as_tensor().clone()).collect();
    // Shaped as the block's output, which the node's forward returns it plus x_mid and b₂ as.
    let h2 = Mutex::new(Some(h2.reshape(out_shape)?));
    Ok(Prepared::Node(Box::new(Node {
        h2,
        saved,
        params,
        heads,
        scale,
        padding,
        pooled,
        act: layer.mlp.act,
    })))
}

/// Bytes the blocks of an encoder keep for the backward on an accelerator, beyond their
/// parameters (a step's activations: what bounds the batch on a GPU).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeptBytes {
    /// What each sequence of the batch adds.
    pub per_sequence: u64,
    /// What a batch keeps whatever its size: the blocks' weights in the compute dtype (q,
    /// k and v stacked, their biases too), the padded mask.
    pub per_batch: u64,
}

/// [`KeptBytes`] of an encoder of `shape` computing in `dtype` on CUDA, over sequences of
/// `tokens` (`masked`: with the text tower's causal mask), whose output is pooled (the
/// last block computes one token a sequence, as the towers' features need:
/// `Encoder::forward_at`).
pub fn kept_for_backward(
    shape: &crate::nn::EncoderShape,
    tokens: usize,
    dtype: DType,
    masked: bool,
) -> KeptBytes {
    if shape.layers == 0 {
        return KeptBytes::default();
    }
    let flash = crate::flash::applies_to(dtype, shape.hidden / shape.heads.max(1));
    let full = block_kept(shape, tokens, dtype, Rows::All { flash }, masked);
    let last = block_kept(shape, tokens, dtype, Rows::Pooled, masked);
    let layers = (shape.layers - 1) as u64;
    KeptBytes {
        per_sequence: layers * full.per_sequence + last.per_sequence,
        per_batch: layers * full.per_batch + last.per_batch,
    }
}

/// The output rows of a block: every token's, with the attention as flash attention or
/// not, or one per sequence ([`forward_at`]).
#[derive(Debug, Clone, Copy)]
enum Rows {
    All { flash: bool },
    Pooled,
}

/// What one block keeps ([`Saved`], and [`Pooled`]'s indices), by the shapes [`prepare`]
/// makes: `e` bytes a value in the compute dtype, f32 for the biases, lse and mask.
fn block_kept(
    shape: &crate::nn::EncoderShape,
    tokens: usize,
    dtype: DType,
    rows: Rows,
    masked: bool,
) -> KeptBytes {
    let (c, i, h) = (shape.hidden as u64, shape.intermediate as u64, shape.heads as u64);
    let padding = attention_padding(tokens) as u64;
    let (t, s) = (tokens as u64, tokens as u64 + padding);
    let e = dtype.size_in_bytes() as u64;
    // The input and the first LayerNorm's output on every token; q, k and v (one tensor)
    // on every slot.
    let shared = e * (2 * t * c + 3 * s * c);
    let per_sequence = shared
        + match rows {
            // The heads' merged output, x_mid, the second LayerNorm's output, fc1's output
            // before and after the activation; flash attention's output per head and its
            // f32 lse, or the probabilities.
            Rows::All { flash } => {
                e * (3 * t * c + 2 * t * i) + if flash { e * s * c + 4 * h * s } else { e * h * s * s }
            }
            // One row a sequence: its query, the heads' output, x_mid, the LayerNorm's,
            // fc1's and the activation's, one row of probabilities per head; the u32
            // positions, rows and heads' rows.
            Rows::Pooled => e * (4 * c + 2 * i + h * s) + 4 * (2 + h),
        };
    // In f32 only q, k and v's weights are a copy (stacked); in another dtype every weight.
    let weights = if dtype == DType::F32 { 4 * 3 * c * c } else { e * (4 * c * c + 2 * c * i) };
    // Flash attention keeps the f32 mask, padded (a copy when there is padding).
    let mask = match rows {
        Rows::All { flash: true } if masked && padding > 0 => 4 * s * s,
        _ => 0,
    };
    KeptBytes { per_sequence, per_batch: weights + 4 * 3 * c + mask }
}

/// The block in candle's graph: its forward is the block's last op, `x_mid + h₂ + b₂`.
struct Node {
    /// `act·W₂ᵀ`, taken by the forward.
    h2: Mutex<Option<Tensor>>,
    saved: Saved,
    /// The parameters: the LayerNorms' weights and biases (1, then 2), then each
    /// projection's (q, k, v, out, fc1, fc2).
    params: Vec<Tensor>,
    heads: usize,
    scale: f64,
    /// Zero token slots after the last token on the heads side ([`attention_padding`]).
    padding: usize,
    /// The pooled block's rows, if it is one.
    pooled: Option<Pooled>,
    act: Activation,
}

impl Node {
    /// `f` on the storages of `h₂` (taken: the forward runs once), `b₂` and `x_mid`.
    fn with_operands<R>(
        &self,
        f: impl FnOnce([(&Storage, &Layout); 3]) -> candle_core::Result<R>,
    ) -> candle_core::Result<R> {
        let taken = self.h2.lock().map_err(|_| candle_core::Error::msg("block: poisoned lock"))?.take();
        let h2 = taken.ok_or_else(|| candle_core::Error::msg("block: forward run twice"))?;
        let (h, b, r) = (
            h2.storage_and_layout(),
            self.saved.proj[3].b.storage_and_layout(),
            self.saved.x_mid.storage_and_layout(),
        );
        f([(&h.0, h.1), (&b.0, b.1), (&r.0, r.1)])
    }
}

impl CustomOp1 for Node {
    fn name(&self) -> &'static str {
        "transformer-block"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.with_operands(|[(h, lh), (b, lb), (r, lr)]| match (h, b, r) {
            (Storage::Cpu(h), Storage::Cpu(b), Storage::Cpu(r)) => {
                ResidualBiasAdd.cpu_fwd(h, lh, b, lb, r, lr)
            }
            _ => candle_core::bail!("block: CPU tensors expected"),
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        self.with_operands(|[(h, lh), (b, lb), (r, lr)]| match (h, b, r) {
            (Storage::Cuda(h), Storage::Cuda(b), Storage::Cuda(r)) => {
                ResidualBiasAdd.cuda_fwd(h, lh, b, lb, r, lr)
            }
            _ => candle_core::bail!("block: CUDA tensors expected"),
        })
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let s = &self.saved;
        let (b, t, c) = x.dims3()?;
        let n = b * t;
        // Rows of the output: every token, or one per sequence.
        let m = if self.pooled.is_some() { b } else { n };
        let dy = grad.contiguous()?.reshape((m, c))?;
        let [qkv_p, o_p, fc1, fc2] = &s.proj;

        // MLP: y = x_mid + act(LN2(x_mid)·W₁ᵀ + b₁)·W₂ᵀ + b₂.
        let (dx_mid, [d_ln2_w, d_ln2_b], d_fc1, d_fc2) = profile::time("backward: mlp", &dy, || {
            let (d_act, d_fc2) = fc2.backward(&s.act, &dy)?;
            let dh = fused::activation_with_bias_grad(self.act, &s.h, &fc1.b, &d_act)?;
            let (d_ln2, d_fc1) = fc1.backward(&s.ln2, &dh)?;
            let (dx, dw, db) = fused::layer_norm_grad(&s.x_mid, &s.ln[1].0, &d_ln2, s.ln[1].1)?;
            Ok(((dx.to_dtype(dy.dtype())? + &dy)?, [dw, db], d_fc1, d_fc2))
        })?;

        // Attention: x_mid = x + softmax(Q·Kᵀ)·V·Woᵀ + bo, Q, K, V from LN1(x).
        let (d_ln1, [d_q, d_k, d_v, d_o]) = profile::time("backward: attention", &dx_mid, || {
            let (d_ctx, d_o) = o_p.backward(&s.ctx, &dx_mid)?;
            let d_ctx = match &self.pooled {
                Some(_) => d_ctx.reshape((b, self.heads, 1, c / self.heads))?,
                None => {
                    let heads = (self.heads, 1.0, HeadsLayout::TokensByWidth);
                    fused::split_heads_padded(&d_ctx.reshape((b, t, c))?, heads, self.padding)?
                }
            };
            let (dq_heads, dk_heads, dv_heads) = match &s.attention {
                Attention::Probs(probs) => {
                    let d_probs = matmul(&d_ctx, &s.v.t()?)?;
                    let dv_heads = matmul(&probs.t()?, &d_ctx)?;
                    let d_scores = fused::softmax_grad(probs, &d_probs)?;
                    (matmul(&d_scores, &s.k)?, matmul(&d_scores.t()?, &s.q)?, dv_heads)
                }
                Attention::Flash { o, lse, mask } => {
                    crate::flash::attention_grad((&s.q, &s.k, &s.v), (o, lse), &d_ctx, t, mask.as_ref())?
                }
            };
            let dq_heads = match &self.pooled {
                Some(pooled) => pooled.spread(&dq_heads, t + self.padding)?,
                None => dq_heads,
            };
            let dqkv = fused::merge_qkv([&dq_heads, &dk_heads, &dv_heads], self.scale, self.padding)?;
            let (d_ln1, [d_w, d_b]) = qkv_p.backward(&s.ln1, &dqkv.reshape((n, 3 * c))?)?;
            let part = |i| Ok::<_, candle_core::Error>([d_w.narrow(0, i * c, c)?, d_b.narrow(0, i * c, c)?]);
            Ok((d_ln1, [part(0)?, part(1)?, part(2)?, d_o]))
        })?;
        let (dx, d_ln1_w, d_ln1_b) = profile::time("backward: layer norm 1", &d_ln1, || {
            fused::layer_norm_grad(&s.x, &s.ln[0].0, &d_ln1, s.ln[0].1)
        })?;
        let dx = dx.to_dtype(dx_mid.dtype())?;
        let dx = match &self.pooled {
            Some(pooled) => dx.index_add(&pooled.rows, &dx_mid, 0)?,
            None => (dx + dx_mid)?,
        };
        let dx = dx.reshape((b, t, c))?;

        let grads = [[d_ln1_w, d_ln1_b], [d_ln2_w, d_ln2_b]].into_iter().flatten();
        let grads = grads.chain([d_q, d_k, d_v, d_o, d_fc1, d_fc2].into_iter().flatten());
        crate::block::hand_over(self.params.iter().cloned().zip(grads).collect());
        Ok(Some(dx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::EncoderShape;
    use crate::params::ParamBuilder;
    use crate::tests::{assert_gradients_match, rel_diff};
    use candle_core::{Device, Var};
    use std::collections::BTreeMap;

    /// The block as one node (run here on the CPU, whose fused kernels it uses as it does
    /// CUDA's) equals the op-by-op block, which the parity tests hold to PyTorch: output,
    /// the input's and every parameter's gradient through [`crate::backward`], for each
    /// activation, with and without a causal mask, with the attention unfused and as
    /// flash attention (`crate::flash`'s CPU version of the CUDA kernels' op); in inference
    /// mode the same output and no gradient.
    const B: usize = 3;
    const T: usize = 7;
    const C: usize = 24;

    /// A fresh block of width C (4 heads) and its parameters, LayerNorms and biases
    /// perturbed (fresh, they are the identity and zero: their gradients would mean little).
    fn perturbed_layer(
        act: Activation,
        seed: u64,
    ) -> candle_core::Result<(EncoderLayer, BTreeMap<String, Var>)> {
        let dev = Device::Cpu;
        let shape = EncoderShape { hidden: C, intermediate: 40, layers: 2, heads: 4, act, eps: 1e-5 };
        let mut pb = ParamBuilder::fresh(seed, &dev);
        let layer = EncoderLayer::new(&mut pb, "layer", &shape).unwrap();
        let mut params = pb.finish().unwrap();
        for (name, var) in params.iter_mut() {
            if name.contains("layer_norm") || name.ends_with("bias") {
                var.set(&(var.as_tensor() + Tensor::randn(0f32, 0.3, var.shape(), &dev)?)?)?;
            }
        }
        Ok((layer, params))
    }

    /// The text tower's causal mask over T tokens.
    fn causal() -> candle_core::Result<Tensor> {
        let mask = (0..T * T).map(|i| if i % T > i / T { f32::NEG_INFINITY } else { 0.0 }).collect();
        Tensor::from_vec(mask, (T, T), &Device::Cpu)
    }

    /// `ours` equals the op-by-op `reference`: output, and the gradients of `probe · output`
    /// for all 16 parameters (ours through [`crate::backward`]) and the input `x`.
    fn assert_matches(
        what: &str,
        (ours, reference): (&Tensor, Tensor),
        probe: &Tensor,
        params: &BTreeMap<String, Var>,
        x: &Var,
    ) -> candle_core::Result<()> {
        assert!(rel_diff(ours, &reference) < 1e-5, "{what}: forward off by {}", rel_diff(ours, &reference));
        let g_ours = crate::backward(&(ours * probe)?.sum_all()?)?;
        let g_ref = (reference * probe)?.sum_all()?.backward()?;
        let vars = params.iter().map(|(n, v)| (n.as_str(), v)).chain([("x", x)]);
        assert_eq!(assert_gradients_match(what, vars, &g_ours, &g_ref), 17, "16 parameters and the input");
        Ok(())
    }

    #[test]
    fn matches_the_op_by_op_block() -> candle_core::Result<()> {
        let (dev, (b, t, c)) = (Device::Cpu, (B, T, C));
        let causal = causal()?;
        for act in [Activation::QuickGelu, Activation::Gelu, Activation::GeluTanh] {
            let (layer, params) = perturbed_layer(act, 11)?;
            assert!(applies(&layer, &Tensor::zeros((b, t, c), DType::F32, &dev)?));
            for (mask, flash) in [None, Some(&causal)].into_iter().flat_map(|m| [(m, false), (m, true)]) {
                let x = Var::randn(0f32, 1.0, (b, t, c), &dev)?;
                let probe = Tensor::randn(0f32, 1.0, (b, t, c), &dev)?;
                let ours = enter(&x, prepare(&layer, &x, mask, None, Some(flash))?)?;
                let reference = layer.forward_op_by_op(&x, mask)?;
                let what = format!("{act:?}, mask {}, flash attention {flash}", mask.is_some());
                assert_matches(&what, (&ours, reference), &probe, &params, &x)?;
                let inferred =
                    crate::inference_mode(|| enter(&x, prepare(&layer, &x, mask, None, Some(flash))?))?;
                assert_eq!(inferred.flatten_all()?.to_vec1::<f32>()?, ours.flatten_all()?.to_vec1::<f32>()?);
                let g = crate::backward(&(inferred * &probe)?.sum_all()?)?;
                assert!(g.get(&x).is_none() && g.get(&layer.mlp.fc1.weight).is_none(), "{what}: inference");
            }
        }
        Ok(())
    }

    /// What [`block_kept`] counts is what the node keeps: the bytes of every storage its
    /// tensors hold, each once, the parameters' left out; full blocks with and without flash
    /// attention and the mask, and pooled ones.
    #[test]
    fn kept_bytes_are_what_the_node_keeps() -> candle_core::Result<()> {
        let (dev, (b, t, c)) = (Device::Cpu, (B, T, C));
        let causal = causal()?;
        let (layer, params) = perturbed_layer(Activation::QuickGelu, 3)?;
        let param_storages: Vec<usize> = params.values().map(|v| storage_bytes(v.as_tensor()).0).collect();
        let shape =
            EncoderShape { hidden: C, intermediate: 40, layers: 2, heads: 4, act: layer.mlp.act, eps: 1e-5 };
        let x = Var::randn(0f32, 1.0, (b, t, c), &dev)?;
        let positions = [t - 1, 0, 3];
        let cases = [None, Some(&causal)].into_iter().flat_map(|m| {
            [(m, Rows::All { flash: false }), (m, Rows::All { flash: true }), (m, Rows::Pooled)]
        });
        for (mask, rows) in cases {
            let (pos, flash) = match rows {
                Rows::All { flash } => (None, Some(flash)),
                Rows::Pooled => (Some(&positions[..]), None),
            };
            let Prepared::Node(node) = prepare(&layer, &x, mask, pos, flash)? else {
                panic!("a training forward gives a node")
            };
            let s = &node.saved;
            let attention = match &s.attention {
                Attention::Probs(p) => vec![p],
                Attention::Flash { o, lse, mask } => {
                    [Some(o), Some(lse), mask.as_ref()].into_iter().flatten().collect()
                }
            };
            let pooled = node.pooled.iter().flat_map(|p| [&p.positions, &p.rows, &p.head_rows]);
            let tensors = [&s.x, &s.ln1, &s.q, &s.k, &s.v, &s.ctx, &s.x_mid, &s.ln2, &s.h, &s.act]
                .into_iter()
                .chain(attention)
                .chain(s.proj.iter().flat_map(|p| [&p.w, &p.b]))
                .chain(s.ln.iter().map(|(w, _)| w))
                .chain(pooled);
            let mut seen = std::collections::BTreeMap::new();
            for tensor in tensors {
                let (key, bytes) = storage_bytes(tensor);
                if !param_storages.contains(&key) {
                    seen.insert(key, bytes);
                }
            }
            let counted: u64 = seen.values().sum();
            let kept = block_kept(&shape, t, DType::F32, rows, mask.is_some());
            let what = format!("{rows:?}, mask {}", mask.is_some());
            assert_eq!(counted, kept.per_sequence * b as u64 + kept.per_batch, "{what}");
        }
        // The weights as a bf16 block holds them (every one a copy; q, k and v's f32 biases
        // stacked): the rest of a batch's bytes, which only a GPU's block computes with.
        let [q, k, v, out, fc1, fc2] = projections(&layer);
        for dtype in [DType::F32, DType::BF16] {
            let proj = [vec![q, k, v], vec![out], vec![fc1], vec![fc2]].map(|ls| Projection::new(&ls, dtype));
            let mut seen = std::collections::BTreeMap::new();
            for p in proj {
                let p = p?;
                for (key, bytes) in [storage_bytes(&p.w), storage_bytes(&p.b)] {
                    if !param_storages.contains(&key) {
                        seen.insert(key, bytes);
                    }
                }
            }
            let kept = block_kept(&shape, t, dtype, Rows::All { flash: false }, false);
            assert_eq!(seen.values().sum::<u64>(), kept.per_batch, "{dtype:?} weights");
        }
        Ok(())
    }

    /// A CPU tensor's storage (its address) and its size in bytes.
    fn storage_bytes(t: &Tensor) -> (usize, u64) {
        let (storage, _) = t.storage_and_layout();
        match &*storage {
            Storage::Cpu(CpuStorage::F32(v)) => (v.as_ptr() as usize, 4 * v.len() as u64),
            Storage::Cpu(CpuStorage::U32(v)) => (v.as_ptr() as usize, 4 * v.len() as u64),
            Storage::Cpu(CpuStorage::BF16(v)) => (v.as_ptr() as usize, 2 * v.len() as u64),
            _ => panic!("f32, u32 or bf16 CPU tensors expected"),
        }
    }

    /// The pooled block ([`forward_at`]: one query per sequence) equals the op-by-op
    /// pooled block: output, the input's and every parameter's gradient, with and without
    /// the causal mask (pooled at different positions, as the text tower's end tokens).
    #[test]
    fn pooled_matches_the_op_by_op_pooled_block() -> candle_core::Result<()> {
        let (dev, (b, t, c)) = (Device::Cpu, (B, T, C));
        let causal = causal()?;
        let positions = [t - 1, 0, 3];
        let (layer, params) = perturbed_layer(Activation::QuickGelu, 5)?;
        for mask in [None, Some(&causal)] {
            let x = Var::randn(0f32, 1.0, (b, t, c), &dev)?;
            let probe = Tensor::randn(0f32, 1.0, (b, c), &dev)?;
            let ours = forward_at(&layer, &x, &positions, mask)?;
            let reference = layer.forward_at_op_by_op(&x, &positions, mask)?;
            let what = format!("pooled, mask {}", mask.is_some());
            assert_matches(&what, (&ours, reference), &probe, &params, &x)?;
        }
        Ok(())
    }
}
