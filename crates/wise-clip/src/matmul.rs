//! The model's matrix products: the system BLAS on CPU when one is installed, candle's
//! own matmul otherwise.
//!
//! On CPU, ~75 % of a CLIP forward is f32 matrix products, and candle 0.11's `gemm`
//! crate runs them with its AVX2 kernel only (its AVX-512 kernels need a nightly
//! compiler): about half the rate of OpenBLAS or MKL on an AVX-512 machine (BENCHMARKS.md).
//! So [`matmul`] routes f32 CPU products through `cblas_sgemm` of a BLAS loaded at run
//! time — no build-time dependency, nothing to install for wise to work — and falls back
//! to candle's matmul on other devices and dtypes, or when no BLAS is found.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! let a = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu)?;
//! let b = Tensor::new(&[[5f32, 6.], [7., 8.]], &Device::Cpu)?;
//! let c = wise_clip::matmul::matmul(&a, &b)?;
//! assert_eq!(c.to_vec2::<f32>()?, [[19., 22.], [43., 50.]]);
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! Which BLAS: `WISE_BLAS=off` disables it, `WISE_BLAS=/path/to/lib.so` names one;
//! otherwise the first of OpenBLAS (`libopenblas.so.0`, Debian's `libopenblas0-pthread`),
//! MKL (`libmkl_rt.so`) and BLIS (`libblis.so.4`) that loads, MKL first on Intel CPUs, where
//! it is the faster of the two (+3–5 % on a ViT-B/32 training step here, BENCHMARKS.md).
//! `conda install mkl` and `pip install mkl` put MKL in an environment's `lib/`, outside the
//! loader's path: the active conda environment's and venv's are searched for it too.
//! The BLAS runs single-threaded per call and wise splits each product over its rayon
//! threads (rows of the output, columns when it has few rows, or the batch of an attention
//! product), so the BLAS's own threads never compete with rayon's for the cores. OpenBLAS 0.3.21 (Debian 12)
//! does not recognise recent Xeons and falls back to a generic core at ~20 % of the speed:
//! when `OPENBLAS_CORETYPE` is unset, wise sets it from the CPU's features before loading
//! (SkylakeX with AVX-512; Haswell with AVX2, and on AMD's Zen 4, whose AVX-512 runs on
//! 256-bit halves).
//!
//! The product is a custom op with its own backward (`dA = dC·Bᵀ`, `dB = Aᵀ·dC`, both
//! again through the BLAS), so training gets the same speed-up. Results differ from
//! candle's matmul by summation order only (~1e-6 relative).

use std::ffi::{c_char, c_int};
use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

/// `C = A · B` over the last two dims, batch dims equal; as `Tensor::matmul`. On the
/// BLAS the operands may be any strided views whose last two dims are row- or
/// column-major (candle's matmul needs some of those copied first; see [`on_blas`]).
pub fn matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if !on_blas(&[a, b]) || a.rank() < 2 || a.rank() != b.rank() {
        return a.matmul(b);
    }
    gemm_ready(a)?.apply_op2(&gemm_ready(b)?, BlasMatmul)
}

/// `x·Wᵀ + b` for `x` `[.., in]`, `W` `[out, in]`, `b` `[out]` (any float dtype: the
/// fused bias add reads an f32 master bias as it is), as PyTorch's `linear`. `W` may
/// have more dims, `[out, ..]`, read as `[out, in]` (a convolution's kernel applied to
/// flattened patches).
/// On the BLAS it is one node of the autograd graph (no reshapes around it, whose
/// backward candle pays a zero-fill and an add for), the bias is the gemm's starting
/// accumulator, not another pass, and `W`'s gradient comes out in `W`'s own layout.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    match bias {
        Some(b) if on_blas(&[x, w, b]) && x.rank() >= 2 => {
            x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, BlasLinear)
        }
        None if on_blas(&[x, w]) && x.rank() >= 2 => x.contiguous()?.apply_op2(&w.contiguous()?, BlasLinear),
        _ => {
            let (dims, last) = (x.dims(), x.dim(candle_core::D::Minus1)?);
            // A reshape is an autograd node even to the same shape: only a kernel gets one.
            let w =
                if w.rank() > 2 { w.reshape((w.dim(0)?, w.elem_count() / w.dim(0)?))? } else { w.clone() };
            let y = matmul(&x.reshape((x.elem_count() / last, last))?, &w.t()?)?;
            let y = match bias {
                Some(b) => crate::fused::bias_add(&y, b)?,
                None => y,
            };
            let mut out_dims = dims.to_vec();
            *out_dims.last_mut().expect("x has a last dim") = y.dim(1)?;
            y.reshape(out_dims)
        }
    }
}

/// One row-major `C = α·op(A)·op(B) + β·C` on raw slices, single-threaded (callers split
/// the work over rayon), through the loaded BLAS. `ld*` are leading dimensions.
///
/// Panics when no BLAS is loaded: callers check [`on_blas`] first.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    trans: (bool, bool),
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    a: (&[f32], usize),
    b: (&[f32], usize),
    beta: f32,
    (c, ldc): (&mut [f32], usize),
) {
    assert!(c.len() >= span(m, n, ldc));
    // SAFETY: `c` is borrowed mutably and holds every element of C (checked just above).
    unsafe { sgemm_to(trans, (m, n, k), alpha, a, b, beta, Out(c.as_mut_ptr()), ldc) }
}

/// Elements a row-major `rows × cols` matrix with leading dimension `ld` spans.
pub(crate) fn span(rows: usize, cols: usize, ld: usize) -> usize {
    if rows * cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    }
}

/// Where a product writes C. A raw pointer, for two reasons: the tasks of one split
/// product write disjoint blocks of the same buffer (rows, or columns, which are not
/// contiguous), and a fresh buffer for a β = 0 product needs no zero-fill first (the
/// BLAS writes every element of C and reads none).
#[derive(Clone, Copy)]
pub(crate) struct Out(pub(crate) *mut f32);

// SAFETY: an `Out` is shared only by the tasks of one product, which write disjoint
// elements of C, and the product's caller does not touch C until all of them are done.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// `offset` elements further. (A method, so that closures capture the whole `Out`, which
    /// is `Send`, not its raw field.)
    pub(crate) fn at(self, offset: usize) -> Self {
        // SAFETY: callers stay inside C's buffer (their bounds are checked by whoever made
        // the `Out`).
        Self(unsafe { self.0.add(offset) })
    }
}

/// [`sgemm`] into raw `c`.
///
/// # Safety
/// `c` must be valid for writes (and, when β ≠ 0, reads of initialised values) of every
/// `C[i][j]` at `c + i·ldc + j`, and nothing else may access those elements meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm_to(
    (trans_a, trans_b): (bool, bool),
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    beta: f32,
    c: Out,
    ldc: usize,
) {
    let blas = blas().expect("sgemm is only called when a BLAS is loaded");
    // Every element op(A)[i][l], op(B)[l][j] addressed must lie in the slices.
    let (ar, ac) = if trans_a { (k, m) } else { (m, k) };
    let (br, bc) = if trans_b { (n, k) } else { (k, n) };
    assert!(a.len() >= span(ar, ac, lda) && b.len() >= span(br, bc, ldb));
    // SAFETY: A's and B's bounds were checked just above, C's are the caller's contract.
    unsafe {
        (blas.sgemm)(
            ROW_MAJOR,
            if trans_a { TRANS } else { NO_TRANS },
            if trans_b { TRANS } else { NO_TRANS },
            m as c_int,
            n as c_int,
            k as c_int,
            alpha,
            a.as_ptr(),
            lda as c_int,
            b.as_ptr(),
            ldb as c_int,
            beta,
            c.0,
            ldc as c_int,
        )
    }
}

/// f32 tensors on the CPU, and a BLAS to run them.
pub fn on_blas(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32) && blas().is_some()
}

/// `t`, or a contiguous copy when sgemm cannot read its layout.
fn gemm_ready(t: &Tensor) -> candle_core::Result<Tensor> {
    match gemm_layout(t.dims(), t.stride()) {
        Some(_) => Ok(t.clone()),
        None => t.contiguous(),
    }
}

/// The BLAS in use, e.g. `"OpenBLAS 0.3.21 ... (core SkylakeX)"`, or `None` (candle's gemm).
pub fn blas_name() -> Option<&'static str> {
    blas().map(|b| b.name.as_str())
}

type Sgemm = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);

struct Blas {
    sgemm: Sgemm,
    name: String,
    /// Kept loaded for the life of the process (the function pointer points into it).
    _lib: libloading::Library,
}

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;
/// `MKL_THREADING_SEQUENTIAL` of mkl_service.h.
const MKL_THREADING_SEQUENTIAL: c_int = 1;

fn blas() -> Option<&'static Blas> {
    static BLAS: OnceLock<Option<Blas>> = OnceLock::new();
    BLAS.get_or_init(load_blas).as_ref()
}

fn load_blas() -> Option<Blas> {
    let cpu = Cpu::this();
    let candidates: Vec<String> = match std::env::var("WISE_BLAS") {
        Ok(v) if v == "off" || v == "0" || v.is_empty() => return None,
        Ok(path) => vec![path],
        Err(_) => {
            let envs =
                ["CONDA_PREFIX", "VIRTUAL_ENV"].map(|v| std::env::var_os(v).map(std::path::PathBuf::from));
            candidates(cpu.intel, &envs.into_iter().flatten().collect::<Vec<_>>())
        }
    };
    if std::env::var_os("OPENBLAS_CORETYPE").is_none() {
        if let Some(core) = openblas_core(&cpu) {
            // Read by OpenBLAS's initialiser when the library is loaded, just below.
            std::env::set_var("OPENBLAS_CORETYPE", core);
        }
    }
    for path in candidates {
        // SAFETY: loading a BLAS runs its initialisers, which only set up its own state.
        let Ok(lib) = (unsafe { libloading::Library::new(&path) }) else { continue };
        // SAFETY: `cblas_sgemm` has this signature in every CBLAS (LP64 builds, which
        // the library names above are).
        let Ok(sgemm) = (unsafe { lib.get::<Sgemm>(b"cblas_sgemm\0") }).map(|s| *s) else { continue };
        let mut name = path.clone();
        // SAFETY: optional OpenBLAS / MKL / BLIS entry points with these C signatures.
        unsafe {
            if let Ok(f) = lib.get::<unsafe extern "C" fn(c_int)>(b"openblas_set_num_threads\0") {
                f(1);
            }
            // MKL: no OpenMP threads at all (the sequential layer; it needs no libiomp5 or
            // libgomp either). `MKL_Set_Num_Threads_Local(1)`, used before, held for the
            // loading thread only: every other rayon thread's call ran MKL's default of a
            // thread per core, two products' threads fighting over each core (7 % of a
            // training step).
            if let Ok(f) = lib.get::<unsafe extern "C" fn(c_int) -> c_int>(b"MKL_Set_Threading_Layer\0") {
                f(MKL_THREADING_SEQUENTIAL);
            }
            if let Ok(f) = lib.get::<unsafe extern "C" fn(c_int)>(b"MKL_Set_Num_Threads\0") {
                f(1);
            }
            if let Ok(f) = lib.get::<unsafe extern "C" fn(i64)>(b"bli_thread_set_num_threads\0") {
                f(1);
            }
            let text = |sym: &[u8]| -> Option<String> {
                let f = lib.get::<unsafe extern "C" fn() -> *const c_char>(sym).ok()?;
                let p = f();
                (!p.is_null()).then(|| std::ffi::CStr::from_ptr(p).to_string_lossy().trim().to_string())
            };
            if let Some(config) = text(b"openblas_get_config\0") {
                name = format!("{config} (core {})", text(b"openblas_get_corename\0").unwrap_or_default());
            }
            if let Ok(f) = lib.get::<unsafe extern "C" fn(*mut c_char, c_int)>(b"MKL_Get_Version_String\0") {
                let mut version = [0 as c_char; 256];
                f(version.as_mut_ptr(), version.len() as c_int - 1);
                let version = std::ffi::CStr::from_ptr(version.as_ptr()).to_string_lossy();
                name = format!("{} ({path})", version.trim());
            }
        }
        return Some(Blas { sgemm, name, _lib: lib });
    }
    None
}

/// The BLAS libraries tried, in order, when `WISE_BLAS` names none: MKL first on Intel
/// CPUs, where it is the faster (3–5 % on a ViT-B/32 training step, BENCHMARKS.md), else
/// OpenBLAS first (the usual system BLAS; MKL's speed on other vendors' CPUs varies).
fn search_order(intel: bool) -> [&'static str; 6] {
    if intel {
        [
            "libmkl_rt.so.3",
            "libmkl_rt.so.2",
            "libmkl_rt.so",
            "libopenblas.so.0",
            "libopenblas.so",
            "libblis.so.4",
        ]
    } else {
        [
            "libopenblas.so.0",
            "libopenblas.so",
            "libmkl_rt.so.3",
            "libmkl_rt.so.2",
            "libmkl_rt.so",
            "libblis.so.4",
        ]
    }
}

/// [`search_order`], each MKL name tried first in the `lib/` of the active Python
/// environments (`envs`: conda's `$CONDA_PREFIX`, a venv's `$VIRTUAL_ENV`), where `conda
/// install mkl` and `pip install mkl` put it, outside the loader's path.
fn candidates(intel: bool, envs: &[std::path::PathBuf]) -> Vec<String> {
    let mut out = Vec::new();
    for name in search_order(intel) {
        if name.starts_with("libmkl_rt") {
            out.extend(envs.iter().map(|env| env.join("lib").join(name).to_string_lossy().into_owned()));
        }
        out.push(name.to_string());
    }
    out
}

/// What picks the BLAS and its kernels: the CPU's vendor and family (`cpuid` leaves 0
/// and 1) and its widest f32 FMA units.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cpu {
    intel: bool,
    amd: bool,
    /// Base family plus extended family, as `/proc/cpuinfo`'s "cpu family" (AMD Zen 3
    /// and Zen 4: 25).
    family: u32,
    avx512: bool,
    avx2_fma: bool,
}

impl Cpu {
    fn this() -> Cpu {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: every x86-64 CPU has `cpuid`. Recent compilers declare `__cpuid` safe;
            // the `unsafe` block keeps the older ones back to the crate's rust-version building.
            #[allow(unused_unsafe)]
            let (id, eax) = unsafe { (std::arch::x86_64::__cpuid(0), std::arch::x86_64::__cpuid(1).eax) };
            let vendor: Vec<u8> = [id.ebx, id.edx, id.ecx].iter().flat_map(|r| r.to_le_bytes()).collect();
            let base = (eax >> 8) & 0xf;
            Cpu {
                intel: vendor == b"GenuineIntel",
                amd: vendor == b"AuthenticAMD",
                family: if base == 0xf { base + ((eax >> 20) & 0xff) } else { base },
                avx512: std::arch::is_x86_feature_detected!("avx512f"),
                avx2_fma: std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Cpu { intel: false, amd: false, family: 0, avx512: false, avx2_fma: false }
    }
}

/// Whether this is an Intel CPU (where [`crate::f32_products::max_rows`] differs).
pub(crate) fn cpu_is_intel() -> bool {
    Cpu::this().intel
}

/// The OpenBLAS core type for `cpu`: the kernels for its widest f32 FMA units, except on
/// AMD's Zen 4 (family 25 with AVX-512), which runs AVX-512 on 256-bit halves: there the
/// AVX2 (Haswell) kernels are 4–5 % faster on the model's products and ViT-B/32
/// inference than the SkylakeX ones (BENCHMARKS.md, session 12).
fn openblas_core(cpu: &Cpu) -> Option<&'static str> {
    match cpu {
        Cpu { amd: true, family: 25, avx2_fma: true, .. } => Some("Haswell"),
        Cpu { avx512: true, .. } => Some("SkylakeX"),
        Cpu { avx2_fma: true, .. } => Some("Haswell"),
        _ => None,
    }
}

/// How a `[.., rows, cols]` operand lies in memory for `cblas_sgemm`.
#[derive(Debug, Clone, PartialEq)]
struct GemmLayout {
    /// Stored transposed (column-major in the last two dims).
    trans: bool,
    /// Leading dimension.
    ld: usize,
    /// The batch dims and their strides (any strides: a head-split view needs no copy).
    batch_dims: Vec<usize>,
    batch_strides: Vec<usize>,
}

impl GemmLayout {
    fn batch(&self) -> usize {
        self.batch_dims.iter().product()
    }

    /// Storage offset of matrix `i` of the flattened batch.
    fn offset(&self, mut i: usize) -> usize {
        let mut off = 0;
        for (d, s) in self.batch_dims.iter().zip(&self.batch_strides).rev() {
            off += (i % d) * s;
            i /= d;
        }
        off
    }
}

/// `Some` when the last two dims are row- or column-major; `None` asks for a contiguous
/// copy first.
fn gemm_layout(dims: &[usize], stride: &[usize]) -> Option<GemmLayout> {
    let n = dims.len();
    let (rows, cols) = (dims[n - 2], dims[n - 1]);
    let (sr, sc) = (stride[n - 2], stride[n - 1]);
    let (trans, ld) = if (sc == 1 || cols == 1) && sr >= cols.max(1) {
        (false, sr.max(cols).max(1))
    } else if (sr == 1 || rows == 1) && sc >= rows.max(1) {
        (true, sc.max(rows).max(1))
    } else {
        return None;
    };
    Some(GemmLayout {
        trans,
        ld,
        batch_dims: dims[..n - 2].to_vec(),
        batch_strides: stride[..n - 2].to_vec(),
    })
}

/// `A·B (+ bias on every row)` for operands laid out as `la`, `lb`: a new contiguous
/// `[batch, m, cols]` buffer. Work is split over rayon's threads: whole matrices when the
/// batch covers the threads, else blocks of C ([`par_sgemm`]).
fn gemm(
    a: &[f32],
    la: &GemmLayout,
    b: &[f32],
    lb: &GemmLayout,
    (m, k, cols): (usize, usize, usize),
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let (batch, size) = (la.batch(), m * cols);
    if k == 0 || size == 0 {
        return match bias {
            Some(bias) => bias.repeat(batch * m),
            None => vec![0.0; batch * size],
        };
    }
    // The bias rows are the starting accumulator (β = 1); without one, C starts
    // unwritten (β = 0), not zero-filled.
    let (mut out, beta) = match bias {
        Some(bias) => (bias.repeat(batch * m), 1.0),
        None => (Vec::with_capacity(batch * size), 0.0),
    };
    let c = Out(out.as_mut_ptr());
    // In bf16 mode, as the fused blocks' products: the patch embedding, projections, heads
    // and their gradients (a product of the batch, split over the threads), and batched
    // products (a matrix per thread).
    let bf16 = crate::block::in_bf16_mode() && crate::bf16_products::fits(cols, k);
    let one = |i: usize, split: bool| {
        let a = (&a[la.offset(i)..], la.ld);
        let b = (&b[lb.offset(i)..], lb.ld);
        let trans = (la.trans, lb.trans);
        let how = crate::bf16_products::How { alpha: 1.0, accumulate: beta == 1.0, parallel: split };
        // SAFETY: `out` has room for `batch` matrices of `size`; matrix i is this call's only.
        unsafe {
            if bf16 {
                crate::bf16_products::product_to(trans, (m, cols, k), a, b, None, how, c.at(i * size), cols)
            } else if split {
                par_sgemm_to(trans, (m, cols, k), 1.0, a, b, beta, c.at(i * size), cols)
            } else {
                sgemm_to(trans, (m, cols, k), 1.0, a, b, beta, c.at(i * size), cols)
            }
        }
    };
    if batch >= rayon::current_num_threads() {
        (0..batch).into_par_iter().for_each(|i| one(i, false));
    } else {
        (0..batch).for_each(|i| one(i, true));
    }
    // SAFETY: every element is initialised: the bias rows, or written by a β = 0 product.
    unsafe { out.set_len(batch * size) };
    out
}

/// Rows (columns) per task, at least: a thread's share below this is not worth handing over.
const MIN_PER_TASK: usize = 16;

/// Rows per thread from which a product is split by rows even when it has more columns.
const ROWS_PER_THREAD: usize = 256;

/// How [`par_sgemm`] splits `C` (`m × n`) over `threads`: by rows, or by columns.
///
/// Each task's BLAS call packs all of the operand it shares with the others: split by
/// rows, every thread packs the whole of op(B) (`n × k`, a layer's weight in a forward);
/// by columns, the whole of op(A) (`m × k`). So columns pack less when `m < n`, and for few
/// rows packing is most of the work: a batch-1 ViT-B/32 forward (50 rows a product) runs
/// ~30 % faster split by columns (BENCHMARKS.md, session 11). With a few hundred rows a
/// thread the packing is small beside the product and rows are as fast or faster (a
/// training step's 800 rows: session 8). Too few columns to go round: rows.
fn split_by_rows((m, n): (usize, usize), threads: usize) -> bool {
    n < threads * MIN_PER_TASK || (m >= threads * MIN_PER_TASK && (m >= n || m >= threads * ROWS_PER_THREAD))
}

/// [`sgemm`] split over rayon's threads, one single-threaded sgemm per block of C: blocks
/// of rows or of columns, as [`split_by_rows`] decides.
#[allow(clippy::too_many_arguments)]
pub(crate) fn par_sgemm(
    trans: (bool, bool),
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    a: (&[f32], usize),
    b: (&[f32], usize),
    beta: f32,
    (c, ldc): (&mut [f32], usize),
) {
    assert!(c.len() >= span(m, n, ldc));
    // SAFETY: `c` is borrowed mutably and holds every element of C (checked just above).
    unsafe { par_sgemm_to(trans, (m, n, k), alpha, a, b, beta, Out(c.as_mut_ptr()), ldc) }
}

/// `α·op(A)·op(B)`, `m × n`, in a new row-major buffer, split as [`par_sgemm`]. The buffer
/// is never zero-filled: with β = 0 a BLAS writes every element of C and reads none.
pub(crate) fn product(
    trans: (bool, bool),
    (m, n, k): (usize, usize, usize),
    a: (&[f32], usize),
    b: (&[f32], usize),
) -> Vec<f32> {
    if k == 0 {
        return vec![0.0; m * n];
    }
    let mut c = Vec::with_capacity(m * n);
    // SAFETY: `c` has room for the m × n matrix, which the β = 0 product writes whole
    // before `set_len` exposes it.
    unsafe {
        par_sgemm_to(trans, (m, n, k), 1.0, a, b, 0.0, Out(c.as_mut_ptr()), n);
        c.set_len(m * n);
    }
    c
}

/// [`par_sgemm`] into raw `c`.
///
/// # Safety
/// As [`sgemm_to`].
#[allow(clippy::too_many_arguments)]
unsafe fn par_sgemm_to(
    (trans_a, trans_b): (bool, bool),
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    beta: f32,
    c: Out,
    ldc: usize,
) {
    if m * n == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let trans = (trans_a, trans_b);
    if split_by_rows((m, n), threads) {
        let per = m.div_ceil(threads).max(MIN_PER_TASK);
        (0..m.div_ceil(per)).into_par_iter().for_each(|j| {
            let (r0, rows) = (j * per, per.min(m - j * per));
            // Row `r0` of op(A): row-major → `r0 * lda`; transposed → column `r0`.
            let a = (&a[if trans_a { r0 } else { r0 * lda }..], lda);
            // SAFETY: rows r0.. of C are this task's only; the caller vouches for C.
            unsafe { sgemm_to(trans, (rows, n, k), alpha, a, (b, ldb), beta, c.at(r0 * ldc), ldc) }
        });
    } else {
        let per = n.div_ceil(threads).max(MIN_PER_TASK);
        (0..n.div_ceil(per)).into_par_iter().for_each(|j| {
            let (c0, cols) = (j * per, per.min(n - j * per));
            // Column `c0` of op(B): row-major → `c0`; transposed → row `c0`.
            let b = (&b[if trans_b { c0 * ldb } else { c0 }..], ldb);
            // SAFETY: columns c0.. of C are this task's only; the caller vouches for C.
            unsafe { sgemm_to(trans, (m, cols, k), alpha, (a, lda), b, beta, c.at(c0), ldc) }
        });
    }
}

/// The f32 data of a custom op's operand and its gemm layout.
fn operand<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<(&'a [f32], GemmLayout)> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("blas-matmul: f32 operands expected") };
    let layout = gemm_layout(l.dims(), l.stride())
        .ok_or_else(|| candle_core::Error::msg(format!("blas-matmul: unsupported layout {l:?}")))?;
    Ok((&v[l.start_offset()..], layout))
}

struct BlasMatmul;

impl CustomOp2 for BlasMatmul {
    fn name(&self) -> &'static str {
        "blas-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (da, db) = (l1.dims(), l2.dims());
        let n = da.len();
        let (m, k, k2, cols) = (da[n - 2], da[n - 1], db[n - 2], db[n - 1]);
        if k != k2 || da[..n - 2] != db[..n - 2] {
            candle_core::bail!("blas-matmul: shapes {da:?} and {db:?} do not multiply");
        }
        let ((a, la), (b, lb)) = (operand(s1, l1)?, operand(s2, l2)?);
        let out = gemm(a, &la, b, &lb, (m, k, cols), None);
        let mut shape = da[..n - 2].to_vec();
        shape.extend([m, cols]);
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // An operand no variable depends on (the image patches) needs no gradient.
        let n = a.rank();
        let grad_a = a.track_op().then(|| matmul(grad, &b.transpose(n - 2, n - 1)?)).transpose()?;
        let grad_b = b.track_op().then(|| matmul(&a.transpose(n - 2, n - 1)?, grad)).transpose()?;
        Ok((grad_a, grad_b))
    }
}

struct BlasLinear;

impl BlasLinear {
    /// `(x [.., in], W [out, ..] as [out, in])`, both contiguous, plus the bias when
    /// given → `[.., out]`. Taking `W` itself (not a transposed view) keeps its gradient
    /// contiguous: candle would add a transposed gradient into the weight's with a slow
    /// strided pass.
    fn forward(
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let k = l1.dims().last().copied().unwrap_or(0);
        let rows = l1.shape().elem_count() / k.max(1);
        let flat = Layout::contiguous_with_offset((rows, k), l1.start_offset());
        let out = l2.dims().first().copied().unwrap_or(0);
        let k2 = l2.shape().elem_count() / out.max(1);
        if l2.dims().len() < 2 || k != k2 {
            candle_core::bail!("blas-linear: x {:?} and W {:?} do not multiply", l1.dims(), l2.dims());
        }
        let wt = Layout::new(Shape::from((k2, out)), vec![1, k2], l2.start_offset());
        let ((x, lx), (w, lw)) = (operand(s1, &flat)?, operand(s2, &wt)?);
        let b = match bias {
            None => None,
            Some((CpuStorage::F32(b), l3)) => match l3.contiguous_offsets() {
                Some((start, end)) if end - start == out => Some(&b[start..end]),
                _ => candle_core::bail!("blas-linear: W {:?}, bias {:?}", l2.dims(), l3.dims()),
            },
            Some(_) => candle_core::bail!("blas-linear: f32 bias expected"),
        };
        let y = gemm(x, &lx, w, &lw, (rows, k, out), b);
        let mut dims = l1.dims().to_vec();
        *dims.last_mut().expect("rank >= 2") = out;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    /// The gradients of `x` and `W` (in `W`'s shape), each when something depends on it
    /// (the image patches and frozen weights need none), and the incoming gradient as
    /// `[rows, out]`.
    fn grads(
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Tensor)> {
        let out = w.dim(0)?;
        let k = w.elem_count() / out;
        let rows = x.elem_count() / k;
        let (x2, g2) = (x.reshape((rows, k))?, grad.contiguous()?.reshape((rows, out))?);
        let grad_x =
            x.track_op().then(|| matmul(&g2, &w.reshape((out, k))?)?.reshape(x.shape())).transpose()?;
        let grad_w = w.track_op().then(|| matmul(&g2.t()?, &x2)?.reshape(w.shape())).transpose()?;
        Ok((grad_x, grad_w, g2))
    }
}

impl CustomOp2 for BlasLinear {
    fn name(&self) -> &'static str {
        "blas-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Self::forward((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (grad_x, grad_w, _) = Self::grads(x, w, grad)?;
        Ok((grad_x, grad_w))
    }
}

impl CustomOp3 for BlasLinear {
    fn name(&self) -> &'static str {
        "blas-linear"
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
        Self::forward((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (grad_x, grad_w, g2) = Self::grads(x, w, grad)?;
        // Column sums as a product with ones: candle's sum over dim 0 walks the rows one
        // element at a time, the BLAS streams them.
        let ones = Tensor::ones((1, g2.dim(0)?), DType::F32, x.device())?;
        let grad_b = b.track_op().then(|| matmul(&ones, &g2)?.squeeze(0)).transpose()?;
        Ok((grad_x, grad_w, grad_b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    /// An active conda environment's or venv's MKL is tried before the loader's, and
    /// only for MKL's names.
    #[test]
    fn mkl_is_looked_for_in_python_environments() {
        let envs = [std::path::PathBuf::from("/opt/conda/envs/x"), std::path::PathBuf::from("/venv")];
        let intel = candidates(true, &envs);
        assert_eq!(
            intel[..3],
            ["/opt/conda/envs/x/lib/libmkl_rt.so.3", "/venv/lib/libmkl_rt.so.3", "libmkl_rt.so.3"]
        );
        assert_eq!(intel.len(), 6 + 3 * 2);
        let other = candidates(false, &envs);
        assert_eq!(
            other[..3],
            ["libopenblas.so.0", "libopenblas.so", "/opt/conda/envs/x/lib/libmkl_rt.so.3"]
        );
        assert_eq!(candidates(true, &[]), search_order(true));
    }

    /// MKL leads the search on Intel CPUs, OpenBLAS elsewhere; every library is tried
    /// either way, once.
    #[test]
    fn search_order_puts_the_faster_blas_first() {
        let (intel, other) = (search_order(true), search_order(false));
        assert!(intel[0].starts_with("libmkl_rt") && other[0].starts_with("libopenblas"));
        let (mut a, mut b) = (intel.to_vec(), other.to_vec());
        a.sort();
        b.sort();
        assert_eq!(a, b);
        a.dedup();
        assert_eq!(a.len(), 6);
    }

    /// `cpuid` read as `/proc/cpuinfo` reads it: vendor, family, AVX-512.
    #[test]
    fn cpu_is_described_as_the_kernel_sees_it() {
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else { return };
        let field = |name: &str| {
            info.lines().find(|l| l.starts_with(name)).and_then(|l| l.split(':').nth(1)).map(str::trim)
        };
        let cpu = Cpu::this();
        assert_eq!(cpu.intel, field("vendor_id") == Some("GenuineIntel"));
        assert_eq!(cpu.amd, field("vendor_id") == Some("AuthenticAMD"));
        if let Some(family) = field("cpu family") {
            assert_eq!(cpu.family.to_string(), family);
        }
        assert_eq!(cpu.avx512, field("flags").is_some_and(|f| f.split(' ').any(|x| x == "avx512f")));
    }

    /// SkylakeX kernels for AVX-512, Haswell's for AVX2 and for AMD's Zen 4.
    #[test]
    fn openblas_kernels_follow_the_fma_units() {
        let xeon = Cpu { intel: true, amd: false, family: 6, avx512: true, avx2_fma: true };
        let zen4 = Cpu { intel: false, amd: true, family: 25, ..xeon };
        let zen3 = Cpu { avx512: false, ..zen4 };
        // Zen 5 (family 26) has full-width AVX-512 units: not measured, the default rule.
        let zen5 = Cpu { family: 26, ..zen4 };
        let old = Cpu { avx512: false, avx2_fma: false, ..xeon };
        assert_eq!(openblas_core(&xeon), Some("SkylakeX"));
        assert_eq!(openblas_core(&Cpu { avx512: false, ..xeon }), Some("Haswell"));
        assert_eq!(openblas_core(&zen4), Some("Haswell"));
        assert_eq!(openblas_core(&zen3), Some("Haswell"));
        assert_eq!(openblas_core(&zen5), Some("SkylakeX"));
        assert_eq!(openblas_core(&old), None);
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        d / b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn layouts_of_views() {
        let layout = |dims: &[usize], stride: &[usize]| gemm_layout(dims, stride).map(|l| (l.trans, l.ld));
        // Contiguous [2, 3, 4, 5]; its transpose of the last two dims; a head-split view
        // [B, T, H, D] → [B, H, T, D] (batch offsets b·60 + h·5, no copy); a column slice.
        assert_eq!(layout(&[2, 3, 4, 5], &[60, 20, 5, 1]), Some((false, 5)));
        assert_eq!(layout(&[2, 3, 5, 4], &[60, 20, 1, 5]), Some((true, 5)));
        let heads = gemm_layout(&[2, 3, 4, 5], &[60, 5, 15, 1]).unwrap();
        assert_eq!((heads.trans, heads.ld), (false, 15));
        assert_eq!((0..6).map(|i| heads.offset(i)).collect::<Vec<_>>(), [0, 5, 10, 60, 65, 70]);
        assert_eq!(layout(&[4, 3], &[10, 1]), Some((false, 10)));
        // Neither dim unit-stride: needs a copy.
        assert_eq!(layout(&[4, 3], &[6, 2]), None);
    }

    /// `α·op(A)·op(B) + β·C` by the definition, in f64.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        (ta, tb): (bool, bool),
        (m, n, k): (usize, usize, usize),
        alpha: f64,
        (a, lda): (&[f32], usize),
        (b, ldb): (&[f32], usize),
        beta: f64,
        (c, ldc): (&[f32], usize),
    ) -> Vec<f64> {
        let at = |i: usize, l: usize| a[if ta { l * lda + i } else { i * lda + l }] as f64;
        let bt = |l: usize, j: usize| b[if tb { j * ldb + l } else { l * ldb + j }] as f64;
        let mut out = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k).map(|l| at(i, l) * bt(l, j)).sum();
                out.push(alpha * dot + if beta == 0.0 { 0.0 } else { beta * c[i * ldc + j] as f64 });
            }
        }
        out
    }

    /// Products split over four threads — by rows, and by columns when C has fewer rows than
    /// the threads need (one pooled token per image, a bias gradient) — equal the definition
    /// for every transpose, padded leading dimensions and β = 1 onto a wider C; and
    /// `product` (β = 0 into a buffer never zero-filled) equals it too.
    #[test]
    fn split_products_match_the_definition() {
        if blas().is_none() {
            return;
        }
        let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
        let values = |len: usize, seed: usize| -> Vec<f32> {
            (0..len).map(|i| ((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0).collect()
        };
        let close = |ours: &[f32], theirs: &[f64], what: &str| {
            let scale = theirs.iter().fold(1f64, |m, v| m.max(v.abs()));
            let diff = ours.iter().zip(theirs).fold(0f64, |m, (o, t)| m.max((*o as f64 - t).abs()));
            assert!(diff / scale < 1e-5, "{what}: relative difference {}", diff / scale);
        };
        // Row split (70 rows, 45 columns), column split (70 rows of 200 columns: more columns
        // than rows; 5 and 1 rows of 70 and 64 columns), and too few of either to split (3 × 20).
        for (m, n, k) in [(70, 45, 13), (70, 200, 13), (5, 70, 13), (1, 64, 9), (3, 20, 7)] {
            for trans in [(false, false), (false, true), (true, false), (true, true)] {
                let what = format!("{m}×{n}×{k}, transposes {trans:?}");
                let (ar, ac) = if trans.0 { (k, m) } else { (m, k) };
                let (br, bc) = if trans.1 { (n, k) } else { (k, n) };
                let (lda, ldb, ldc) = (ac + 3, bc + 2, n + 5);
                let (a, b) = (values(ar * lda, 1), values(br * ldb, 2));
                let mut c = values(m * ldc, 3);
                let expect = reference(trans, (m, n, k), 0.5, (&a, lda), (&b, ldb), 1.0, (&c, ldc));
                pool.install(|| par_sgemm(trans, (m, n, k), 0.5, (&a, lda), (&b, ldb), 1.0, (&mut c, ldc)));
                let rows: Vec<f32> = c.chunks(ldc).flat_map(|r| r[..n].to_vec()).collect();
                close(&rows, &expect, &what);
                let fresh = pool.install(|| product(trans, (m, n, k), (&a, lda), (&b, ldb)));
                let expect = reference(trans, (m, n, k), 1.0, (&a, lda), (&b, ldb), 0.0, (&c, ldc));
                assert_eq!(fresh.len(), m * n);
                close(&fresh, &expect, &format!("product {what}"));
            }
        }
    }

    /// ViT-B/32's products on two threads: a batch-1 forward (50 rows) and a batch-8 one
    /// (400) split by columns, a training batch's (800) and the weight gradients by rows;
    /// the pooled block's 16 rows by columns; a 20-column product by rows.
    #[test]
    fn splits_few_rows_by_columns() {
        assert!(!split_by_rows((50, 3072), 2) && !split_by_rows((50, 768), 2));
        assert!(!split_by_rows((400, 768), 2) && !split_by_rows((16, 3072), 2));
        assert!(split_by_rows((800, 3072), 2) && split_by_rows((800, 768), 2));
        assert!(split_by_rows((768, 3072), 2) && split_by_rows((3072, 768), 2));
        assert!(split_by_rows((400, 20), 2) && split_by_rows((3000, 2304), 16));
    }

    fn ours_shape(x: &Tensor, y: &Tensor) -> Vec<usize> {
        let mut s = x.dims().to_vec();
        *s.last_mut().unwrap() = *y.dims().last().unwrap();
        s
    }

    /// With and without a bias, and with a weight of more dims (`[out, 2, 3, 4]`, as a
    /// convolution's kernel is), the output and every gradient (in each variable's own
    /// shape) equal candle's matmul plus bias.
    #[test]
    fn linear_matches_matmul_plus_bias() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1., (3, 37, 24), &dev)?;
        let b = Var::randn(0f32, 1., 19, &dev)?;
        let probe = Tensor::randn(0f32, 1., (3, 37, 19), &dev)?;
        for w_shape in [&[19, 24][..], &[19, 2, 3, 4]] {
            let w = Var::randn(0f32, 1., w_shape, &dev)?;
            for bias in [Some(&b), None] {
                let ours = linear(&x, &w, bias.map(|b| b.as_tensor()))?;
                assert_eq!(ours.dims(), [3, 37, 19]);
                let theirs = x.reshape((111, 24))?.matmul(&w.reshape((19, 24))?.t()?)?;
                let theirs = match bias {
                    Some(b) => theirs.broadcast_add(b)?,
                    None => theirs,
                }
                .reshape((3, 37, 19))?;
                assert!(max_rel(&ours, &theirs) < 1e-5);
                let g1 = (ours * &probe)?.sum_all()?.backward()?;
                let g2 = (theirs * &probe)?.sum_all()?.backward()?;
                for v in [Some(&x), Some(&w), bias].into_iter().flatten() {
                    let (ours, theirs) = (g1.get(v).expect("gradient"), g2.get(v).expect("gradient"));
                    assert_eq!(ours.dims(), v.dims());
                    assert!(max_rel(ours, theirs) < 1e-5, "{w_shape:?}, bias {}", bias.is_some());
                }
            }
        }
        Ok(())
    }

    /// In bf16 mode a patch embedding's `linear` (`W` `[128, 4, 4, 4]`, a bias) and its
    /// gradients (`dX = dY·W`, `dW = dYᵀ·X`, through `matmul`), and a batched product with
    /// a transposed operand and 50 columns (a matrix per thread) and its gradients, are
    /// f32's up to bf16's rounding, and not equal to them, where the CPU has AVX512_BF16
    /// and a BLAS is loaded; equal elsewhere.
    #[test]
    fn linear_in_bf16_mode_is_f32_up_to_rounding() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1., (2, 49, 64), &dev)?;
        let w = Var::randn(0f32, 1., (128, 4, 4, 4), &dev)?;
        let b = Var::randn(0f32, 1., 128, &dev)?;
        let probe = Tensor::randn(0f32, 1., (2, 49, 128), &dev)?;
        let run = || -> candle_core::Result<(Tensor, candle_core::backprop::GradStore)> {
            let y = linear(&x, &w, Some(b.as_tensor()))?;
            let grads = (&y * &probe)?.sum_all()?.backward()?;
            Ok((y, grads))
        };
        let (y, grads) = run()?;
        let (y16, grads16) = crate::bf16_mode(run)?;
        let bf16 = crate::bf16_mode(crate::in_bf16_mode);
        let close = |a: &Tensor, b: &Tensor, what: &str| {
            let diff = max_rel(a, b);
            assert!(if bf16 { diff > 0.0 && diff < 1e-2 } else { diff == 0.0 }, "{what}: {diff}");
        };
        close(&y16, &y, "y");
        close(grads16.get(&x).unwrap(), grads.get(&x).unwrap(), "dX");
        close(grads16.get(&w).unwrap(), grads.get(&w).unwrap(), "dW");
        let q = Var::randn(0f32, 1., (8, 50, 24), &dev)?;
        let k = Var::randn(0f32, 1., (8, 50, 24), &dev)?;
        let probe = Tensor::randn(0f32, 1., (8, 50, 50), &dev)?;
        let run = || -> candle_core::Result<(Tensor, candle_core::backprop::GradStore)> {
            let s = matmul(&q, &k.t()?)?;
            let grads = (&s * &probe)?.sum_all()?.backward()?;
            Ok((s, grads))
        };
        let (s, grads) = run()?;
        let (s16, grads16) = crate::bf16_mode(run)?;
        close(&s16, &s, "Q·Kᵀ");
        close(grads16.get(&q).unwrap(), grads.get(&q).unwrap(), "dQ");
        close(grads16.get(&k).unwrap(), grads.get(&k).unwrap(), "dK");
        Ok(())
    }

    /// Forward and both gradients equal candle's matmul's, for plain, transposed, batched
    /// and strided operands. Under CI a BLAS must be installed (`.ci/run` installs OpenBLAS),
    /// so the BLAS path itself is what is checked there.
    #[test]
    fn matches_candle_matmul_forward_and_backward() -> candle_core::Result<()> {
        if std::env::var_os("CI").is_some() {
            assert!(blas_name().is_some(), "CI must have a BLAS (libopenblas0-pthread)");
        }
        let dev = Device::Cpu;
        let cases: [(&[usize], &[usize], bool, bool); 5] = [
            (&[33, 70], &[70, 45], false, false),
            (&[33, 70], &[45, 70], false, true),
            (&[70, 33], &[70, 45], true, false),
            (&[3, 4, 17, 8], &[3, 4, 17, 8], false, true),
            // Head-split views as attention makes them: [B, T, H, D] → [B, H, T, D].
            (&[3, 17, 4, 8], &[3, 17, 4, 8], false, true),
        ];
        for (sa, sb, ta, tb) in cases {
            let a = Var::randn(0f32, 1., sa, &dev)?;
            let b = Var::randn(0f32, 1., sb, &dev)?;
            let n = sa.len();
            let heads =
                |x: &Var| if n == 4 && sa[1] == 17 { x.transpose(1, 2) } else { Ok(x.as_tensor().clone()) };
            let op = |x: &Var, t: bool| {
                let x = heads(x)?;
                if t {
                    x.transpose(n - 2, n - 1)
                } else {
                    Ok(x)
                }
            };
            let (x, y) = (op(&a, ta)?, op(&b, tb)?);
            let w = Tensor::randn(0f32, 1., ours_shape(&x, &y), &dev)?;
            let ours = matmul(&x, &y)?;
            let theirs = x.contiguous()?.matmul(&y.contiguous()?)?;
            assert!(max_rel(&ours, &theirs) < 1e-5, "{sa:?}·{sb:?}");
            let g1 = (ours * &w)?.sum_all()?.backward()?;
            let g2 = (theirs * &w)?.sum_all()?.backward()?;
            for v in [&a, &b] {
                let (x, y) = (g1.get(v).expect("gradient"), g2.get(v).expect("gradient"));
                assert!(max_rel(x, y) < 1e-5, "gradient of {sa:?}·{sb:?}");
            }
        }
        Ok(())
    }
}
