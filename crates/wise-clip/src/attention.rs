//! Multi-head attention of one image (or caption) on CPU, forward and backward, for the
//! fused transformer block ([`crate::block`]).
//!
//! Op by op, attention is a scale, three head splits, a transposed key, two batched
//! products, a softmax and a head merge: a dozen autograd nodes per layer, each of whose
//! backward candle pays with a zero-filled buffer and an add, plus the copies of the
//! splits and the merge. Here `softmax(scale·QKᵀ + mask)·V` runs per head straight from
//! the packed `[T, 3C]` projections `[Q | K | V]` (the BLAS reads a head's columns with
//! the row stride as leading dimension) into the `[T, C]` output. The block keeps every
//! head's `T×T` probabilities for the backward when they are few (as PyTorch's eager
//! attention keeps them), so it need not recompute `Q·Kᵀ` and the softmax; otherwise, and
//! without a backward, they live in one head's scratch buffer and the backward recomputes
//! them (as flash attention does).
//!
//! In the pooled last block (`Encoder::forward_at`) only one query per sequence is needed:
//! the same code with a one-row range of queries.
//!
//! `dV = Pᵀ·dY`, `dP = dY·Vᵀ`, `dS = P∘(dP − rowsum(dP∘P))`, `dQ = scale·dS·K`,
//! `dK = scale·dSᵀ·Q`.
//!
//! In [`crate::bf16_mode`] the six products run in bf16 too (the softmax and everything
//! else stays f32), as under PyTorch's CPU autocast; each on the calling thread, since the
//! block already runs one sequence per thread.

use std::ops::Range;

use crate::bf16_products;
use crate::fused::{softmax_grad_rows, softmax_rows};
use crate::matmul::sgemm;

/// The shape of the attention: heads of width `d`, `t` tokens, and the additive `[t, t]`
/// mask (the text tower's causal mask) if any; `bf16`: its products in bf16.
pub(crate) struct Heads<'a> {
    pub heads: usize,
    pub d: usize,
    pub t: usize,
    pub mask: Option<&'a [f32]>,
    pub bf16: bool,
}

impl Heads<'_> {
    fn width(&self) -> usize {
        self.heads * self.d
    }

    /// `C = alpha·op(A)·op(B)` on this thread, as [`sgemm`] with β = 0, in bf16 when asked.
    fn product(
        &self,
        trans: (bool, bool),
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        a: (&[f32], usize),
        b: (&[f32], usize),
        c: (&mut [f32], usize),
    ) {
        if self.bf16 && bf16_products::fits(n, k) {
            bf16_products::serial_product_into(trans, (m, n, k), alpha, a, b, c);
        } else {
            sgemm(trans, (m, n, k), alpha, a, b, 0.0, c);
        }
    }

    /// `P = softmax(scale·Q_h·K_hᵀ + mask)` into `p` (`queries × T`) from one sequence's
    /// `[T, 3C]`, for the queries at those positions.
    fn probs(&self, qkv: &[f32], queries: &Range<usize>, h: usize, p: &mut [f32]) {
        let (t, d, c) = (self.t, self.d, self.width());
        let scale = (d as f32).powf(-0.5);
        let (q, k) = (&qkv[queries.start * 3 * c + h * d..], &qkv[c + h * d..]);
        self.product((false, true), (queries.len(), t, d), scale, (q, 3 * c), (k, 3 * c), (p, t));
        softmax_rows(p, t, self.mask.map(|m| &m[queries.start * t..queries.end * t]));
    }

    /// Floats of the probabilities [`Heads::forward`] keeps for `queries` queries: every
    /// head's `queries × T`.
    pub fn probs_len(&self, queries: usize) -> usize {
        self.heads * queries * self.t
    }

    /// One sequence: `qkv` `[T, 3C]` → `y` `[queries, C]`, the outputs at the `queries`'
    /// positions (all `T` in a full block, one in the pooled last block). `p` receives the
    /// probabilities: every head's when it holds [`Heads::probs_len`] floats (kept for
    /// [`Heads::backward`]), else it is one head's `queries × T` scratch.
    pub fn forward(&self, qkv: &[f32], queries: Range<usize>, y: &mut [f32], p: &mut [f32]) {
        let (t, d, c) = (self.t, self.d, self.width());
        let (per_head, keep) = (queries.len() * t, p.len() >= self.probs_len(queries.len()));
        for h in 0..self.heads {
            let p = if keep { &mut p[h * per_head..(h + 1) * per_head] } else { &mut p[..per_head] };
            self.probs(qkv, &queries, h, p);
            let v = &qkv[2 * c + h * d..];
            self.product(
                (false, false),
                (queries.len(), d, t),
                1.0,
                (p, t),
                (v, 3 * c),
                (&mut y[h * d..], c),
            );
        }
    }

    /// One sequence's backward: `dy` `[queries, C]` → `dqkv` `[T, 3C]`: K and V columns
    /// overwritten, Q columns at the `queries`' rows only. `kept`: every head's
    /// probabilities as [`Heads::forward`] kept them, or `None` to recompute them into
    /// `p`; `p` and `ds` are `queries × T` scratch.
    pub fn backward(
        &self,
        qkv: &[f32],
        queries: Range<usize>,
        dy: &[f32],
        dqkv: &mut [f32],
        kept: Option<&[f32]>,
        (p, ds): (&mut [f32], &mut [f32]),
    ) {
        let (t, d, c, m) = (self.t, self.d, self.width(), queries.len());
        let scale = (d as f32).powf(-0.5);
        let ld = 3 * c;
        let first = queries.start * ld;
        for h in 0..self.heads {
            let (oq, ok, ov) = (h * d, c + h * d, 2 * c + h * d);
            let p: &[f32] = match kept {
                Some(all) => &all[h * m * t..(h + 1) * m * t],
                None => {
                    self.probs(qkv, &queries, h, p);
                    p
                }
            };
            self.product((true, false), (t, d, m), 1.0, (p, t), (&dy[oq..], c), (&mut dqkv[ov..], ld));
            self.product((false, true), (m, t, d), 1.0, (&dy[oq..], c), (&qkv[ov..], ld), (ds, t));
            softmax_grad_rows(ds, p, t);
            self.product(
                (false, false),
                (m, d, t),
                scale,
                (ds, t),
                (&qkv[ok..], ld),
                (&mut dqkv[first + oq..], ld),
            );
            self.product(
                (true, false),
                (t, d, m),
                scale,
                (ds, t),
                (&qkv[first + oq..], ld),
                (&mut dqkv[ok..], ld),
            );
        }
    }
}
