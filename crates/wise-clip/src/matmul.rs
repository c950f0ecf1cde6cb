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
//! MKL (`libmkl_rt.so`) and BLIS (`libblis.so.4`) that loads. The BLAS runs
//! single-threaded per call and wise splits each product over its rayon threads (rows of
//! the output, or the batch of an attention product), so the BLAS's own threads never
//! compete with rayon's for the cores. OpenBLAS 0.3.21 (Debian 12) does not recognise
//! recent Xeons and falls back to a generic core at ~20 % of the speed: when
//! `OPENBLAS_CORETYPE` is unset, wise sets it from the CPU's features before loading
//! (SkylakeX with AVX-512, Haswell with AVX2).
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

/// `x·Wᵀ + b` for `x` `[.., in]`, `W` `[out, in]`, `b` `[out]`, as PyTorch's `linear`.
/// On the BLAS it is one node of the autograd graph (no reshapes around it, whose
/// backward candle pays a zero-fill and an add for) and the bias is the gemm's starting
/// accumulator, not another pass.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    match bias {
        Some(b) if on_blas(&[x, w, b]) && x.rank() >= 2 => {
            x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, BlasLinear)
        }
        _ => {
            let (dims, last) = (x.dims(), x.dim(candle_core::D::Minus1)?);
            let y = matmul(&x.reshape((x.elem_count() / last, last))?, &w.t()?)?;
            let y = match bias {
                Some(b) => y.broadcast_add(b)?,
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
    (trans_a, trans_b): (bool, bool),
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    beta: f32,
    (c, ldc): (&mut [f32], usize),
) {
    let blas = blas().expect("sgemm is only called when a BLAS is loaded");
    // Every element op(A)[i][l], op(B)[l][j], C[i][j] addressed must lie in the slices.
    let last =
        |rows: usize, cols: usize, ld: usize| if rows * cols == 0 { 0 } else { (rows - 1) * ld + cols };
    let (ar, ac) = if trans_a { (k, m) } else { (m, k) };
    let (br, bc) = if trans_b { (n, k) } else { (k, n) };
    assert!(a.len() >= last(ar, ac, lda) && b.len() >= last(br, bc, ldb) && c.len() >= last(m, n, ldc));
    // SAFETY: the bounds of all three operands were checked just above.
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
            c.as_mut_ptr(),
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

fn blas() -> Option<&'static Blas> {
    static BLAS: OnceLock<Option<Blas>> = OnceLock::new();
    BLAS.get_or_init(load_blas).as_ref()
}

fn load_blas() -> Option<Blas> {
    let candidates: Vec<String> = match std::env::var("WISE_BLAS") {
        Ok(v) if v == "off" || v == "0" || v.is_empty() => return None,
        Ok(path) => vec![path],
        Err(_) => ["libopenblas.so.0", "libopenblas.so", "libmkl_rt.so.2", "libmkl_rt.so", "libblis.so.4"]
            .map(String::from)
            .to_vec(),
    };
    if std::env::var_os("OPENBLAS_CORETYPE").is_none() {
        if let Some(core) = openblas_core() {
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
            if let Ok(f) = lib.get::<unsafe extern "C" fn(c_int) -> c_int>(b"MKL_Set_Num_Threads_Local\0") {
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
        }
        return Some(Blas { sgemm, name, _lib: lib });
    }
    None
}

/// The OpenBLAS core type for this CPU's widest f32 FMA units.
fn openblas_core() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Some("SkylakeX");
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Some("Haswell");
        }
    }
    None
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
/// batch covers the threads, else blocks of rows ([`par_sgemm`]).
fn gemm(
    a: &[f32],
    la: &GemmLayout,
    b: &[f32],
    lb: &GemmLayout,
    (m, k, cols): (usize, usize, usize),
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let batch = la.batch();
    let mut out = vec![0f32; batch * m * cols];
    if m * cols == 0 {
        return out;
    }
    let beta = match bias {
        Some(bias) => {
            out.chunks_exact_mut(cols).for_each(|row| row.copy_from_slice(bias));
            1.0
        }
        None => 0.0,
    };
    let one = |i: usize, c: &mut [f32], split: bool| {
        let a = (&a[la.offset(i)..], la.ld);
        let b = (&b[lb.offset(i)..], lb.ld);
        let f = if split { par_sgemm } else { sgemm };
        f((la.trans, lb.trans), (m, cols, k), 1.0, a, b, beta, (c, cols));
    };
    if batch >= rayon::current_num_threads() {
        out.par_chunks_mut(m * cols).enumerate().for_each(|(i, c)| one(i, c, false));
    } else {
        out.chunks_mut(m * cols).enumerate().for_each(|(i, c)| one(i, c, true));
    }
    out
}

/// [`sgemm`] with the rows of `C` split over rayon's threads, one single-threaded sgemm
/// per block of rows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn par_sgemm(
    (trans_a, trans_b): (bool, bool),
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    (a, lda): (&[f32], usize),
    b: (&[f32], usize),
    beta: f32,
    (c, ldc): (&mut [f32], usize),
) {
    if m * n == 0 {
        return;
    }
    let rows_per_task = m.div_ceil(rayon::current_num_threads().max(1)).max(16);
    let c = &mut c[..(m - 1) * ldc + n];
    c.par_chunks_mut(rows_per_task * ldc).enumerate().for_each(|(j, c)| {
        let row0 = j * rows_per_task;
        let rows = rows_per_task.min(m - row0);
        // Row `row0` of op(A): row-major → `row0 * lda`; transposed → column `row0`.
        let a_off = if trans_a { row0 } else { row0 * lda };
        sgemm((trans_a, trans_b), (rows, n, k), alpha, (&a[a_off..], lda), b, beta, (c, ldc));
    });
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

impl CustomOp3 for BlasLinear {
    fn name(&self) -> &'static str {
        "blas-linear"
    }

    /// `(x [.., in], W [out, in], b [out])`, all contiguous → `[.., out]`. Taking `W`
    /// itself (not a transposed view) keeps its gradient contiguous: candle would add a
    /// transposed gradient into the weight's with a slow strided pass.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let k = l1.dims().last().copied().unwrap_or(0);
        let rows = l1.shape().elem_count() / k.max(1);
        let flat = Layout::contiguous_with_offset((rows, k), l1.start_offset());
        let (out, k2) = l2.shape().dims2()?;
        let wt = Layout::new(Shape::from((k2, out)), vec![1, k2], l2.start_offset());
        let ((x, lx), (w, lw)) = (operand(s1, &flat)?, operand(s2, &wt)?);
        let CpuStorage::F32(b) = s3 else { candle_core::bail!("blas-linear: f32 bias expected") };
        let b = match l3.contiguous_offsets() {
            Some((start, end)) if end - start == out && k == k2 => &b[start..end],
            _ => {
                candle_core::bail!("blas-linear: x {:?}, W {:?}, bias {:?}", l1.dims(), l2.dims(), l3.dims())
            }
        };
        let y = gemm(x, &lx, w, &lw, (rows, k, out), Some(b));
        let mut dims = l1.dims().to_vec();
        *dims.last_mut().expect("rank >= 2") = out;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (out, k) = w.dims2()?;
        let rows = x.elem_count() / k;
        let (x2, g2) = (x.reshape((rows, k))?, grad.contiguous()?.reshape((rows, out))?);
        // Inputs no variable depends on (the image patches, frozen weights) need no gradient.
        let grad_x = x.track_op().then(|| matmul(&g2, w)?.reshape(x.shape())).transpose()?;
        let grad_w = w.track_op().then(|| matmul(&g2.t()?, &x2)).transpose()?;
        // Column sums as a product with ones: candle's sum over dim 0 walks the rows one
        // element at a time, the BLAS streams them.
        let ones = Tensor::ones((1, rows), DType::F32, x.device())?;
        let grad_b = b.track_op().then(|| matmul(&ones, &g2)?.squeeze(0)).transpose()?;
        Ok((grad_x, grad_w, grad_b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

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

    fn ours_shape(x: &Tensor, y: &Tensor) -> Vec<usize> {
        let mut s = x.dims().to_vec();
        *s.last_mut().unwrap() = *y.dims().last().unwrap();
        s
    }

    #[test]
    fn linear_with_bias_matches_matmul_plus_bias() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1., (3, 37, 24), &dev)?;
        let w = Var::randn(0f32, 1., (19, 24), &dev)?;
        let b = Var::randn(0f32, 1., 19, &dev)?;
        let probe = Tensor::randn(0f32, 1., (3, 37, 19), &dev)?;
        let ours = linear(&x, &w, Some(&b))?;
        assert_eq!(ours.dims(), [3, 37, 19]);
        let theirs = x.reshape((111, 24))?.matmul(&w.t()?)?.broadcast_add(&b)?.reshape((3, 37, 19))?;
        assert!(max_rel(&ours, &theirs) < 1e-5);
        let g1 = (ours * &probe)?.sum_all()?.backward()?;
        let g2 = (theirs * &probe)?.sum_all()?.backward()?;
        for v in [&x, &w, &b] {
            assert!(max_rel(g1.get(v).expect("gradient"), g2.get(v).expect("gradient")) < 1e-5);
        }
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
