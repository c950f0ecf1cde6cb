//! Multi-head attention of one image (or caption) on CPU, forward and backward, for the
//! fused transformer block ([`crate::block`]).
//!
//! Op by op, attention is a scale, three head splits, a transposed key, two batched
//! products, a softmax and a head merge: a dozen autograd nodes per layer, each of whose
//! backward candle pays with a zero-filled buffer and an add, plus the copies of the
//! splits and the merge. Here `softmax(scale·QKᵀ + mask)·V` runs per head straight from
//! the packed `[T, 3C]` projections `[Q | K | V]` (the BLAS reads a head's columns with
//! the row stride as leading dimension) into the `[T, C]` output, the `T×T` probabilities
//! live in a scratch buffer, and the backward recomputes them (as flash attention does)
//! instead of storing them:
//!
//! `dV = Pᵀ·dY`, `dP = dY·Vᵀ`, `dS = P∘(dP − rowsum(dP∘P))`, `dQ = scale·dS·K`,
//! `dK = scale·dSᵀ·Q`.

use crate::fused::{softmax_grad_rows, softmax_rows};
use crate::matmul::sgemm;

/// The shape of the attention: heads of width `d`, `t` tokens, and the additive `[t, t]`
/// mask (the text tower's causal mask) if any.
pub(crate) struct Heads<'a> {
    pub heads: usize,
    pub d: usize,
    pub t: usize,
    pub mask: Option<&'a [f32]>,
}

impl Heads<'_> {
    fn width(&self) -> usize {
        self.heads * self.d
    }

    /// `P = softmax(scale·Q_h·K_hᵀ + mask)` into `p` (`T×T`) from one sequence's `[T, 3C]`.
    fn probs(&self, qkv: &[f32], h: usize, p: &mut [f32]) {
        let (t, d, c) = (self.t, self.d, self.width());
        let scale = (d as f32).powf(-0.5);
        let (q, k) = (&qkv[h * d..], &qkv[c + h * d..]);
        sgemm((false, true), (t, t, d), scale, (q, 3 * c), (k, 3 * c), 0.0, (p, t));
        softmax_rows(p, t, self.mask);
    }

    /// One sequence: `qkv` `[T, 3C]` → `y` `[T, C]`; `p` is `T×T` scratch.
    pub fn forward(&self, qkv: &[f32], y: &mut [f32], p: &mut [f32]) {
        let (t, d, c) = (self.t, self.d, self.width());
        for h in 0..self.heads {
            self.probs(qkv, h, p);
            let v = &qkv[2 * c + h * d..];
            sgemm((false, false), (t, d, t), 1.0, (p, t), (v, 3 * c), 0.0, (&mut y[h * d..], c));
        }
    }

    /// One sequence's backward: `dy` `[T, C]` → `dqkv` `[T, 3C]` (overwritten); `p` and
    /// `ds` are `T×T` scratch.
    pub fn backward(&self, qkv: &[f32], dy: &[f32], dqkv: &mut [f32], (p, ds): (&mut [f32], &mut [f32])) {
        let (t, d, c) = (self.t, self.d, self.width());
        let scale = (d as f32).powf(-0.5);
        let ld = 3 * c;
        for h in 0..self.heads {
            let (oq, ok, ov) = (h * d, c + h * d, 2 * c + h * d);
            self.probs(qkv, h, p);
            sgemm((true, false), (t, d, t), 1.0, (p, t), (&dy[oq..], c), 0.0, (&mut dqkv[ov..], ld));
            sgemm((false, true), (t, t, d), 1.0, (&dy[oq..], c), (&qkv[ov..], ld), 0.0, (ds, t));
            softmax_grad_rows(ds, p, t);
            sgemm((false, false), (t, d, t), scale, (ds, t), (&qkv[ok..], ld), 0.0, (&mut dqkv[oq..], ld));
            sgemm((true, false), (t, d, t), scale, (ds, t), (&qkv[oq..], ld), 0.0, (&mut dqkv[ok..], ld));
        }
    }
}
