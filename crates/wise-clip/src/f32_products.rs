//! f32 products against weights packed once, for loops of forwards over frozen weights
//! ([`crate::frozen_weights`]: evaluation, features, zero-shot heads, a Fisher) on x86-64
//! CPUs with AVX-512 or AVX2 and FMA.
//!
//! A BLAS packs its B operand (here a layer's weight) into panels at every call. With few
//! rows that costs as much as the product: a ViT-B/32 forward of one image multiplies 50
//! rows by each weight, one read and one write of packing for every 100 FLOPs, and the
//! 352 MB of weights stream from memory twice. Packed once per scope, a forward reads them
//! once. The kernel is the bf16 one's ([`crate::bf16_products`]) in f32: B packed in panels
//! of C's columns, each `[k][w]` (a partial last panel padded with zero columns, left out of
//! C by masked stores), A read in place (row-major, each value broadcast), a tile of 6 rows
//! of C in registers over up to 768 steps of k, compiled for each count of rows; 64 columns
//! of C, or groups of rows of them, to a task on rayon's threads. With AVX-512 a panel is 64
//! columns and a tile 6 × 64 (24 of the 32 registers); with AVX2 (16 registers) 16 columns
//! and 6 × 16 (12 accumulators, two of B, one of A, as BLAS kernels for AVX2 have), four
//! panels to a task. On a Zen 4 the AVX-512 form runs at 192–228 GFLOP/s on two cores at 50
//! to 1,600 rows, where OpenBLAS reaches 132–214. In the AVX-512 form the last tiles over
//! a chunk of B ask for the next chunk, so that the first tiles over it do not wait on
//! memory (`PackedF32::ahead`). The AVX2 form pays at few rows only
//! ([`max_rows`]; BENCHMARKS.md). `WISE_F32_KERNEL=avx2` (or `avx512`, `off`: the BLAS)
//! picks one, for measuring.
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
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::bf16_products::task_split;
use crate::matmul::{span, Out};

/// Rows of C a kernel call holds in registers.
const ROWS: usize = 6;
/// Columns of C a task computes: a multiple of every kernel's panel.
const BLOCK: usize = 64;
/// Steps of k a kernel call runs: a panel's 768 × 64 floats (192 KB) stay in any L2 of 1 MB
/// or more while its rows of A are swept over them, and 6 rows of A (18 KB) in L1. (fc2's
/// k of 3,072 would make it 768 KB.)
const DEPTH: usize = 768;

/// The instruction sets the kernel comes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Avx512,
    Avx2,
}

impl Kernel {
    /// Columns of C (and B) a panel holds: four 16-lane AVX-512 registers; two 8-lane AVX2
    /// ones (a wider panel would be read a part at a time, strided, and stream from memory
    /// slower: measured).
    fn panel(self) -> usize {
        match self {
            Kernel::Avx512 => 64,
            Kernel::Avx2 => 16,
        }
    }

    /// The kernels this CPU runs, best first.
    fn available() -> Vec<Kernel> {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx512 = has!("avx512f").then_some(Kernel::Avx512);
            let avx2 = (has!("avx2") && has!("fma")).then_some(Kernel::Avx2);
            avx512.into_iter().chain(avx2).collect()
        }
        #[cfg(not(target_arch = "x86_64"))]
        Vec::new()
    }

    /// The kernel products run in: [`Kernel::from_setting`] of `WISE_F32_KERNEL`, once.
    fn chosen() -> Option<Kernel> {
        static CHOSEN: OnceLock<Option<Kernel>> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let value = std::env::var("WISE_F32_KERNEL").ok();
            Self::from_setting(value.as_deref(), &Self::available()).unwrap_or_else(|(best, warning)| {
                eprintln!("warning: {warning}");
                best
            })
        })
    }

    /// The kernel a `WISE_F32_KERNEL` value asks for among the `available` ones (best
    /// first): the best when unset or empty, none for `off`; a value that is none of
    /// `avx512`, `avx2`, `off`, or a kernel not available, is an error carrying the best
    /// kernel and what to warn of.
    fn from_setting(
        value: Option<&str>,
        available: &[Kernel],
    ) -> Result<Option<Kernel>, (Option<Kernel>, String)> {
        let best = available.first().copied();
        let Some(value) = value else { return Ok(best) };
        let wanted = match value.trim().to_ascii_lowercase().as_str() {
            "" => return Ok(best),
            "off" | "0" | "none" => return Ok(None),
            "avx512" | "avx-512" => Kernel::Avx512,
            "avx2" => Kernel::Avx2,
            _ => {
                return Err((best, format!("WISE_F32_KERNEL={value} is none of avx512, avx2, off; ignored")))
            }
        };
        if !available.contains(&wanted) {
            return Err((best, format!("WISE_F32_KERNEL={value}: this CPU lacks it; ignored")));
        }
        Ok(Some(wanted))
    }
}

/// Whether products run in this module's kernel on this CPU: x86-64 with AVX-512, or AVX2
/// and FMA (and `WISE_F32_KERNEL` not `off`).
pub fn supported() -> bool {
    Kernel::chosen().is_some()
}

/// Rows of A up to which a product in this kernel, from a weight packed once, is faster than
/// the BLAS's (which packs the weight at every call); 0 where [`supported`] is false.
pub fn max_rows() -> usize {
    static ROWS: OnceLock<usize> = OnceLock::new();
    *ROWS.get_or_init(|| rows_limit(Kernel::chosen(), crate::matmul::cpu_is_intel()))
}

/// [`max_rows`] for `kernel` on an Intel CPU or another, as measured (ViT-B/32 inference,
/// medians of alternating runs; BENCHMARKS.md): AVX-512 on AMD's Zen 4, any number (192 to
/// 228 GFLOP/s from 50 to 1,600 rows, where OpenBLAS reaches 132 to 214); AVX-512 on an
/// Intel Xeon, 512 (+12 to +29 % at 50 rows, +10 to +12 % at 100, level at 400, −2.5 % at
/// 1,600 over 37 rounds); AVX2, 256 (on the Zen 4 with AVX-512 set aside: +11 to +21 % at
/// 50 rows, +8 to +12 % at 100, −1 to +9 % at 200, −1 to +11 % at 400, −4 to −8 % at 1,600).
fn rows_limit(kernel: Option<Kernel>, intel: bool) -> usize {
    match kernel {
        Some(Kernel::Avx512) if intel => 512,
        Some(Kernel::Avx512) => usize::MAX,
        Some(Kernel::Avx2) => 256,
        None => 0,
    }
}

/// The kernel in use, `"avx512"` or `"avx2"`; `None` where [`supported`] is false.
pub fn kernel_name() -> Option<&'static str> {
    Kernel::chosen().map(|kernel| match kernel {
        Kernel::Avx512 => "avx512",
        Kernel::Avx2 => "avx2",
    })
}

/// `op(B)` `[k, n]` packed once for the kernel in use: its panels of w columns (64 with
/// AVX-512, 16 with AVX2) one after the other, each `[k][w]` (row p of column `col` at
/// `p·w + col`; a last panel's columns past n are zeros).
pub struct PackedF32 {
    kernel: Kernel,
    n: usize,
    k: usize,
    data: Vec<f32>,
}

impl PackedF32 {
    /// `op(B)` `[k, n]` packed (`trans_b`: B stored `[n, k]`, a weight in a forward's `x·Wᵀ`).
    /// Needs [`supported`].
    pub fn new(trans_b: bool, (n, k): (usize, usize), b: (&[f32], usize)) -> Self {
        let kernel = Kernel::chosen().expect("f32 packed products need AVX-512 or AVX2 and FMA");
        Self::for_kernel(kernel, trans_b, (n, k), b)
    }

    fn for_kernel(kernel: Kernel, trans_b: bool, (n, k): (usize, usize), (b, ldb): (&[f32], usize)) -> Self {
        assert!(n > 0 && k > 0, "f32 packed products: empty B");
        let (br, bc) = if trans_b { (n, k) } else { (k, n) };
        assert!(ldb >= bc && b.len() >= span(br, bc, ldb), "f32 packed products: B too small");
        let w = kernel.panel();
        let panel = k * w;
        let mut data = Vec::with_capacity(n.div_ceil(w) * panel);
        data.spare_capacity_mut().par_chunks_mut(panel).enumerate().for_each(|(j, out)| {
            let (j0, width) = (j * w, w.min(n - j * w));
            for (p, line) in out.chunks_exact_mut(w).enumerate() {
                for (col, v) in line[..width].iter_mut().enumerate() {
                    v.write(if trans_b { b[(j0 + col) * ldb + p] } else { b[p * ldb + j0 + col] });
                }
                line[width..].fill(MaybeUninit::new(0.0));
            }
        });
        // SAFETY: the panels cover the buffer, and each is written whole.
        unsafe { data.set_len(n.div_ceil(w) * panel) };
        Self { kernel, n, k, data }
    }

    fn panel(&self, j: usize) -> &[f32] {
        let size = self.k * self.kernel.panel();
        &self.data[j * size..(j + 1) * size]
    }

    /// What an AVX-512 tile over panel `j`'s steps `p0..p0 + depth` of k asks the CPU to
    /// fetch into L2, a 64-byte line a step: part `q` of the four parts of the chunk of B
    /// that follows this one in memory, which the task (or the next) reads next (the
    /// panel's next steps of k, or the next panel). The last four tiles of rows over a
    /// chunk ask for one part each (`q` 0 to 3), so that the next chunk arrives as this one
    /// is done with, not while the rows of A that the chunk is swept over need L2. Without
    /// it a chunk's first tile waits on memory for each of its lines; with it, one image at
    /// a time (50 rows, 9 tiles a panel, all 340 MB of a ViT-B/32's weights read per image)
    /// runs 14–20 % faster on an Intel Xeon (BENCHMARKS.md, session 16). The AVX2 form asks
    /// for lines of its own chunk instead (in [`tile_avx2`]).
    fn ahead(&self, j: usize, p0: usize, depth: usize, q: Option<usize>) -> Option<*const f32> {
        let line = 16;
        let part = (j * self.k + p0 + depth) * self.kernel.panel() + q? * depth * line;
        (self.kernel == Kernel::Avx512 && part + depth * line <= self.data.len())
            .then(|| self.data[part..].as_ptr())
    }
}

/// `C = A·op(B)`, or `C += A·op(B)` when `accumulate`, row-major: A `[m, k]` (leading
/// dimension `lda`), `op(B)` `[k, n]` from `packed`, in the kernel it was packed for.
pub fn product_into(
    m: usize,
    (a, lda): (&[f32], usize),
    packed: &PackedF32,
    accumulate: bool,
    (c, ldc): (&mut [f32], usize),
) {
    let (kernel, n, k) = (packed.kernel, packed.n, packed.k);
    assert!(lda >= k && a.len() >= span(m, k, lda), "f32 packed products: A too small");
    assert!(ldc >= n && c.len() >= span(m, n, ldc), "f32 packed products: C too small");
    if m == 0 {
        return;
    }
    let out = Out(c.as_mut_ptr());
    // A task's columns: one AVX-512 panel, four AVX2 ones, each tile of A's rows swept over
    // them in turn while it is in L1 (a task of one AVX2 panel would read all of A, from L3
    // at many rows, four times as often).
    let w = kernel.panel();
    let blocks = n.div_ceil(BLOCK);
    let (groups, per_group) = task_split(m, blocks, rayon::current_num_threads());
    (0..blocks * groups).into_par_iter().for_each(|task| {
        let (block, group) = (task / groups, task % groups);
        let panels = block * BLOCK / w..n.min((block + 1) * BLOCK).div_ceil(w);
        for p0 in (0..k).step_by(DEPTH) {
            let depth = DEPTH.min(k - p0);
            let rows = group * per_group..m.min((group + 1) * per_group);
            let tiles = rows.len().div_ceil(ROWS);
            for (t, i) in rows.step_by(ROWS).enumerate() {
                let (a, rows) = (a.as_ptr().wrapping_add(i * lda + p0), ROWS.min(m - i));
                for panel in panels.clone() {
                    let (b, cols) = (packed.panel(panel)[p0 * w..].as_ptr(), w.min(n - panel * w));
                    let (c, accumulate) = (out.at(i * ldc + panel * w).0, accumulate || p0 > 0);
                    let ahead = packed.ahead(panel, p0, depth, (t + 4).checked_sub(tiles));
                    // SAFETY: packed for a kernel of this CPU ([`Kernel::chosen`] or, in
                    // tests, [`Kernel::available`]); A's rows i..i + 6 (at most m) hold k
                    // values, the panel k × w; tasks write disjoint blocks of C, rows
                    // i..i + 6 and the panel's `cols` columns, inside C (checked above),
                    // adding to what the previous steps of k wrote; `ahead`, if any, is
                    // followed by depth · 16 packed floats.
                    unsafe { tile(kernel, (a, lda), rows, (b, depth), ahead, (c, ldc, cols), accumulate) }
                }
            }
        }
    });
}

/// `rows` (1 to 6) rows of A (row r at `a + r·lda`) times one `[k][w]` panel into C's rows
/// (row r at `c + r·ldc`, its first `cols` columns written), plus C's values when
/// `accumulate`, in `kernel`, compiled for each count of rows: with the count known only
/// at run time, every step of k ran three compares and branches besides its FMAs.
unsafe fn tile(
    kernel: Kernel,
    a: (*const f32, usize),
    rows: usize,
    b: (*const f32, usize),
    ahead: Option<*const f32>,
    c: (*mut f32, usize, usize),
    accumulate: bool,
) {
    unsafe fn rows_of<const R: usize>(
        kernel: Kernel,
        a: (*const f32, usize),
        b: (*const f32, usize),
        ahead: Option<*const f32>,
        c: (*mut f32, usize, usize),
        accumulate: bool,
    ) {
        match (kernel, ahead) {
            (Kernel::Avx512, Some(ahead)) => tile_avx512::<R, true>(a, b, ahead, c, accumulate),
            (Kernel::Avx512, None) => tile_avx512::<R, false>(a, b, std::ptr::null(), c, accumulate),
            (Kernel::Avx2, _) => tile_avx2::<R>(a, b, c, accumulate),
        }
    }
    match rows {
        6 => rows_of::<6>(kernel, a, b, ahead, c, accumulate),
        5 => rows_of::<5>(kernel, a, b, ahead, c, accumulate),
        4 => rows_of::<4>(kernel, a, b, ahead, c, accumulate),
        3 => rows_of::<3>(kernel, a, b, ahead, c, accumulate),
        2 => rows_of::<2>(kernel, a, b, ahead, c, accumulate),
        1 => rows_of::<1>(kernel, a, b, ahead, c, accumulate),
        _ => unreachable!("a tile holds 1 to {ROWS} rows, not {rows}"),
    }
}

/// [`tile`] for R rows and a `[k][64]` panel: the whole panel in 4R AVX-512 registers; with
/// `AHEAD`, a line of `ahead` asked for into L2 at every step ([`PackedF32::ahead`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const R: usize, const AHEAD: bool>(
    (a, lda): (*const f32, usize),
    (b, k): (*const f32, usize),
    ahead: *const f32,
    (c, ldc, cols): (*mut f32, usize, usize),
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    for p in 0..k {
        if AHEAD {
            _mm_prefetch::<_MM_HINT_T1>(ahead.add(p * 16) as *const i8);
        }
        let bp = b.add(p * 64);
        let bv = [
            _mm512_loadu_ps(bp),
            _mm512_loadu_ps(bp.add(16)),
            _mm512_loadu_ps(bp.add(32)),
            _mm512_loadu_ps(bp.add(48)),
        ];
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*a.add(r * lda + p));
            for (lane, &bv) in row.iter_mut().zip(&bv) {
                *lane = _mm512_fmadd_ps(av, bv, *lane);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        // Registers wholly past `cols` are skipped (their addresses may lie past C's end).
        for (v, lane) in row.iter().enumerate().take(cols.div_ceil(16)) {
            let mask = (u32::MAX >> (32 - (cols - v * 16).min(16))) as __mmask16;
            let at = c.add(r * ldc + v * 16);
            let sum = if accumulate { _mm512_add_ps(*lane, _mm512_maskz_loadu_ps(mask, at)) } else { *lane };
            _mm512_mask_storeu_ps(at, mask, sum);
        }
    }
}

/// [`tile`] for R rows and a `[k][16]` panel, with AVX2 and FMA: 2R registers of C (of the
/// CPU's 16), two of B, one of A.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const R: usize>(
    (a, lda): (*const f32, usize),
    (b, k): (*const f32, usize),
    (c, ldc, cols): (*mut f32, usize, usize),
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for p in 0..k {
        let bp = b.add(p * 16);
        // A panel's first rows read it from memory: asking for B 1 KB ahead made batch-1
        // ViT-B/32 inference 5–20 % faster on a Zen 4. (Asking for the next chunk as well,
        // as the AVX-512 form does, showed no gain beyond the noise on an Intel Xeon.)
        _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(16 * 16) as *const i8);
        let bv = [_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.add(8))];
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm256_set1_ps(*a.add(r * lda + p));
            for (lane, &bv) in row.iter_mut().zip(&bv) {
                *lane = _mm256_fmadd_ps(av, bv, *lane);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        // Registers wholly past `cols` are skipped (their addresses may lie past C's end).
        for (v, lane) in row.iter().enumerate().take(cols.div_ceil(8)) {
            let at = c.add(r * ldc + v * 8);
            if cols >= (v + 1) * 8 {
                // Whole registers by plain loads and stores: AMD's CPUs run masked AVX2
                // stores as microcode, tens of cycles each.
                let sum = if accumulate { _mm256_add_ps(*lane, _mm256_loadu_ps(at)) } else { *lane };
                _mm256_storeu_ps(at, sum);
                continue;
            }
            // Lanes below `cols - 8v` on: all-ones ints, whose sign bit maskload reads.
            let on = _mm256_set1_epi32((cols - v * 8) as i32);
            let mask = _mm256_cmpgt_epi32(on, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            let sum = if accumulate { _mm256_add_ps(*lane, _mm256_maskload_ps(at, mask)) } else { *lane };
            _mm256_maskstore_ps(at, mask, sum);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_avx512<const R: usize, const AHEAD: bool>(
    a: (*const f32, usize),
    b: (*const f32, usize),
    _: *const f32,
    c: (*mut f32, usize, usize),
    accumulate: bool,
) {
    tile_avx2::<R>(a, b, c, accumulate)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_avx2<const R: usize>(
    _: (*const f32, usize),
    _: (*const f32, usize),
    _: (*mut f32, usize, usize),
    _: bool,
) {
    unreachable!("f32 packed products are only offered on x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row limits by kernel and vendor.
    #[test]
    fn row_limits_are_the_measured_ones() {
        assert_eq!(rows_limit(Some(Kernel::Avx512), false), usize::MAX);
        assert_eq!(rows_limit(Some(Kernel::Avx512), true), 512);
        assert_eq!(rows_limit(Some(Kernel::Avx2), true), 256);
        assert_eq!(rows_limit(None, false), 0);
        // A ViT-B/32 batch of 10 images (500 rows) runs in the kernel everywhere, one of 32
        // (1,600) on an Intel CPU in the BLAS.
        assert!(rows_limit(Some(Kernel::Avx512), true) >= 10 * 50);
        assert!(rows_limit(Some(Kernel::Avx512), true) < 32 * 50);
    }

    /// `WISE_F32_KERNEL`: unset or empty is the best kernel, `off` none, a named one that
    /// kernel when the CPU has it; anything else warns and keeps the best.
    #[test]
    fn setting_picks_the_kernel() {
        use Kernel::{Avx2, Avx512};
        let both = [Avx512, Avx2];
        assert_eq!(Kernel::from_setting(None, &both), Ok(Some(Avx512)));
        assert_eq!(Kernel::from_setting(Some(" "), &both), Ok(Some(Avx512)));
        assert_eq!(Kernel::from_setting(Some("AVX2"), &both), Ok(Some(Avx2)));
        assert_eq!(Kernel::from_setting(Some("avx-512"), &both), Ok(Some(Avx512)));
        assert_eq!(Kernel::from_setting(Some("off"), &both), Ok(None));
        assert_eq!(Kernel::from_setting(None, &[]), Ok(None));
        let (best, warning) = Kernel::from_setting(Some("avx512"), &[Avx2]).unwrap_err();
        assert_eq!(
            (best, warning.as_str()),
            (Some(Avx2), "WISE_F32_KERNEL=avx512: this CPU lacks it; ignored")
        );
        let (best, warning) = Kernel::from_setting(Some("neon"), &both).unwrap_err();
        assert_eq!(best, Some(Avx512));
        assert!(warning.contains("neon") && warning.contains("none of avx512, avx2, off"), "{warning}");
    }

    /// Against the definition in f64, in every kernel this CPU has: B packed from either
    /// layout, partial last panels (n not a multiple of 64, also narrower than one register,
    /// and ending mid-register), tails of rows, k over several steps of `DEPTH`, strided A
    /// and C (whose padding is left alone), β = 0 and 1, rows split into groups on 3 threads.
    #[test]
    fn packed_products_match_the_definition() {
        let kernels = Kernel::available();
        if kernels.is_empty() {
            eprintln!("no AVX-512 or AVX2 on this CPU: f32 packed products not tested");
            return;
        }
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let shapes = [
            (1, 64, 2, 0),
            (13, 128, 70, 3),
            (50, 197, 33, 0),
            (200, 64, 9, 1),
            (3, 10, 5, 1),
            (1, 1, 1, 0),
            (7, 92, 800, 2),
        ];
        let val = |i: usize, s: usize| ((i * s % 1013) as f32 / 1013.0 - 0.5) * 3.0;
        for (m, n, k, pad) in shapes {
            for trans_b in [true, false] {
                let (br, bc) = if trans_b { (n, k) } else { (k, n) };
                let (lda, ldb, ldc) = (k + pad, bc + 2 * pad, n + pad);
                let a: Vec<f32> = (0..m * lda).map(|i| val(i, 7919)).collect();
                let b: Vec<f32> = (0..br * ldb).map(|i| val(i, 104_729)).collect();
                let op_b = |l: usize, j: usize| b[if trans_b { j * ldb + l } else { l * ldb + j }];
                for (accumulate, &kernel) in
                    [false, true].into_iter().flat_map(|acc| kernels.iter().map(move |k| (acc, k)))
                {
                    let packed = pool.install(|| PackedF32::for_kernel(kernel, trans_b, (n, k), (&b, ldb)));
                    let c0: Vec<f32> = (0..m * ldc).map(|i| val(i, 31)).collect();
                    let mut c = c0.clone();
                    pool.install(|| product_into(m, (&a, lda), &packed, accumulate, (&mut c, ldc)));
                    let what = format!("{kernel:?} {m}x{n}x{k} trans_b {trans_b} accumulate {accumulate}");
                    let dot = |i, j| (0..k).map(|l| a[i * lda + l] as f64 * op_b(l, j) as f64).sum();
                    crate::tests::assert_product((&c, &c0, ldc), (m, n), accumulate, dot, &what);
                }
            }
        }
    }
}
