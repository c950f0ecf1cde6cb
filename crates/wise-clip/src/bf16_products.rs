//! The transformer blocks' `x·Wᵀ` products in bf16, for inference on CPUs with AVX512_BF16
//! (AMD Zen 4 and later, Intel Cooper Lake and Sapphire Rapids).
//!
//! There `vdpbf16ps` multiplies 32 bf16 pairs and accumulates them into 16 f32 lanes per
//! instruction, twice the f32 FMA rate: on a Zen 4 these products run at 370–420 GFLOP/s
//! on two cores against 205–220 for OpenBLAS's f32 sgemm (BENCHMARKS.md, session 12), and
//! PyTorch's CPU autocast (oneDNN) gets the same from them. Opt-in, for forwards that keep
//! no activations: `bf16_inference_mode`, or `WISE_CPU_BF16=1` for every `inference_mode`
//! (`wise eval`, `embed`, zero-shot heads). Inputs and weights are rounded to bf16 (to
//! nearest even), products summed in f32, everything else stays f32, as under
//! `torch.autocast("cpu", torch.bfloat16)`.
//!
//! The kernel: C's columns in panels of 64 (four 16-lane registers), W's panel packed per
//! product as bf16 pairs `[k/2][64]` (each register then holds 16 columns' pair for one
//! step of k), A's rows converted once to bf16 pairs (a row-major bf16 row already is one);
//! a 6-row × 64-column tile of C stays in 24 registers over the whole of k. Panels are
//! shared out over rayon's threads.

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::matmul::Out;

/// Columns of C a panel holds: four 16-lane registers.
const PANEL: usize = 64;
/// Rows of C a kernel call holds in registers (6 × 4 accumulators).
const ROWS: usize = 6;

/// Whether `WISE_CPU_BF16=1` asks for bf16 products in every inference-mode forward.
pub fn requested() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("WISE_CPU_BF16").is_ok_and(|v| v == "1"))
}

/// Whether this CPU has the AVX-512 bf16 dot products.
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Shapes the kernel takes: whole panels of columns, pairs of k.
pub(crate) fn fits(n: usize, k: usize) -> bool {
    n.is_multiple_of(PANEL) && k.is_multiple_of(2) && k > 0
}

/// `C = A·Wᵀ`, or `C += A·Wᵀ` when `accumulate`, for `A` `[m, k]` (row stride `lda`), `W`
/// `[n, k]` (row stride `ldw`), `C` `[m, n]` (row stride `ldc`), A and W rounded to bf16.
/// Needs [`supported`] and [`fits`].
pub(crate) fn product_nt(
    (m, n, k): (usize, usize, usize),
    (a, lda): (&[f32], usize),
    (w, ldw): (&[f32], usize),
    accumulate: bool,
    (c, ldc): (&mut [f32], usize),
) {
    assert!(supported() && fits(n, k), "bf16 products need AVX512_BF16, n % 64 == 0 and even k");
    assert!(m == 0 || (a.len() >= (m - 1) * lda + k && c.len() >= (m - 1) * ldc + n));
    assert!(w.len() >= (n - 1) * ldw + k && lda >= k && ldw >= k && ldc >= n);
    if m == 0 {
        return;
    }
    let pairs = k / 2;
    // A's rows as bf16 pairs, contiguous.
    let mut a16 = vec![0u32; m * pairs];
    a16.par_chunks_mut(pairs).enumerate().for_each(|(i, row)| {
        // SAFETY: AVX512_BF16 checked above; `row` holds k bf16 values.
        unsafe { to_bf16_pairs(&a[i * lda..i * lda + k], row) }
    });
    let out = Out(c.as_mut_ptr());
    (0..n / PANEL).into_par_iter().for_each(|panel| {
        let mut packed = vec![0u32; pairs * PANEL];
        for col in 0..PANEL {
            let row = panel * PANEL + col;
            // SAFETY: as above; `w` holds row `row`'s k values (asserted).
            unsafe { pack_column(&w[row * ldw..row * ldw + k], &mut packed, col) };
        }
        for i in (0..m).step_by(ROWS) {
            let rows = ROWS.min(m - i);
            // SAFETY: panels write disjoint columns of C; rows i..i+rows, columns
            // panel·64..+64 lie inside C (asserted above).
            unsafe {
                tile(
                    a16.as_ptr().add(i * pairs),
                    pairs,
                    rows,
                    packed.as_ptr(),
                    out.at(i * ldc + panel * PANEL).0,
                    ldc,
                    accumulate,
                )
            }
        }
    });
}

/// `x` rounded to bf16, two values a `u32` (the lower half holds the even element).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn to_bf16_pairs(x: &[f32], out: &mut [u32]) {
    use std::arch::x86_64::*;
    let mut i = 0;
    while i + 32 <= x.len() {
        let lo = _mm512_loadu_ps(x.as_ptr().add(i));
        let hi = _mm512_loadu_ps(x.as_ptr().add(i + 16));
        let both = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(out.as_mut_ptr().add(i / 2) as *mut _, both);
        i += 32;
    }
    while i < x.len() {
        out[i / 2] = bf16(x[i]) as u32 | (bf16(x[i + 1]) as u32) << 16;
        i += 2;
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn to_bf16_pairs(_: &[f32], _: &mut [u32]) {
    unreachable!("bf16 products are only offered on x86-64")
}

/// One row of W (a column of C) into its panel: pair `p` at `packed[p·64 + col]`.
unsafe fn pack_column(w_row: &[f32], packed: &mut [u32], col: usize) {
    let mut pairs = [0u32; 256];
    for (chunk, start) in w_row.chunks(512).zip((0..).step_by(256)) {
        let n = chunk.len() / 2;
        // SAFETY: the caller checked AVX512_BF16.
        unsafe { to_bf16_pairs(chunk, &mut pairs[..n]) };
        for (p, &v) in pairs[..n].iter().enumerate() {
            packed[(start + p) * PANEL + col] = v;
        }
    }
}

/// f32 → bf16, round to nearest even, NaN kept NaN (the scalar tail of a row).
fn bf16(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7fc0;
    }
    let b = x.to_bits();
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// `rows` (≤ 6) rows of C times one 64-column panel, over all `pairs` steps of k.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile(
    a: *const u32,
    pairs: usize,
    rows: usize,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    acc_c: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 4]; ROWS];
    if acc_c {
        for (r, row) in acc.iter_mut().enumerate().take(rows) {
            for (v, lane) in row.iter_mut().enumerate() {
                *lane = _mm512_loadu_ps(c.add(r * ldc + v * 16));
            }
        }
    }
    for p in 0..pairs {
        let bp = b.add(p * PANEL);
        // (No closure here: a closure would not inherit this function's target features.)
        let bv: [__m512bh; 4] = [
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp as *const _)),
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(16) as *const _)),
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(32) as *const _)),
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(48) as *const _)),
        ];
        for (r, row) in acc.iter_mut().enumerate().take(rows) {
            let av =
                std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*a.add(r * pairs + p) as i32));
            for (lane, &bv) in row.iter_mut().zip(&bv) {
                *lane = _mm512_dpbf16_ps(*lane, av, bv);
            }
        }
    }
    for (r, row) in acc.iter().enumerate().take(rows) {
        for (v, lane) in row.iter().enumerate() {
            _mm512_storeu_ps(c.add(r * ldc + v * 16), *lane);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile(_: *const u32, _: usize, _: usize, _: *const u32, _: *mut f32, _: usize, _: bool) {
    unreachable!("bf16 products are only offered on x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_bf16(h: u16) -> f64 {
        f32::from_bits((h as u32) << 16) as f64
    }

    /// Against the definition in f64 over the bf16-rounded inputs: the kernel only sums
    /// differently (f32 accumulation), for tails of rows, strided A/W/C and β = 0 and 1.
    #[test]
    fn bf16_products_match_the_definition() {
        if !supported() {
            eprintln!("no AVX512_BF16 on this CPU: bf16 products not tested");
            return;
        }
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for (m, n, k, pad) in [(1, 64, 2, 0), (13, 128, 70, 3), (50, 192, 768, 0), (7, 64, 36, 5)] {
            let (lda, ldw, ldc) = (k + pad, k + 2 * pad, n + pad);
            let val = |i: usize, s: usize| ((i * s % 1013) as f32 / 1013.0 - 0.5) * 3.0;
            let a: Vec<f32> = (0..m * lda).map(|i| val(i, 7919)).collect();
            let w: Vec<f32> = (0..n * ldw).map(|i| val(i, 104_729)).collect();
            for accumulate in [false, true] {
                let c0: Vec<f32> = (0..m * ldc).map(|i| val(i, 31)).collect();
                let mut c = c0.clone();
                pool.install(|| product_nt((m, n, k), (&a, lda), (&w, ldw), accumulate, (&mut c, ldc)));
                for i in 0..m {
                    for j in 0..n {
                        let dot: f64 = (0..k)
                            .map(|l| from_bf16(bf16(a[i * lda + l])) * from_bf16(bf16(w[j * ldw + l])))
                            .sum();
                        let want = dot + if accumulate { c0[i * ldc + j] as f64 } else { 0.0 };
                        let got = c[i * ldc + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{m}x{n}x{k} ({i}, {j}): {got} vs {want}"
                        );
                    }
                    // Padding between rows of C is left alone.
                    assert_eq!(c[i * ldc + n..(i + 1) * ldc], c0[i * ldc + n..(i + 1) * ldc]);
                }
            }
        }
    }

    /// The scalar rounding is the hardware's: nearest even, NaN stays NaN.
    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16(1.0), 0x3f80);
        assert_eq!(bf16(f32::from_bits(0x3f80_8000)), 0x3f80); // tie, even below
        assert_eq!(bf16(f32::from_bits(0x3f81_8000)), 0x3f82); // tie, even above
        assert_eq!(bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(bf16(f32::from_bits(0x7f80_0001)) & 0x7fc0, 0x7fc0);
        if supported() {
            let x: Vec<f32> = (0..64).map(|i| f32::from_bits(0x3f80_0000 + i * 0x0001_2345)).collect();
            let mut out = vec![0u32; 32];
            // SAFETY: AVX512_BF16 checked.
            unsafe { to_bf16_pairs(&x, &mut out) };
            for (i, pair) in out.iter().enumerate() {
                assert_eq!((*pair as u16, (*pair >> 16) as u16), (bf16(x[2 * i]), bf16(x[2 * i + 1])));
            }
        }
    }
}
