//! Multi-head attention on CPU as one fused op with its backward pass.
//!
//! Op by op, attention is a scale, three head splits, a transposed key, two batched
//! products, a softmax and a head merge: a dozen autograd nodes per layer, each of whose
//! backward candle pays with a zero-filled buffer and an add, plus the copies of the
//! splits and the merge. Here `softmax(scale·QKᵀ + mask)·V` runs per (image, head)
//! straight from and into the `[B, T, C]` projections (the BLAS reads a head's columns
//! with leading dimension C), the `T×T` probabilities live in a per-task scratch buffer,
//! and the backward recomputes them (as flash attention does) instead of storing them:
//!
//! `dV = Pᵀ·dY`, `dP = dY·Vᵀ`, `dS = P∘(dP − rowsum(dP∘P))`, `dQ = scale·dS·K`,
//! `dK = scale·dSᵀ·Q`.
//!
//! Used for f32 on CPU with a BLAS ([`crate::matmul::on_blas`]); `nn::Attention` keeps
//! the op-by-op version for other devices.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::fused::{f32_slice, softmax_grad_row, softmax_row};
use crate::matmul::sgemm;

/// `softmax(QKᵀ/√d + mask)·V` per head for `q`, `k`, `v` `[B, T, C]` (C = heads·d) and an
/// optional additive `[T, T]` mask (a constant: it gets no gradient). Returns `[B, T, C]`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let (_, t, c) = q.dims3()?;
    if heads == 0 || c % heads != 0 {
        candle_core::bail!("attention: width {c} is not a multiple of {heads} heads");
    }
    let mask = match mask {
        Some(m) => {
            let m = m.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            if m.len() != t * t {
                candle_core::bail!("attention: mask of {} values for {t} tokens", m.len());
            }
            Some(Arc::new(m))
        }
        None => None,
    };
    let op = Attention { heads, scale: ((c / heads) as f32).powf(-0.5), mask };
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

#[derive(Clone)]
struct Attention {
    heads: usize,
    scale: f32,
    mask: Option<Arc<Vec<f32>>>,
}

impl Attention {
    /// `P = softmax(scale·Q_h·K_hᵀ + mask)` into `p` (`T×T`), for one image's `[T, C]` rows.
    fn probs(&self, q: &[f32], k: &[f32], h: usize, (t, c): (usize, usize), p: &mut [f32]) {
        let d = c / self.heads;
        let off = h * d;
        sgemm((false, true), (t, t, d), self.scale, (&q[off..], c), (&k[off..], c), 0.0, (p, t));
        for (i, row) in p.chunks_exact_mut(t).enumerate() {
            if let Some(mask) = &self.mask {
                row.iter_mut().zip(&mask[i * t..(i + 1) * t]).for_each(|(s, m)| *s += m);
            }
            softmax_row(row);
        }
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            f32_slice(s1, l1, "attention")?,
            f32_slice(s2, l2, "attention")?,
            f32_slice(s3, l3, "attention")?,
        );
        let (_, t, c) = l1.shape().dims3()?;
        if l2.dims() != l1.dims() || l3.dims() != l1.dims() {
            candle_core::bail!("attention: q {:?}, k {:?}, v {:?}", l1.dims(), l2.dims(), l3.dims());
        }
        let d = c / self.heads;
        let mut y = vec![0f32; q.len()];
        // One task per image: it owns that image's [T, C] block of the output.
        y.par_chunks_mut(t * c).enumerate().for_each(|(b, y)| {
            let r = b * t * c..(b + 1) * t * c;
            let (q, k, v) = (&q[r.clone()], &k[r.clone()], &v[r]);
            let mut p = vec![0f32; t * t];
            for h in 0..self.heads {
                self.probs(q, k, h, (t, c), &mut p);
                sgemm((false, false), (t, d, t), 1.0, (&p, t), (&v[h * d..], c), 0.0, (&mut y[h * d..], c));
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let b = q.dim(0)?;
        let qkv = Tensor::cat(&[q, k, v], 0)?;
        let all = qkv.apply_op2(&grad.contiguous()?, AttentionGrad(self.clone()))?;
        Ok((Some(all.narrow(0, 0, b)?), Some(all.narrow(0, b, b)?), Some(all.narrow(0, 2 * b, b)?)))
    }
}

/// `([q; k; v] [3B, T, C], dY [B, T, C])` → `[dq; dk; dv]` `[3B, T, C]`.
struct AttentionGrad(Attention);

impl CustomOp2 for AttentionGrad {
    fn name(&self) -> &'static str {
        "attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (qkv, dy) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        let (b, t, c) = l2.shape().dims3()?;
        if l1.dims() != [3 * b, t, c] {
            candle_core::bail!("attention-grad: qkv {:?} for dy {:?}", l1.dims(), l2.dims());
        }
        let (att, n, d) = (&self.0, b * t * c, c / self.0.heads);
        let (q, k, v) = (&qkv[..n], &qkv[n..2 * n], &qkv[2 * n..]);
        let mut out = vec![0f32; 3 * n];
        let (dq, rest) = out.split_at_mut(n);
        let (dk, dv) = rest.split_at_mut(n);
        let blocks = dq.par_chunks_mut(t * c).zip(dk.par_chunks_mut(t * c).zip(dv.par_chunks_mut(t * c)));
        blocks.enumerate().for_each(|(i, (dq, (dk, dv)))| {
            let r = i * t * c..(i + 1) * t * c;
            let (q, k, v, dy) = (&q[r.clone()], &k[r.clone()], &v[r.clone()], &dy[r]);
            let (mut p, mut ds) = (vec![0f32; t * t], vec![0f32; t * t]);
            for h in 0..att.heads {
                let o = h * d;
                att.probs(q, k, h, (t, c), &mut p);
                sgemm((true, false), (t, d, t), 1.0, (&p, t), (&dy[o..], c), 0.0, (&mut dv[o..], c));
                sgemm((false, true), (t, t, d), 1.0, (&dy[o..], c), (&v[o..], c), 0.0, (&mut ds, t));
                ds.chunks_exact_mut(t).zip(p.chunks_exact(t)).for_each(|(g, p)| softmax_grad_row(g, p));
                sgemm((false, false), (t, d, t), att.scale, (&ds, t), (&k[o..], c), 0.0, (&mut dq[o..], c));
                sgemm((true, false), (t, d, t), att.scale, (&ds, t), (&q[o..], c), 0.0, (&mut dk[o..], c));
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((3 * b, t, c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// Equal to the op-by-op attention (the parity tests check that one against PyTorch),
    /// forward and all three gradients, with and without a causal mask.
    #[test]
    fn matches_op_by_op_attention() -> candle_core::Result<()> {
        if !crate::matmul::on_blas(&[&Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu)?]) {
            assert!(std::env::var_os("CI").is_none(), "CI must have a BLAS");
            return Ok(());
        }
        let dev = Device::Cpu;
        let (b, t, heads, d) = (3, 7, 4, 8);
        let c = heads * d;
        let q = Var::randn(0f32, 1., (b, t, c), &dev)?;
        let k = Var::randn(0f32, 1., (b, t, c), &dev)?;
        let v = Var::randn(0f32, 1., (b, t, c), &dev)?;
        let probe = Tensor::randn(0f32, 1., (b, t, c), &dev)?;
        let causal: Vec<f32> =
            (0..t * t).map(|i| if i % t > i / t { f32::NEG_INFINITY } else { 0.0 }).collect();
        let causal = Tensor::from_vec(causal, (t, t), &dev)?;
        for mask in [None, Some(&causal)] {
            let split = |x: &Var| x.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous();
            let scores = ((split(&q)? * (d as f64).powf(-0.5))?).matmul(&split(&k)?.t()?)?;
            let scores = match mask {
                Some(m) => scores.broadcast_add(m)?,
                None => scores,
            };
            let e = scores.broadcast_sub(&scores.max_keepdim(D::Minus1)?.detach())?.exp()?;
            let probs = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
            let reference = probs.matmul(&split(&v)?)?.transpose(1, 2)?.reshape((b, t, c))?;
            let fused = attention(&q, &k, &v, heads, mask)?;
            assert!(max_diff(&fused, &reference) < 1e-5, "forward: {}", max_diff(&fused, &reference));
            let g1 = (fused * &probe)?.sum_all()?.backward()?;
            let g2 = (reference * &probe)?.sum_all()?.backward()?;
            for x in [&q, &k, &v] {
                let (a, r) = (g1.get(x).expect("gradient"), g2.get(x).expect("gradient"));
                assert!(max_diff(a, r) < 1e-4, "gradient: {}", max_diff(a, r));
            }
        }
        Ok(())
    }
}
