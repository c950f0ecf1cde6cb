//! f32 products against weights packed once, for loops of forwards over frozen weights
//! ([`crate::frozen_weights`]: evaluation, features, zero-shot heads, a Fisher) on CPUs with
//! AVX-512.
//!
//! A BLAS packs its B operand (here a layer's weight) into panels at every call. With few
//! rows that costs as much as the product: a ViT-B/32 forward of one image multiplies 50
//! rows by each weight, one read and one write of packing for every 100 FLOPs, and the
//! 352 MB of weights stream from memory twice. Packed once per scope, a forward reads them
//! once. The kernel is the bf16 one's ([`crate::bf16_products`]) in f32: C's columns in
//! panels of 64 (four 16-lane registers; a partial last panel padded with zero columns and
//! left out of C by masked stores), B's panel `[k][64]`, A read in place (row-major, each
//! value broadcast), a 6-row × 64-column tile of C in 24 registers over up to 768 steps of
//! k; panels, or groups of rows of them, shared out over rayon's threads. On a Zen 4 it runs
//! at 192–228 GFLOP/s on two cores at 50 to 1,600 rows, where OpenBLAS reaches 132–214
//! (BENCHMARKS.md).
//!
//! ```
//! use wise_clip::f32_products::{product_into, supported, PackedF32};
//! if supported() {
//!     let (x, w) = (vec![1.0f32; 2 * 3], vec![0.5f32; 4 * 3]); // x [2, 3], W [4, 3]
//!     let packed = PackedF32::new(true, (4, 3), (&w, 3)); // W as Bᵀ: y = x·Wᵀ
//!     let mut y = vec![0.0f32; 2 * 4];
//!     product_into(2, (&x, 3), &packed, false, (&mut y, 4));
//!     assert_eq!(y, [1.5; 8]);
//! }
//! ```

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::bf16_products::task_split;
use crate::matmul::{span, Out};

/// Columns of C a panel holds: four 16-lane registers.
const PANEL: usize = 64;
/// Rows of C a kernel call holds in registers (6 × 4 accumulators).
const ROWS: usize = 6;
/// Steps of k a kernel call runs: a panel's 768 × 64 floats (192 KB) stay in any L2 of 1 MB
/// or more while its rows of A are swept over them, and 6 rows of A (18 KB) in L1. (fc2's
/// k of 3,072 would make it 768 KB.)
const DEPTH: usize = 768;

/// Whether this CPU has AVX-512 (the kernel's registers).
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `op(B)` `[k, n]` packed once: its 64-column panels one after the other, each `[k][64]`
/// (row p of column `col` at `p·64 + col`; a last panel's columns past n are zeros).
pub struct PackedF32 {
    n: usize,
    k: usize,
    data: Vec<f32>,
}

impl PackedF32 {
    /// `op(B)` `[k, n]` packed (`trans_b`: B stored `[n, k]`, a weight in a forward's `x·Wᵀ`).
    pub fn new(trans_b: bool, (n, k): (usize, usize), (b, ldb): (&[f32], usize)) -> Self {
        assert!(n > 0 && k > 0, "f32 packed products: empty B");
        let (br, bc) = if trans_b { (n, k) } else { (k, n) };
        assert!(ldb >= bc && b.len() >= span(br, bc, ldb), "f32 packed products: B too small");
        let panel = k * PANEL;
        let mut data = Vec::with_capacity(n.div_ceil(PANEL) * panel);
        data.spare_capacity_mut().par_chunks_mut(panel).enumerate().for_each(|(j, out)| {
            let (j0, width) = (j * PANEL, PANEL.min(n - j * PANEL));
            for (p, line) in out.chunks_exact_mut(PANEL).enumerate() {
                for (col, v) in line[..width].iter_mut().enumerate() {
                    v.write(if trans_b { b[(j0 + col) * ldb + p] } else { b[p * ldb + j0 + col] });
                }
                line[width..].fill(MaybeUninit::new(0.0));
            }
        });
        // SAFETY: the panels cover the buffer, and each is written whole.
        unsafe { data.set_len(n.div_ceil(PANEL) * panel) };
        Self { n, k, data }
    }

    fn panel(&self, j: usize) -> &[f32] {
        &self.data[j * self.k * PANEL..(j + 1) * self.k * PANEL]
    }
}

/// `C = A·op(B)`, or `C += A·op(B)` when `accumulate`, row-major: A `[m, k]` (leading
/// dimension `lda`), `op(B)` `[k, n]` from `packed`. Needs [`supported`].
pub fn product_into(
    m: usize,
    (a, lda): (&[f32], usize),
    packed: &PackedF32,
    accumulate: bool,
    (c, ldc): (&mut [f32], usize),
) {
    let (n, k) = (packed.n, packed.k);
    assert!(supported(), "f32 packed products need AVX-512");
    assert!(lda >= k && a.len() >= span(m, k, lda), "f32 packed products: A too small");
    assert!(ldc >= n && c.len() >= span(m, n, ldc), "f32 packed products: C too small");
    if m == 0 {
        return;
    }
    let out = Out(c.as_mut_ptr());
    let panels = n.div_ceil(PANEL);
    let (groups, per_group) = task_split(m, panels, rayon::current_num_threads());
    (0..panels * groups).into_par_iter().for_each(|task| {
        let (panel, group) = (task / groups, task % groups);
        let cols = PANEL.min(n - panel * PANEL);
        let b = packed.panel(panel);
        for p0 in (0..k).step_by(DEPTH) {
            let depth = DEPTH.min(k - p0);
            for i in (group * per_group..m.min((group + 1) * per_group)).step_by(ROWS) {
                // SAFETY: AVX-512 checked above; A's rows i..i + 6 (at most m) hold k values,
                // the panel k × 64; tasks write disjoint blocks of C, rows i..i + 6 and the
                // panel's `cols` columns, inside C (checked above), adding to what the
                // previous steps of k wrote.
                unsafe {
                    tile(
                        (a.as_ptr().add(i * lda + p0), lda),
                        ROWS.min(m - i),
                        (b.as_ptr().add(p0 * PANEL), depth),
                        (out.at(i * ldc + panel * PANEL).0, ldc, cols),
                        accumulate || p0 > 0,
                    )
                }
            }
        }
    });
}

/// `rows` (≤ 6) rows of A (row r at `a + r·lda`) times one `[k][64]` panel into C's rows
/// (row r at `c + r·ldc`, its first `cols` columns written), plus C's values when
/// `accumulate`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile(
    (a, lda): (*const f32, usize),
    rows: usize,
    (b, k): (*const f32, usize),
    (c, ldc, cols): (*mut f32, usize, usize),
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 4]; ROWS];
    for p in 0..k {
        let bp = b.add(p * PANEL);
        let bv = [
            _mm512_loadu_ps(bp),
            _mm512_loadu_ps(bp.add(16)),
            _mm512_loadu_ps(bp.add(32)),
            _mm512_loadu_ps(bp.add(48)),
        ];
        for (r, row) in acc.iter_mut().enumerate().take(rows) {
            let av = _mm512_set1_ps(*a.add(r * lda + p));
            for (lane, &bv) in row.iter_mut().zip(&bv) {
                *lane = _mm512_fmadd_ps(av, bv, *lane);
            }
        }
    }
    for (r, row) in acc.iter().enumerate().take(rows) {
        // Registers wholly past `cols` are skipped (their addresses may lie past C's end).
        for (v, lane) in row.iter().enumerate().take(cols.div_ceil(16)) {
            let mask = (u32::MAX >> (32 - (cols - v * 16).min(16))) as __mmask16;
            let at = c.add(r * ldc + v * 16);
            let sum = if accumulate { _mm512_add_ps(*lane, _mm512_maskz_loadu_ps(mask, at)) } else { *lane };
            _mm512_mask_storeu_ps(at, mask, sum);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile(
    _: (*const f32, usize),
    _: usize,
    _: (*const f32, usize),
    _: (*mut f32, usize, usize),
    _: bool,
) {
    unreachable!("f32 packed products are only offered on x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the definition in f64: B packed from either layout, partial last panels (n
    /// not a multiple of 64, also narrower than one register), tails of rows, k over several
    /// steps of `DEPTH`, strided A and C (whose padding is left alone), β = 0 and 1, rows
    /// split into groups on 3 threads.
    #[test]
    fn packed_products_match_the_definition() {
        if !supported() {
            eprintln!("no AVX-512 on this CPU: f32 packed products not tested");
            return;
        }
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let shapes =
            [(1, 64, 2, 0), (13, 128, 70, 3), (50, 197, 33, 0), (200, 64, 9, 1), (3, 10, 5, 1), (1, 1, 1, 0)];
        let val = |i: usize, s: usize| ((i * s % 1013) as f32 / 1013.0 - 0.5) * 3.0;
        for (m, n, k, pad) in shapes {
            for trans_b in [true, false] {
                let (br, bc) = if trans_b { (n, k) } else { (k, n) };
                let (lda, ldb, ldc) = (k + pad, bc + 2 * pad, n + pad);
                let a: Vec<f32> = (0..m * lda).map(|i| val(i, 7919)).collect();
                let b: Vec<f32> = (0..br * ldb).map(|i| val(i, 104_729)).collect();
                let op_b = |l: usize, j: usize| b[if trans_b { j * ldb + l } else { l * ldb + j }];
                let packed = pool.install(|| PackedF32::new(trans_b, (n, k), (&b, ldb)));
                for accumulate in [false, true] {
                    let c0: Vec<f32> = (0..m * ldc).map(|i| val(i, 31)).collect();
                    let mut c = c0.clone();
                    pool.install(|| product_into(m, (&a, lda), &packed, accumulate, (&mut c, ldc)));
                    let what = format!("{m}x{n}x{k} trans_b {trans_b} accumulate {accumulate}");
                    let dot = |i, j| (0..k).map(|l| a[i * lda + l] as f64 * op_b(l, j) as f64).sum();
                    crate::tests::assert_product((&c, &c0, ldc), (m, n), accumulate, dot, &what);
                }
            }
        }
    }
}
