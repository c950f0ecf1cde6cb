//! The transformer blocks' matrix products in bf16, forward and backward, on CPUs with
//! AVX512_BF16 (AMD Zen 4 and later, Intel Cooper Lake and Sapphire Rapids).
//!
//! There `vdpbf16ps` multiplies 32 bf16 pairs and accumulates them into 16 f32 lanes per
//! instruction, twice the f32 FMA rate: on a Zen 4 these products run at 370–420 GFLOP/s
//! on two cores against 205–220 for OpenBLAS's f32 sgemm (BENCHMARKS.md, session 12), and
//! PyTorch's CPU autocast (oneDNN) gets the same from them. Opt-in: `wise_clip::bf16_mode`,
//! or `WISE_CPU_BF16=1` for every forward and backward (`wise train`, `eval`, `embed`,
//! zero-shot heads). Both operands are rounded to bf16 (to nearest even), products summed
//! in f32, everything else stays f32 (the activations kept for the backward, the gradients
//! handed on, the weights and the optimizer), as under `torch.autocast("cpu", torch.bfloat16)`.
//!
//! The kernel: C's columns in panels of 64 (four 16-lane registers; the last panel of an
//! `n` that is not a multiple of 64 padded with zero columns, which masked stores leave
//! out of C), B's panel packed per product as bf16 pairs `[k/2][64]` (each register then
//! holds 16 columns' pair for one step of k; a weight's panels are packed once per
//! `wise_clip::frozen_weights` scope instead, `PackedB`), A converted once to bf16 pairs
//! along k (a row-major bf16 row already is one; a transposed A interleaves two rows of its
//! store); a 6-row × 64-column tile of C stays in 24 registers over the whole of k. Panels,
//! or for few panels groups of rows of them, are shared out over rayon's threads
//! (`product_into`); the attention's per-head products, already one sequence per thread,
//! run on the calling thread (`serial_product_into`). A forward's `x·Wᵀ` reads W `[n, k]`
//! as Bᵀ; a backward's `dY·W` and `dYᵀ·X` read B as stored and A transposed.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::{Mutex, OnceLock};

use rayon::prelude::*;

use crate::matmul::{span, Out};

/// Columns of C a panel holds: four 16-lane registers.
const PANEL: usize = 64;
/// Rows of C a kernel call holds in registers (6 × 4 accumulators).
const ROWS: usize = 6;

/// Whether `WISE_CPU_BF16=1` asks for bf16 products in every forward and backward. A value
/// that is neither on nor off, or on for a CPU without AVX512_BF16 or without a BLAS (the
/// fused blocks, where the bf16 products run, need one for their other products), is said
/// once on stderr.
pub fn requested() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let Ok(value) = std::env::var("WISE_CPU_BF16") else { return false };
        let on = match value.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "on" | "yes" => true,
            "0" | "false" | "off" | "no" | "" => false,
            _ => {
                eprintln!("warning: WISE_CPU_BF16={value} is neither 1 nor 0; ignored (f32 products)");
                false
            }
        };
        if on && !supported() {
            eprintln!("warning: WISE_CPU_BF16={value}: this CPU has no AVX512_BF16; its products stay f32");
        } else if on && crate::matmul::blas_name().is_none() {
            eprintln!(
                "warning: WISE_CPU_BF16={value} needs a BLAS (none loaded; see WISE_BLAS); products stay f32"
            );
        }
        on
    })
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

/// Shapes the kernel takes: any m, any n > 0 and k > 0.
pub(crate) fn fits(n: usize, k: usize) -> bool {
    n > 0 && k > 0
}

/// `C = op(A)·op(B)`, or `C += op(A)·op(B)` when `accumulate`, row-major, as
/// [`crate::matmul::par_sgemm`]: `op(A)` `[m, k]` is A, or Aᵀ for A stored `[k, m]` when
/// `trans.0`; `op(B)` `[k, n]` is B, or Bᵀ for B stored `[n, k]` (a layer's weight in a
/// forward) when `trans.1`. A and B are rounded to bf16, the sums are f32's; B is read from
/// `packed` when given (which must hold this B). Needs [`supported`] and [`fits`].
pub(crate) fn product_into(
    trans: (bool, bool),
    (m, n, k): (usize, usize, usize),
    a: (&[f32], usize),
    b: (&[f32], usize),
    packed: Option<&PackedB>,
    accumulate: bool,
    (c, ldc): (&mut [f32], usize),
) {
    assert!(ldc >= n && c.len() >= span(m, n, ldc), "bf16 products: C too small");
    let how = How { alpha: 1.0, accumulate, parallel: true };
    // SAFETY: `c` is borrowed mutably and holds every element of C (checked just above).
    unsafe { product_to(trans, (m, n, k), a, b, packed, how, Out(c.as_mut_ptr()), ldc) }
}

/// `C = alpha·op(A)·op(B)` in bf16 as [`product_into`], computed on the calling thread
/// only: for products that run one per thread already (the attention's, a head of one
/// sequence at a time, as [`crate::matmul::sgemm`] for f32).
pub(crate) fn serial_product_into(
    trans: (bool, bool),
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    a: (&[f32], usize),
    b: (&[f32], usize),
    (c, ldc): (&mut [f32], usize),
) {
    assert!(ldc >= n && c.len() >= span(m, n, ldc), "bf16 products: C too small");
    let how = How { alpha, accumulate: false, parallel: false };
    // SAFETY: `c` is borrowed mutably and holds every element of C (checked just above).
    unsafe { product_to(trans, (m, n, k), a, b, None, how, Out(c.as_mut_ptr()), ldc) }
}

/// `op(A)·op(B)` in bf16 as [`product_into`], `m × n`, in a new row-major buffer (never
/// zero-filled: the product writes every element).
pub(crate) fn product(
    trans: (bool, bool),
    (m, n, k): (usize, usize, usize),
    a: (&[f32], usize),
    b: (&[f32], usize),
    packed: Option<&PackedB>,
) -> Vec<f32> {
    let mut c = Vec::with_capacity(m * n);
    // SAFETY: `c` has room for the m × n matrix, which the product writes whole (β = 0)
    // before `set_len` exposes it.
    unsafe {
        let how = How { alpha: 1.0, accumulate: false, parallel: true };
        product_to(trans, (m, n, k), a, b, packed, how, Out(c.as_mut_ptr()), n);
        c.set_len(m * n);
    }
    c
}

/// B packed for the kernel: its 64-column panels one after the other, each `[k/2][64]` bf16
/// pairs (pair p of column `col` at `p·64 + col`). A layer's weight packed once serves every
/// forward of a batch loop ([`crate::frozen_weights`]) instead of being packed per product.
pub(crate) struct PackedB {
    k: usize,
    data: Vec<u32>,
}

impl PackedB {
    /// `op(B)` `[k, n]` packed (`trans_b`: B stored `[n, k]`). Needs [`supported`] and [`fits`].
    pub(crate) fn new(trans_b: bool, (n, k): (usize, usize), (b, ldb): (&[f32], usize)) -> Self {
        assert!(supported() && fits(n, k), "bf16 products need AVX512_BF16 and n, k > 0");
        let (br, bc) = if trans_b { (n, k) } else { (k, n) };
        assert!(ldb >= bc && b.len() >= span(br, bc, ldb), "bf16 products: B too small");
        let panel = k.div_ceil(2) * PANEL;
        let pack = |all: &mut [MaybeUninit<u32>]| {
            all.par_chunks_mut(panel)
                .enumerate()
                .for_each(|(j, out)| pack_panel(trans_b, (n, k), (b, ldb), j, out))
        };
        // SAFETY: each chunk is one panel, which `pack_panel` writes whole.
        let data = unsafe { filled(n.div_ceil(PANEL) * panel, pack) };
        Self { k, data }
    }

    fn panel(&self, j: usize) -> &[u32] {
        let len = self.k.div_ceil(2) * PANEL;
        &self.data[j * len..(j + 1) * len]
    }
}

/// `len` values written by `write`, without zero-filling them first.
///
/// # Safety
/// `write` must write every element.
unsafe fn filled(len: usize, write: impl FnOnce(&mut [MaybeUninit<u32>])) -> Vec<u32> {
    let mut v = Vec::new();
    // SAFETY: passed on to the caller.
    unsafe { refill(&mut v, len, write) };
    v
}

/// `v` made `len` values written by `write`, in its allocation when that is large enough.
///
/// # Safety
/// `write` must write every element.
unsafe fn refill(v: &mut Vec<u32>, len: usize, write: impl FnOnce(&mut [MaybeUninit<u32>])) {
    v.clear();
    v.reserve(len);
    write(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the caller vouches that `write` initialised all `len` elements.
    unsafe { v.set_len(len) };
}

/// Buffers for A's bf16 copy, kept from product to product, and each thread's buffer for a
/// panel of B: a new multi-megabyte buffer a product is a fresh mapping from the kernel, each
/// of its pages a fault (~27,000 a ViT-B/32 training step, ~3 % of its time).
static A_BUFFERS: Mutex<Vec<Vec<u32>>> = Mutex::new(Vec::new());

thread_local! {
    static PANEL_BUFFER: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// A kept buffer for A (the largest, or a new one), to hand back with [`give_a_buffer`].
fn take_a_buffer() -> Vec<u32> {
    let mut kept = A_BUFFERS.lock().unwrap_or_else(|e| e.into_inner());
    let largest = (0..kept.len()).max_by_key(|&i| kept[i].capacity());
    largest.map(|i| kept.swap_remove(i)).unwrap_or_default()
}

fn give_a_buffer(buffer: Vec<u32>) {
    let mut kept = A_BUFFERS.lock().unwrap_or_else(|e| e.into_inner());
    // As many as products can run at once on different threads; rarely more than one.
    if kept.len() < 4 {
        kept.push(buffer);
    }
}

/// Panel `j` (columns 64j..64j + 64) of `op(B)` `[k, n]` into `out` (`[k/2][64]` pairs, all
/// written; the columns past `n` of a last, partial panel are zeros).
fn pack_panel(
    trans_b: bool,
    (n, k): (usize, usize),
    (b, ldb): (&[f32], usize),
    j: usize,
    out: &mut [MaybeUninit<u32>],
) {
    let j0 = j * PANEL;
    let width = PANEL.min(n - j0);
    if trans_b {
        for col in 0..width {
            // SAFETY: callers checked AVX512_BF16 and B's bounds; row j0 + col holds k values.
            unsafe { pack_column(&b[(j0 + col) * ldb..][..k], out, col) };
        }
        for line in out.chunks_exact_mut(PANEL) {
            line[width..].fill(MaybeUninit::new(0));
        }
    } else {
        for (p, line) in out.chunks_exact_mut(PANEL).enumerate() {
            let second = (2 * p + 1 < k).then(|| &b[(2 * p + 1) * ldb + j0..][..width]);
            // SAFETY: as above; rows 2p and 2p + 1 of B hold columns j0..j0 + width.
            unsafe { interleave(&b[2 * p * ldb + j0..][..width], second, &mut line[..width]) };
            line[width..].fill(MaybeUninit::new(0));
        }
    }
}

/// How a product writes C: `C = alpha·op(A)·op(B)`, plus C's values when `accumulate`;
/// split over rayon's threads when `parallel`, else on the calling thread.
#[derive(Clone, Copy)]
pub(crate) struct How {
    pub alpha: f32,
    pub accumulate: bool,
    pub parallel: bool,
}

/// [`product_into`] into raw `c` as `how` says, B read from `packed` when given (packed from
/// this `b`).
///
/// # Safety
/// `c` must be valid for writes (and, when `how.accumulate`, reads of initialised values)
/// of every `C[i][j]` at `c + i·ldc + j`, and nothing else may access them meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn product_to(
    (trans_a, trans_b): (bool, bool),
    (m, n, k): (usize, usize, usize),
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    packed: Option<&PackedB>,
    how: How,
    out: Out,
    ldc: usize,
) {
    assert!(supported() && fits(n, k), "bf16 products need AVX512_BF16 and n, k > 0");
    let (ar, ac) = if trans_a { (k, m) } else { (m, k) };
    let (br, bc) = if trans_b { (n, k) } else { (k, n) };
    assert!(lda >= ac && ldb >= bc && ldc >= n, "bf16 products: leading dimensions too small");
    assert!(a.len() >= span(ar, ac, lda) && b.len() >= span(br, bc, ldb));
    let (panels, pairs) = (n.div_ceil(PANEL), k.div_ceil(2));
    assert!(
        packed.is_none_or(|p| p.k == k && p.data.len() == panels * pairs * PANEL),
        "bf16 products: packed B"
    );
    if m == 0 {
        return;
    }
    // A as bf16 pairs along k: row i's pair p at `a16[i·a_row + p·a_pair]`. Stored `[m, k]`,
    // each row converts on its own (a bf16 row already is a row of pairs); stored `[k, m]`,
    // rows 2p and 2p + 1 of the store interleave into line p.
    let (a_row, a_pair) = if trans_a { (1, m) } else { (pairs, 1) };
    let convert_line = |i: usize, line: &mut [MaybeUninit<u32>]| {
        if trans_a {
            let second = (2 * i + 1 < k).then(|| &a[(2 * i + 1) * lda..][..m]);
            // SAFETY: AVX512_BF16 checked above; both rows hold m values (asserted).
            unsafe { interleave(&a[2 * i * lda..][..m], second, line) }
        } else {
            // SAFETY: as above; row i holds k values.
            unsafe { to_bf16_pairs(&a[i * lda..i * lda + k], line) }
        }
    };
    let line = if trans_a { m } else { pairs };
    let convert = |all: &mut [MaybeUninit<u32>]| {
        if how.parallel {
            all.par_chunks_mut(line).enumerate().for_each(|(i, l)| convert_line(i, l))
        } else {
            all.chunks_mut(line).enumerate().for_each(|(i, l)| convert_line(i, l))
        }
    };
    let mut a16 = take_a_buffer();
    // SAFETY: the lines of either layout cover the buffer, and each is written whole.
    unsafe { refill(&mut a16, m * pairs, convert) };
    let threads = if how.parallel { rayon::current_num_threads() } else { 1 };
    let (groups, per_group) = task_split(m, panels, threads);
    let task = |task: usize| {
        let (panel, group) = (task / groups, task % groups);
        let rows = group * per_group..m.min((group + 1) * per_group);
        if rows.is_empty() {
            return;
        }
        let cols = PANEL.min(n - panel * PANEL);
        let tiles = |b16: &[u32]| {
            for i in rows.clone().step_by(ROWS) {
                // SAFETY: tasks write disjoint blocks of C; rows i..i + 6 (at most m), columns
                // 64·panel..+cols lie inside C (the caller's contract).
                unsafe {
                    tile(
                        a16.as_ptr().add(i * a_row),
                        (a_row, a_pair, pairs),
                        ROWS.min(m - i),
                        b16.as_ptr(),
                        (out.at(i * ldc + panel * PANEL).0, ldc, cols),
                        how,
                    )
                }
            }
        };
        match packed {
            Some(packed) => tiles(packed.panel(panel)),
            // (Nothing in here waits for rayon, so no other task can run on this thread and
            // want its buffer meanwhile.)
            None => PANEL_BUFFER.with_borrow_mut(|own| {
                // SAFETY: `pack_panel` writes the whole panel.
                unsafe {
                    refill(own, pairs * PANEL, |out| pack_panel(trans_b, (n, k), (b, ldb), panel, out))
                };
                tiles(own)
            }),
        }
    };
    if how.parallel {
        (0..panels * groups).into_par_iter().for_each(task);
    } else {
        (0..panels).for_each(task);
    }
    give_a_buffer(a16);
}

/// How `m` rows times `panels` panels of 64 columns are shared out over `threads`: each
/// panel a task, cut into `groups` of `per_group` rows (a multiple of the tile's 6) when
/// there are fewer than two panels a thread (a task packs its own panel, so groups pack
/// the same one again), but groups of at least 48 rows; one group on one thread.
pub(crate) fn task_split(m: usize, panels: usize, threads: usize) -> (usize, usize) {
    let groups =
        if threads > 1 { (2 * threads).div_ceil(panels).min(m.div_ceil(8 * ROWS)).max(1) } else { 1 };
    (groups, m.div_ceil(groups).next_multiple_of(ROWS))
}

/// `x` rounded to bf16 into `out`, two values a `u32` (the lower half holds the even
/// element; an odd length's last pair is completed with 0): `x.len().div_ceil(2)` written.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn to_bf16_pairs(x: &[f32], out: &mut [MaybeUninit<u32>]) {
    use std::arch::x86_64::*;
    assert!(out.len() >= x.len().div_ceil(2));
    let mut i = 0;
    while i + 32 <= x.len() {
        let lo = _mm512_loadu_ps(x.as_ptr().add(i));
        let hi = _mm512_loadu_ps(x.as_ptr().add(i + 16));
        let both = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(out.as_mut_ptr().add(i / 2) as *mut _, both);
        i += 32;
    }
    while i < x.len() {
        let second = x.get(i + 1).map_or(0, |&v| bf16(v));
        out[i / 2].write(bf16(x[i]) as u32 | (second as u32) << 16);
        i += 2;
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn to_bf16_pairs(_: &[f32], _: &mut [MaybeUninit<u32>]) {
    unreachable!("bf16 products are only offered on x86-64")
}

/// `out[j]` = the bf16 pair (`first[j]`, `second[j]`), `second` all 0 when `None`; all of
/// `out` written.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn interleave(first: &[f32], second: Option<&[f32]>, out: &mut [MaybeUninit<u32>]) {
    use std::arch::x86_64::*;
    let n = out.len();
    assert!(first.len() >= n && second.is_none_or(|s| s.len() >= n));
    let mut j = 0;
    while j + 16 <= n {
        let lo = widened_bf16(_mm512_loadu_ps(first.as_ptr().add(j)));
        let hi = match second {
            Some(s) => _mm512_slli_epi32::<16>(widened_bf16(_mm512_loadu_ps(s.as_ptr().add(j)))),
            None => _mm512_setzero_si512(),
        };
        _mm512_storeu_si512(out.as_mut_ptr().add(j) as *mut _, _mm512_or_si512(lo, hi));
        j += 16;
    }
    for j in j..n {
        let hi = second.map_or(0, |s| bf16(s[j]));
        out[j].write(bf16(first[j]) as u32 | (hi as u32) << 16);
    }
}

/// 16 values rounded to bf16, each in the lower half of a 32-bit lane. (A function, not a
/// closure: a closure would not inherit the caller's target features.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn widened_bf16(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v)))
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn interleave(_: &[f32], _: Option<&[f32]>, _: &mut [MaybeUninit<u32>]) {
    unreachable!("bf16 products are only offered on x86-64")
}

/// One row of a `[n, k]` B (a column of C) into its panel: pair `p` at `packed[p·64 + col]`.
unsafe fn pack_column(w_row: &[f32], packed: &mut [MaybeUninit<u32>], col: usize) {
    let mut pairs = [MaybeUninit::new(0u32); 256];
    for (chunk, start) in w_row.chunks(512).zip((0..).step_by(256)) {
        let n = chunk.len().div_ceil(2);
        // SAFETY: the caller checked AVX512_BF16.
        unsafe { to_bf16_pairs(chunk, &mut pairs[..n]) };
        for (p, v) in pairs[..n].iter().enumerate() {
            packed[(start + p) * PANEL + col] = *v;
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

/// `rows` (≤ 6) rows of C times one 64-column panel, over all `pairs` steps of k: row r's
/// pair p of A at `a + r·a_row + p·a_pair`; C's row r at `c + r·ldc`, of which the first
/// `cols` (≤ 64) columns are written (masked stores: a partial last panel's zero columns
/// stay out of C), as `alpha·sum`, plus C's value when `how.accumulate`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile(
    a: *const u32,
    (a_row, a_pair, pairs): (usize, usize, usize),
    rows: usize,
    b: *const u32,
    (c, ldc, cols): (*mut f32, usize, usize),
    how: How,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 4]; ROWS];
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
            let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                *a.add(r * a_row + p * a_pair) as i32,
            ));
            for (lane, &bv) in row.iter_mut().zip(&bv) {
                *lane = _mm512_dpbf16_ps(*lane, av, bv);
            }
        }
    }
    let alpha = _mm512_set1_ps(how.alpha);
    for (r, row) in acc.iter().enumerate().take(rows) {
        // Registers wholly past `cols` are skipped (their addresses may lie past C's end).
        for (v, lane) in row.iter().enumerate().take(cols.div_ceil(16)) {
            let mask = (u32::MAX >> (32 - (cols - v * 16).min(16))) as __mmask16;
            let at = c.add(r * ldc + v * 16);
            let mut sum = _mm512_mul_ps(*lane, alpha);
            if how.accumulate {
                sum = _mm512_add_ps(sum, _mm512_maskz_loadu_ps(mask, at));
            }
            _mm512_mask_storeu_ps(at, mask, sum);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile(
    _: *const u32,
    _: (usize, usize, usize),
    _: usize,
    _: *const u32,
    _: (*mut f32, usize, usize),
    _: How,
) {
    unreachable!("bf16 products are only offered on x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_bf16(h: u16) -> f64 {
        f32::from_bits((h as u32) << 16) as f64
    }

    /// Against the definition in f64 over the bf16-rounded inputs: the kernel only sums
    /// differently (f32 accumulation), for each layout of A and B, odd k, tails of rows,
    /// partial last panels (n not a multiple of 64, also n < 16), strided A/B/C, β = 0 and
    /// 1, B packed beforehand or per product, rows split into groups (few panels, many
    /// rows), and on the calling thread with a scale (`serial_product_into`).
    #[test]
    fn bf16_products_match_the_definition() {
        if !supported() {
            eprintln!("no AVX512_BF16 on this CPU: bf16 products not tested");
            return;
        }
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let shapes = [
            (1, 64, 2, 0),
            (13, 128, 70, 3),
            (50, 192, 768, 0),
            (7, 64, 37, 5),
            (200, 64, 9, 1),
            (50, 50, 64, 2),
            (11, 197, 33, 0),
            (3, 10, 5, 1),
            (1, 1, 1, 0),
        ];
        for (m, n, k, pad) in shapes {
            for trans in [(false, true), (false, false), (true, false), (true, true)] {
                let (ar, ac) = if trans.0 { (k, m) } else { (m, k) };
                let (br, bc) = if trans.1 { (n, k) } else { (k, n) };
                let (lda, ldb, ldc) = (ac + pad, bc + 2 * pad, n + pad);
                let val = |i: usize, s: usize| ((i * s % 1013) as f32 / 1013.0 - 0.5) * 3.0;
                let a: Vec<f32> = (0..ar * lda).map(|i| val(i, 7919)).collect();
                let b: Vec<f32> = (0..br * ldb).map(|i| val(i, 104_729)).collect();
                let op_a = |i: usize, l: usize| a[if trans.0 { l * lda + i } else { i * lda + l }];
                let op_b = |l: usize, j: usize| b[if trans.1 { j * ldb + l } else { l * ldb + j }];
                for accumulate in [false, true] {
                    let c0: Vec<f32> = (0..m * ldc).map(|i| val(i, 31)).collect();
                    let mut c = c0.clone();
                    // β = 0 from B packed beforehand (a frozen weight), β = 1 packed per product.
                    let packed = pool.install(|| PackedB::new(trans.1, (n, k), (&b, ldb)));
                    let packed = (!accumulate).then_some(&packed);
                    pool.install(|| {
                        product_into(
                            trans,
                            (m, n, k),
                            (&a, lda),
                            (&b, ldb),
                            packed,
                            accumulate,
                            (&mut c, ldc),
                        )
                    });
                    let what = format!("{m}x{n}x{k} {trans:?}");
                    let dot = |i, j| {
                        (0..k).map(|l| from_bf16(bf16(op_a(i, l))) * from_bf16(bf16(op_b(l, j)))).sum()
                    };
                    crate::tests::assert_product((&c, &c0, ldc), (m, n), accumulate, dot, &what);
                    if !accumulate {
                        // Packed per product, the same values.
                        let fresh = pool.install(|| product(trans, (m, n, k), (&a, lda), (&b, ldb), None));
                        for (i, row) in fresh.chunks_exact(n).enumerate() {
                            assert_eq!(row, &c[i * ldc..i * ldc + n], "{what}: new buffer");
                        }
                        // On this thread, scaled: the same sums times the scale (a power of 2).
                        let mut scaled = c0.clone();
                        serial_product_into(
                            trans,
                            (m, n, k),
                            0.125,
                            (&a, lda),
                            (&b, ldb),
                            (&mut scaled, ldc),
                        );
                        for i in 0..m {
                            for j in 0..ldc {
                                let want = if j < n { 0.125 * c[i * ldc + j] } else { c0[i * ldc + j] };
                                assert_eq!(scaled[i * ldc + j], want, "{what}: serial, scaled ({i}, {j})");
                            }
                        }
                    }
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
            // SAFETY: AVX512_BF16 checked; 64 values make 32 pairs.
            let out = unsafe { filled(32, |out| to_bf16_pairs(&x, out)) };
            for (i, pair) in out.iter().enumerate() {
                assert_eq!((*pair as u16, (*pair >> 16) as u16), (bf16(x[2 * i]), bf16(x[2 * i + 1])));
            }
            // Two rows interleaved, 16 at a time and the tail; a missing second row is 0.
            let (first, second) = (&x[..21], &x[30..51]);
            for with_second in [true, false] {
                // SAFETY: AVX512_BF16 checked; `interleave` writes all of `out`.
                let out = unsafe { filled(21, |out| interleave(first, with_second.then_some(second), out)) };
                for (j, pair) in out.iter().enumerate() {
                    let hi = if with_second { bf16(second[j]) } else { 0 };
                    assert_eq!((*pair as u16, (*pair >> 16) as u16), (bf16(first[j]), hi));
                }
            }
        }
    }
}
