//! Attention without the `[S, S]` scores in memory ("flash attention") for the
//! accelerator block (`device_block.rs`): bf16 on CUDA tensor cores, head width 64
//! (`src/kernels/attention.cu`), with a plain f32 CPU version of the same op for tests.
//!
//! Per head (`q` already scaled by `D^-½`, keys past `valid` off, `mask` `[S, S]` added):
//!
//! ```text
//! forward   P = softmax(q·kᵀ + mask),  O = P·v,  lse = log Σ_j exp(q·kᵀ + mask)_ij
//! backward  P = exp(q·kᵀ + mask − lse),  Δ = Σ_d dO∘O,
//!           dv = Pᵀ·dO,  dS = P∘(dO·vᵀ − Δ),  dq = dS·k,  dk = dSᵀ·q
//! ```
//!
//! The unfused attention (cuBLAS products around the softmax kernel) writes the scores,
//! reads them, writes the probabilities and reads them again, forwards and backwards, and
//! keeps the probabilities for the backward: for a ViT-B/16 (197 tokens, 64-wide heads)
//! they are as large as q, k and v together. Here they live in on-chip tiles only, and the
//! backward recomputes them from `lse`, one f32 per query.
//!
//! `WISE_FLASH_ATTENTION=off` keeps the unfused attention on CUDA (to compare the two).

use std::sync::Mutex;

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::fused::f32_slice;

/// The head width the CUDA kernels take (attention.cu's `D`).
pub(crate) const HEAD_WIDTH: usize = 64;

/// Whether [`attention`] runs for these `[B, H, S, D]` heads on their device: CUDA, bf16,
/// `D` = 64 (the kernels' width: CLIP's ViT-B, ViT-L and text towers), fused kernels on.
pub(crate) fn applies(q: &Tensor) -> bool {
    q.device().is_cuda()
        && q.dims().last().is_some_and(|&d| applies_to(q.dtype(), d))
        && crate::fused::applies(q)
}

/// Whether [`attention`] runs for heads of `width` values in `dtype` on CUDA.
pub(crate) fn applies_to(dtype: DType, width: usize) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on =
        *ON.get_or_init(|| std::env::var("WISE_FLASH_ATTENTION").map_or(true, |v| v != "off" && v != "0"));
    on && dtype == DType::BF16 && width == HEAD_WIDTH
}

/// `(O, lse)`: O `[B, H, S, D]` (q's dtype), lse `[B, H, S]` (f32), from q, k, v
/// `[B, H, S, D]`; keys from `valid` on get probability 0; `mask`: additive `[S, S]`.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    valid: usize,
    mask: Option<&Tensor>,
) -> candle_core::Result<(Tensor, Tensor)> {
    let op = Forward { sizes: Sizes::of(q, valid)?, mask: f32_mask(mask)?, lse: Mutex::new(None) };
    let o = q.contiguous()?.apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)?;
    // The kernel writes lse beside O; a custom op has one output, so the op keeps it and
    // this one hands it over.
    let lse = q.apply_op1_no_bwd(&TakeLse(&op))?;
    Ok((o, lse))
}

/// `(dq, dk, dv)` of [`attention`], from its operands, outputs and `dO` (all `[B, H, S, D]`
/// but lse). `dq` is the gradient of the (scaled) q given.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_grad(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    (o, lse): (&Tensor, &Tensor),
    d_o: &Tensor,
    valid: usize,
    mask: Option<&Tensor>,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let op = Backward {
        sizes: Sizes::of(q, valid)?,
        mask: f32_mask(mask)?,
        o: o.contiguous()?,
        lse: lse.contiguous()?,
        d_o: d_o.contiguous()?,
    };
    let grads = q.contiguous()?.apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)?;
    Ok((grads.get(0)?, grads.get(1)?, grads.get(2)?))
}

fn f32_mask(mask: Option<&Tensor>) -> candle_core::Result<Option<Tensor>> {
    mask.map(|m| m.to_dtype(DType::F32)?.contiguous()).transpose()
}

/// Heads (B·H), slots S, width D, and the keys that count.
#[derive(Clone, Copy)]
struct Sizes {
    bh: usize,
    s: usize,
    d: usize,
    valid: usize,
}

impl Sizes {
    fn of(q: &Tensor, valid: usize) -> candle_core::Result<Self> {
        let (b, h, s, d) = q.dims4()?;
        Ok(Self { bh: b * h, s, d, valid: valid.min(s) })
    }

    fn check(&self, what: &str, mask: Option<&Tensor>, ls: &[&Layout]) -> candle_core::Result<()> {
        let n = self.bh * self.s * self.d;
        if ls.iter().any(|l| l.shape().elem_count() != n)
            || mask.is_some_and(|m| m.elem_count() != self.s * self.s)
        {
            candle_core::bail!("{what}: operands do not fit {} heads of {} × {}", self.bh, self.s, self.d);
        }
        Ok(())
    }

    /// Scores of query `i` against keys `0..valid`, mask added, from one head's q and k.
    fn scores(&self, q: &[f32], k: &[f32], mask: Option<&[f32]>, i: usize) -> Vec<f32> {
        let (d, s) = (self.d, self.s);
        let qi = &q[i * d..(i + 1) * d];
        (0..self.valid)
            .map(|j| {
                let dot: f32 = qi.iter().zip(&k[j * d..(j + 1) * d]).map(|(a, b)| a * b).sum();
                dot + mask.map_or(0.0, |m| m[i * s + j])
            })
            .collect()
    }
}

struct Forward {
    sizes: Sizes,
    mask: Option<Tensor>,
    /// lse, for [`TakeLse`].
    lse: Mutex<Option<Storage>>,
}

impl Forward {
    fn keep_lse(&self, lse: Storage) -> candle_core::Result<()> {
        *self.lse.lock().map_err(|_| candle_core::Error::msg("attention: poisoned lock"))? = Some(lse);
        Ok(())
    }
}

impl CustomOp3 for Forward {
    fn name(&self) -> &'static str {
        "flash-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let z = self.sizes;
        z.check(self.name(), self.mask.as_ref(), &[lq, lk, lv])?;
        let (q, k, v) = (
            f32_slice(sq, lq, "attention")?,
            f32_slice(sk, lk, "attention")?,
            f32_slice(sv, lv, "attention")?,
        );
        let mask = self.mask.as_ref().map(|m| m.flatten_all()?.to_vec1::<f32>()).transpose()?;
        let head = z.s * z.d;
        let mut o = vec![0f32; z.bh * head];
        let mut lse = vec![0f32; z.bh * z.s];
        o.par_chunks_mut(head).zip(lse.par_chunks_mut(z.s)).enumerate().for_each(|(h, (o, lse))| {
            let (q, k, v) = (&q[h * head..], &k[h * head..], &v[h * head..]);
            for i in 0..z.s {
                let scores = z.scores(q, k, mask.as_deref(), i);
                let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = scores.iter().map(|s| (s - m).exp()).sum();
                lse[i] = if sum > 0.0 { m + sum.ln() } else { f32::INFINITY };
                for (j, s) in scores.iter().enumerate() {
                    let p = (s - lse[i]).exp();
                    o[i * z.d..(i + 1) * z.d]
                        .iter_mut()
                        .zip(&v[j * z.d..(j + 1) * z.d])
                        .for_each(|(o, v)| *o += p * v);
                }
            }
        });
        self.keep_lse(Storage::Cpu(CpuStorage::F32(lse)))?;
        Ok((CpuStorage::F32(o), lq.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        sq: &CudaStorage,
        lq: &Layout,
        sk: &CudaStorage,
        lk: &Layout,
        sv: &CudaStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let z = self.sizes;
        z.check(self.name(), self.mask.as_ref(), &[lq, lk, lv])?;
        let (o, lse) = with_mask_on_gpu(self.mask.as_ref(), |mask| {
            crate::fused_cuda::flash_attention([(sq, lq), (sk, lk), (sv, lv)], mask, (z.bh, z.s, z.valid))
        })?;
        self.keep_lse(Storage::Cuda(lse))?;
        Ok((o, lq.shape().clone()))
    }
}

/// Hands over the lse of a [`Forward`] that ran (its input, the forward's q, only gives
/// the shape).
struct TakeLse<'a>(&'a Forward);

impl TakeLse<'_> {
    fn take(&self) -> candle_core::Result<Storage> {
        let taken =
            self.0.lse.lock().map_err(|_| candle_core::Error::msg("attention: poisoned lock"))?.take();
        taken.ok_or_else(|| candle_core::Error::msg("attention: no lse (the forward did not run)"))
    }

    fn shape(&self) -> Shape {
        Shape::from((self.0.sizes.bh, self.0.sizes.s))
    }
}

impl CustomOp1 for TakeLse<'_> {
    fn name(&self) -> &'static str {
        "flash-attention-lse"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        match self.take()? {
            Storage::Cpu(lse) => Ok((lse, self.shape())),
            _ => candle_core::bail!("attention: lse not on the CPU"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        match self.take()? {
            Storage::Cuda(lse) => Ok((lse, self.shape())),
            _ => candle_core::bail!("attention: lse not on the GPU"),
        }
    }
}

/// The CUDA storage of an operand.
#[cfg(feature = "cuda")]
fn on_gpu<'a>(s: &'a Storage, what: &str) -> candle_core::Result<&'a CudaStorage> {
    match s {
        Storage::Cuda(s) => Ok(s),
        _ => candle_core::bail!("attention: {what} not on the GPU"),
    }
}

/// `f` of the mask's CUDA storage, if there is a mask.
#[cfg(feature = "cuda")]
fn with_mask_on_gpu<R>(
    mask: Option<&Tensor>,
    f: impl FnOnce(Option<(&CudaStorage, &Layout)>) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let guard = mask.map(|m| m.storage_and_layout());
    match &guard {
        Some((m, l)) => f(Some((on_gpu(m, "the mask")?, l))),
        None => f(None),
    }
}

struct Backward {
    sizes: Sizes,
    mask: Option<Tensor>,
    o: Tensor,
    lse: Tensor,
    d_o: Tensor,
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "flash-attention-grad"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let z = self.sizes;
        z.check(self.name(), self.mask.as_ref(), &[lq, lk, lv, self.o.layout(), self.d_o.layout()])?;
        let (q, k, v) = (
            f32_slice(sq, lq, "attention")?,
            f32_slice(sk, lk, "attention")?,
            f32_slice(sv, lv, "attention")?,
        );
        let mask = self.mask.as_ref().map(|m| m.flatten_all()?.to_vec1::<f32>()).transpose()?;
        let (o, d_o) = (self.o.flatten_all()?.to_vec1::<f32>()?, self.d_o.flatten_all()?.to_vec1::<f32>()?);
        let lse = self.lse.flatten_all()?.to_vec1::<f32>()?;
        let (head, d) = (z.s * z.d, z.d);
        let mut grads = vec![0f32; 3 * z.bh * head];
        let (dq, rest) = grads.split_at_mut(z.bh * head);
        let (dk, dv) = rest.split_at_mut(z.bh * head);
        let per_head = dq.par_chunks_mut(head).zip(dk.par_chunks_mut(head)).zip(dv.par_chunks_mut(head));
        per_head.enumerate().for_each(|(h, ((dq, dk), dv))| {
            let span = h * head..(h + 1) * head;
            let (q, k, v) = (&q[span.clone()], &k[span.clone()], &v[span.clone()]);
            let (o, d_o) = (&o[span.clone()], &d_o[span]);
            for i in 0..z.s {
                let d_oi = &d_o[i * d..(i + 1) * d];
                let delta: f32 = d_oi.iter().zip(&o[i * d..(i + 1) * d]).map(|(a, b)| a * b).sum();
                for (j, s) in z.scores(q, k, mask.as_deref(), i).into_iter().enumerate() {
                    let p = (s - lse[h * z.s + i]).exp();
                    let dp: f32 = d_oi.iter().zip(&v[j * d..(j + 1) * d]).map(|(a, b)| a * b).sum();
                    let ds = p * (dp - delta);
                    for c in 0..d {
                        dq[i * d + c] += ds * k[j * d + c];
                        dk[j * d + c] += ds * q[i * d + c];
                        dv[j * d + c] += p * d_oi[c];
                    }
                }
            }
        });
        let mut dims = vec![3];
        dims.extend(lq.dims());
        Ok((CpuStorage::F32(grads), Shape::from(dims)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        sq: &CudaStorage,
        lq: &Layout,
        sk: &CudaStorage,
        lk: &Layout,
        sv: &CudaStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let z = self.sizes;
        z.check(self.name(), self.mask.as_ref(), &[lq, lk, lv, self.o.layout(), self.d_o.layout()])?;
        let (o, d_o, lse) =
            (self.o.storage_and_layout(), self.d_o.storage_and_layout(), self.lse.storage_and_layout());
        let grads = with_mask_on_gpu(self.mask.as_ref(), |mask| {
            crate::fused_cuda::flash_attention_grad(
                [(sq, lq), (sk, lk), (sv, lv), (on_gpu(&o.0, "O")?, o.1), (on_gpu(&d_o.0, "dO")?, d_o.1)],
                (on_gpu(&lse.0, "lse")?, lse.1),
                mask,
                (z.bh, z.s, z.valid),
            )
        })?;
        let mut dims = vec![3];
        dims.extend(lq.dims());
        Ok((grads, Shape::from(dims)))
    }
}
