//! Fused kernels, each with its backward pass: the MLP's activation (QuickGELU, GELU),
//! LayerNorm, softmax, the bias add and the attention heads' split and merge (CPU here;
//! CUDA in `fused_cuda.rs`); and, for the CUDA block (`device_block.rs`), the same with
//! a bias or mask folded in, q/k/v's split from one product, and the residual add.
//!
//! Written from candle's elementwise ops, a LayerNorm is 9 passes over the activations
//! with a temporary each (forward alone), QuickGELU 3 passes through libm's scalar `expf`,
//! softmax 5: together more time than the matrix products around them once those run on a
//! BLAS (BENCHMARKS.md). Here each is one pass forward and one backward, over rows in
//! parallel (rayon), with an `exp` LLVM can vectorise. They are candle custom ops, so
//! autograd sees them as single nodes with the gradients below; f32 on CPU, f32 or bf16 on
//! CUDA — other devices and dtypes take the differentiable op-by-op versions in `nn.rs`.
//!
//! Gradients (`y` the output, `g` the incoming gradient):
//! - QuickGELU `y = x·σ(1.702x)`: `dx = g·(σ + 1.702·x·σ·(1−σ))`; GELU `y = x·Φ(x)`:
//!   `dx = g·(Φ(x) + x·φ(x))` (its tanh form: `Activation::derivative`).
//! - bias add `y = x + b`: `dx = g`, `db = Σ_rows g`; the heads' split and merge: each
//!   other's inverse permutation.
//! - LayerNorm `y = x̂·w + b`, `x̂ = (x−μ)·r`, `r = (var+ε)^-½`:
//!   `dx = r·(gw − mean(gw) − x̂·mean(gw·x̂))`, `dw = Σ_rows g·x̂`, `db = Σ_rows g`.
//! - softmax: `dx = y·(g − Σ g·y)`.

use candle_core::cpu::erf::erf_f32;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor};
use multiversion::multiversion;
use rayon::prelude::*;

use crate::config::Activation;
#[cfg(feature = "cuda")]
use candle_core::CudaStorage;

/// Whether `x` can take the fused kernels: f32 on CPU; f32 or bf16 on CUDA
/// (`fused_cuda.rs`, built with the `cuda` feature).
pub fn applies(x: &Tensor) -> bool {
    match x.device() {
        Device::Cpu => x.dtype() == DType::F32,
        Device::Cuda(_) => {
            cfg!(feature = "cuda") && cuda_kernels_on() && matches!(x.dtype(), DType::F32 | DType::BF16)
        }
        _ => false,
    }
}

/// `WISE_CUDA_FUSED=off` runs the op-by-op versions on CUDA instead (to compare the two on
/// a GPU, as `scripts/gpu-check.sh` does).
fn cuda_kernels_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("WISE_CUDA_FUSED").map_or(true, |v| v != "off" && v != "0"))
}

/// AdamW's one-pass update of f32 CUDA storages in place (fused.cu `adamw_f32`), for
/// `wise_train`'s optimizer, which lends them from inside candle's in-place ops.
/// `constants`: β₁, β₂, ε, 1 − lr·wd, lr/(1 − β₁ᵗ), √(1 − β₂ᵗ), and the gradient's scale.
#[cfg(feature = "cuda")]
pub fn adamw_cuda(
    theta: (&mut CudaStorage, &Layout),
    m: (&mut CudaStorage, &Layout),
    v: (&mut CudaStorage, &Layout),
    g: (&CudaStorage, &Layout),
    constants: [f32; 7],
) -> candle_core::Result<()> {
    crate::fused_cuda::adamw(theta, m, v, g, constants)
}

/// Σx² over all values of contiguous f32 tensors on one CUDA device (the gradient norm of
/// `wise_train`): one kernel per tensor into one device scalar, one copy to the host.
#[cfg(feature = "cuda")]
pub fn sum_of_squares_cuda(ts: &[&Tensor]) -> candle_core::Result<f64> {
    crate::fused_cuda::sum_of_squares(ts)
}

/// [`applies`], and the row fits the CUDA LayerNorm backward (every CLIP's does).
pub fn applies_to_layer_norm(x: &Tensor) -> bool {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() && x.dims().last().is_some_and(|&d| d > crate::fused_cuda::LN_MAX_WIDTH) {
        return false;
    }
    applies(x)
}

/// The MLP's activation `act(x)`, fused.
pub fn activation(act: Activation, x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(ActivationOp(act))
}

/// LayerNorm over the last dim with (f32) weight and bias, fused.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op3(weight, bias, LayerNormOp { eps: eps as f32 })
}

/// Softmax over the last dim, fused.
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax { valid: None })
}

/// The backward kernels on their own, for a block whose backward is written out
/// (`device_block.rs`): the activation's `dx` from its input and `g`.
pub(crate) fn activation_grad(act: Activation, x: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(&g.contiguous()?, &ActivationGrad(act))
}

/// LayerNorm's `(dx, dw, db)` from its input `x` `[.., d]`, weight and `g`; all f32.
pub(crate) fn layer_norm_grad(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let rows = x.elem_count() / w.dim(0)?;
    let all = x.contiguous()?.apply_op3_no_bwd(w, &g.contiguous()?, &LayerNormGrad { eps: eps as f32 })?;
    Ok((all.narrow(0, 0, rows)?.reshape(x.shape())?, all.get(rows)?, all.get(rows + 1)?))
}

/// Softmax's `dx` from its output `y` and `g`.
pub(crate) fn softmax_grad(y: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
    y.contiguous()?.apply_op2_no_bwd(&g.contiguous()?, &SoftmaxGrad)
}

/// Sums over all dims but the last, in f32 (a bias's gradient).
pub(crate) fn col_sums(g: &Tensor) -> candle_core::Result<Tensor> {
    g.contiguous()?.apply_op1_no_bwd(&ColSums)
}

/// Rows per rayon task: enough work to amortise the task, several tasks per thread.
fn rows_per_task(rows: usize, width: usize) -> usize {
    (16_384 / width.max(1)).clamp(1, rows.max(1))
}

/// `eˣ` to ~1 ulp (Cephes' `expf` polynomial), branch-free and cast-free so loops over
/// it vectorise (Rust's saturating float-to-int `as` keeps LLVM from it). Below −87.3,
/// where libm's result turns subnormal, it is 0: a subnormal costs every later product
/// that reads it a ~100-cycle microcode assist per operation (a causal mask's entries,
/// e⁻³·⁴ᵉ³⁸, go straight from the softmax into `P·V`).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5·2²³
    let underflows = x < -87.3;
    let x = x.clamp(-87.3, 88.7);
    // n = round(x / ln 2): adding 1.5·2²³ rounds to an integer and leaves n in the low
    // mantissa bits, where 2ⁿ is built from below.
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let n_bits = t.to_bits().wrapping_sub(MAGIC.to_bits());
    let y = e * f32::from_bits(n_bits.wrapping_add(127) << 23);
    if underflows {
        0.0
    } else {
        y
    }
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// The data of a contiguous f32 CPU operand of a custom op (`what` names the op in the
/// error otherwise). Shared by the CPU kernels of wise-clip and wise-train.
pub fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{what}: f32 expected") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: contiguous input expected"),
    }
}

struct ActivationOp(Activation);

impl CustomOp1 for ActivationOp {
    fn name(&self) -> &'static str {
        "activation"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let mut y = vec![0f32; x.len()];
        activation_rows(self.0, x, &mut y);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        Ok((crate::fused_cuda::activation(self.0, (s, l), None)?, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(activation_grad(self.0, x, grad)?))
    }
}

struct ActivationGrad(Activation);

impl CustomOp2 for ActivationGrad {
    fn name(&self) -> &'static str {
        "activation-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, g) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        let mut dx = g.to_vec();
        activation_grad_rows(self.0, x, &mut dx);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        Ok((crate::fused_cuda::activation_grad(self.0, (s1, l1), None, (s2, l2))?, l1.shape().clone()))
    }
}

struct LayerNormOp {
    eps: f32,
}

/// Mean and `(var + eps)^-½` of one row (two passes: exact for large means too).
#[inline(always)]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = lane_sum([x], |[x]| x) / n;
    let var = lane_sum([x], |[x]| (x - mean) * (x - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Partial sums kept side by side by [`lane_sum`]: one AVX-512 register of f32.
const LANES: usize = 16;

/// `Σ f(x₁[i], …, x_K[i])` over the slices' common length, as [`LANES`] interleaved partial
/// sums added at the end. A single running sum is a chain of dependent adds that the
/// compiler may not reorder (no fast-math in Rust): one add per 4 cycles, which made
/// LayerNorm's and softmax's row sums the slowest part of those kernels. The slices are
/// taken a `LANES`-wide block at a time (one bounds check per block), so the partial sums
/// become one vector register; indexing each element through a closure kept them scalar.
#[inline(always)]
fn lane_sum<const K: usize>(xs: [&[f32]; K], f: impl Fn([f32; K]) -> f32) -> f32 {
    let n = xs.iter().map(|x| x.len()).min().unwrap_or(0);
    let mut acc = [0f32; LANES];
    let full = n / LANES * LANES;
    for base in (0..full).step_by(LANES) {
        let blocks: [&[f32; LANES]; K] = xs.map(|x| x[base..base + LANES].try_into().expect("LANES wide"));
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(blocks.map(|b| b[l]));
        }
    }
    acc.iter().sum::<f32>() + (full..n).map(|i| f(xs.map(|x| x[i]))).sum::<f32>()
}

/// The largest value of `row`, as [`LANES`] interleaved maxima (a single running maximum
/// is, like a single running sum, a chain of dependent ops: it was half of softmax's time
/// on 50-wide attention rows). `if x > m` rather than `f32::max`, whose NaN rule keeps
/// the compiler from using the vector instruction; a NaN row gives NaN probabilities either way.
#[inline(always)]
fn lane_max(row: &[f32]) -> f32 {
    let larger = |m: f32, x: f32| if x > m { x } else { m };
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut blocks = row.chunks_exact(LANES);
    for block in &mut blocks {
        acc.iter_mut().zip(block).for_each(|(m, &x)| *m = larger(*m, x));
    }
    blocks.remainder().iter().chain(&acc).fold(f32::NEG_INFINITY, |m, &x| larger(m, x))
}

/// LayerNorm of every `d`-wide row of `x` into `y` (`d` = the weight's length), rows in
/// parallel.
pub(crate) fn layer_norm_rows(x: &[f32], (w, b): (&[f32], &[f32]), eps: f32, y: &mut [f32]) {
    let d = w.len();
    let chunk = rows_per_task(x.len() / d, d) * d;
    y.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(y, x)| layer_norm_chunk(x, (w, b), eps, y));
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn layer_norm_chunk(x: &[f32], (w, b): (&[f32], &[f32]), eps: f32, y: &mut [f32]) {
    let d = w.len();
    for (y, x) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let (mean, r) = row_stats(x, eps);
        for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
            *y = (x - mean) * r * w + b;
        }
    }
}

/// LayerNorm's backward over rows, in one pass: `dx` written (or added to, when the flag
/// is set: a residual stream's gradient), `dw` and `db` overwritten.
pub(crate) fn layer_norm_grad_rows(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    eps: f32,
    (dx, accumulate): (&mut [f32], bool),
    (dw, db): (&mut [f32], &mut [f32]),
) {
    let d = w.len();
    let chunk = rows_per_task(x.len() / d, d) * d;
    // Each task writes its rows of dx and returns its partial sums of dw and db.
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
        .map(|(dx, (x, g))| {
            let mut acc = vec![0f32; 2 * d];
            layer_norm_grad_chunk((x, w, g), eps, (dx, accumulate), &mut acc);
            acc
        })
        .collect();
    dw.fill(0.0);
    db.fill(0.0);
    for p in partials {
        dw.iter_mut().zip(&p[..d]).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(&p[d..]).for_each(|(a, b)| *a += b);
    }
}

/// [`layer_norm_grad_rows`] for a block of rows; `acc` gets `[dw; db]` added.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn layer_norm_grad_chunk(
    (x, w, g): (&[f32], &[f32], &[f32]),
    eps: f32,
    (dx, accumulate): (&mut [f32], bool),
    acc: &mut [f32],
) {
    let d = w.len();
    let (dw, db) = acc.split_at_mut(d);
    for ((dx, x), g) in dx.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(g.chunks_exact(d)) {
        let (mean, r) = row_stats(x, eps);
        // Zipped iterators, not indices: no bounds checks, so each loop vectorises.
        for (((dw, db), &g), &x) in dw.iter_mut().zip(db.iter_mut()).zip(g).zip(x) {
            *dw += g * (x - mean) * r;
            *db += g;
        }
        let sum_gw = lane_sum([g, w], |[g, w]| g * w);
        let sum_gw_xhat = lane_sum([g, w, x], |[g, w, x]| g * w * (x - mean) * r);
        let (m1, m2) = (sum_gw / d as f32, sum_gw_xhat / d as f32);
        let grad = |g: f32, w: f32, x: f32| r * (g * w - m1 - (x - mean) * r * m2);
        let dx = dx.iter_mut().zip(g).zip(w).zip(x);
        if accumulate {
            dx.for_each(|(((dx, &g), &w), &x)| *dx += grad(g, w, x));
        } else {
            dx.for_each(|(((dx, &g), &w), &x)| *dx = grad(g, w, x));
        }
    }
}

impl Activation {
    /// The activation of one value.
    #[inline(always)]
    fn value(self, x: f32) -> f32 {
        match self {
            Activation::QuickGelu => x * sigmoid(1.702 * x),
            Activation::Gelu => 0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2)),
            Activation::GeluTanh => 0.5 * x * (1.0 + (GELU_TANH_C * (x + 0.044_715 * x * x * x)).tanh()),
        }
    }

    /// Its derivative at `x`.
    #[inline(always)]
    fn derivative(self, x: f32) -> f32 {
        match self {
            Activation::QuickGelu => {
                let s = sigmoid(1.702 * x);
                s + 1.702 * x * s * (1.0 - s)
            }
            // Φ(x) + x·φ(x).
            Activation::Gelu => {
                let cdf = 0.5 * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2));
                cdf + x * exp(-0.5 * x * x) * 0.398_942_3
            }
            Activation::GeluTanh => {
                let t = (GELU_TANH_C * (x + 0.044_715 * x * x * x)).tanh();
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_TANH_C * (1.0 + 3.0 * 0.044_715 * x * x)
            }
        }
    }
}

/// √(2/π), GELU's tanh approximation.
const GELU_TANH_C: f32 = 0.797_884_6;

/// `y = act(x)` elementwise, in parallel.
pub(crate) fn activation_rows(act: Activation, x: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(16_384).zip(x.par_chunks(16_384)).for_each(|(y, x)| activation_chunk(act, x, y));
}

/// `h ← h + bias` on every `bias`-wide row, then `y = act(h)`, in one pass, rows in parallel.
pub(crate) fn bias_activation_rows(act: Activation, bias: &[f32], h: &mut [f32], y: &mut [f32]) {
    let d = bias.len();
    let chunk = rows_per_task(h.len() / d, d) * d;
    y.par_chunks_mut(chunk)
        .zip(h.par_chunks_mut(chunk))
        .for_each(|(y, h)| bias_activation_chunk(act, bias, h, y));
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn bias_activation_chunk(act: Activation, bias: &[f32], h: &mut [f32], y: &mut [f32]) {
    for (y, h) in y.chunks_exact_mut(bias.len()).zip(h.chunks_exact_mut(bias.len())) {
        h.iter_mut().zip(bias).for_each(|(h, b)| *h += b);
        activation_chunk(act, h, y);
    }
}

/// `g ← g·act'(x)` elementwise, in parallel: the activation's backward, in place.
pub(crate) fn activation_grad_rows(act: Activation, x: &[f32], g: &mut [f32]) {
    g.par_chunks_mut(16_384).zip(x.par_chunks(16_384)).for_each(|(g, x)| activation_grad_chunk(act, x, g));
}

// One loop per activation (not a `match` per element), so each vectorises.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn activation_chunk(act: Activation, x: &[f32], y: &mut [f32]) {
    let y = y.iter_mut().zip(x);
    match act {
        Activation::QuickGelu => y.for_each(|(y, &x)| *y = Activation::QuickGelu.value(x)),
        Activation::Gelu => y.for_each(|(y, &x)| *y = Activation::Gelu.value(x)),
        Activation::GeluTanh => y.for_each(|(y, &x)| *y = Activation::GeluTanh.value(x)),
    }
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn activation_grad_chunk(act: Activation, x: &[f32], g: &mut [f32]) {
    let g = g.iter_mut().zip(x);
    match act {
        Activation::QuickGelu => g.for_each(|(g, &x)| *g *= Activation::QuickGelu.derivative(x)),
        Activation::Gelu => g.for_each(|(g, &x)| *g *= Activation::Gelu.derivative(x)),
        Activation::GeluTanh => g.for_each(|(g, &x)| *g *= Activation::GeluTanh.derivative(x)),
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm"
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
        let x = f32_slice(s1, l1, self.name())?;
        let (w, b) = (f32_slice(s2, l2, self.name())?, f32_slice(s3, l3, self.name())?);
        let d = w.len();
        if d == 0 || x.len() % d != 0 || b.len() != d {
            candle_core::bail!("layer-norm: input {:?} with weight [{d}] and bias [{}]", l1.dims(), b.len());
        }
        let mut y = vec![0f32; x.len()];
        layer_norm_rows(x, (w, b), self.eps, &mut y);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let y = crate::fused_cuda::layer_norm((s1, l1), (s2, l2), (s3, l3), self.eps)?;
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // One kernel computes all three, in f32 whatever x's dtype (on CUDA, bf16
        // activations with f32 weights).
        let (dx, dw, db) = layer_norm_grad(x, w, grad, self.eps as f64)?;
        Ok((Some(dx.to_dtype(x.dtype())?), Some(dw), Some(db)))
    }
}

struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "layer-norm-grad"
    }

    /// `(x, w, g)` → `[rows + 2, d]`: dx's rows, then dw, then db.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let (w, g) = (f32_slice(s2, l2, self.name())?, f32_slice(s3, l3, self.name())?);
        let d = w.len();
        let rows = x.len() / d;
        let mut out = vec![0f32; (rows + 2) * d];
        let (dx, dwdb) = out.split_at_mut(rows * d);
        let (dw, db) = dwdb.split_at_mut(d);
        layer_norm_grad_rows(x, w, g, self.eps, (dx, false), (dw, db));
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        crate::fused_cuda::layer_norm_grad((s1, l1), (s2, l2), (s3, l3), self.eps)
    }
}

/// Softmax of each `width`-wide row of `rows`, in place (max-subtracted, so `exp` stays
/// finite), after adding the matching rows of the additive `mask` when given. Masked and
/// vanishing probabilities are exactly 0, never subnormal (see [`exp`]): the products
/// that read them would crawl.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
pub(crate) fn softmax_rows(rows: &mut [f32], width: usize, mask: Option<&[f32]>) {
    for (i, row) in rows.chunks_exact_mut(width).enumerate() {
        if let Some(mask) = mask {
            row.iter_mut().zip(&mask[i * width..(i + 1) * width]).for_each(|(s, m)| *s += m);
        }
        let max = lane_max(row);
        row.iter_mut().for_each(|s| *s = exp(*s - max));
        let inv = 1.0 / lane_sum([&*row], |[v]| v);
        row.iter_mut().for_each(|s| {
            let p = *s * inv;
            *s = if p < f32::MIN_POSITIVE { 0.0 } else { p };
        });
    }
}

/// The softmax backward for each `width`-wide row, in place: `g ← y·(g − Σ g·y)`.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
pub(crate) fn softmax_grad_rows(g: &mut [f32], y: &[f32], width: usize) {
    for (g, y) in g.chunks_exact_mut(width).zip(y.chunks_exact(width)) {
        let dot = lane_sum([&*g, y], |[g, y]| g * y);
        g.iter_mut().zip(y).for_each(|(g, y)| *g = y * (*g - dot));
    }
}

/// Softmax over the first `valid` values of each row (all when `None`; the rest, padding
/// key slots, get probability 0).
struct Softmax {
    valid: Option<usize>,
}

/// Softmax over the first `valid` of each row's values, the rest 0, after adding the
/// additive `mask` `[S, S]` (row `row % S` to each row, `S` the rows' width) when given (no autograd:
/// `device_block.rs`, whose backward is [`softmax_grad`], right for these rows too).
pub(crate) fn softmax_of_first(
    x: &Tensor,
    valid: usize,
    mask: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let op = Softmax { valid: Some(valid) };
    match mask {
        Some(m) => {
            x.contiguous()?.apply_op2_no_bwd(&m.to_dtype(DType::F32)?.contiguous()?, &MaskedSoftmax(op))
        }
        None => x.contiguous()?.apply_op1_no_bwd(&op),
    }
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let d = l.dims().last().copied().unwrap_or(1).max(1);
        let valid = self.valid.unwrap_or(d).min(d);
        let mut y = vec![0f32; x.len()];
        let chunk = rows_per_task(x.len() / d, d) * d;
        y.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(y, x)| {
            y.copy_from_slice(x);
            match valid == d {
                true => softmax_rows(y, d, None),
                false => y.chunks_exact_mut(d).for_each(|row| {
                    softmax_rows(&mut row[..valid], valid, None);
                    row[valid..].fill(0.0);
                }),
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        Ok((crate::fused_cuda::softmax(s, l, self.valid, None)?, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(softmax_grad(y, grad)?))
    }
}

/// [`Softmax`] of `x + mask`, the mask `[S, S]` (f32) added to the rows of each `[S, S]`
/// matrix of `x` in turn.
struct MaskedSoftmax(Softmax);

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, mask) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        let d = l1.dims().last().copied().unwrap_or(1).max(1);
        if mask.len() != d * d {
            candle_core::bail!("masked softmax: a mask of {} values for rows of {d}", mask.len());
        }
        let valid = self.0.valid.unwrap_or(d).min(d);
        let mut y = x.to_vec();
        y.par_chunks_mut(d * d).for_each(|m| {
            for (row, mask) in m.chunks_exact_mut(d).zip(mask.chunks_exact(d)) {
                softmax_rows(&mut row[..valid], valid, Some(&mask[..valid]));
                row[valid..].fill(0.0);
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        Ok((crate::fused_cuda::softmax(s1, l1, self.0.valid, Some((s2, l2)))?, l1.shape().clone()))
    }
}

struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, g) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        let d = l1.dims().last().copied().unwrap_or(1).max(1);
        let mut dx = vec![0f32; y.len()];
        let chunk = rows_per_task(y.len() / d, d) * d;
        dx.par_chunks_mut(chunk).zip(y.par_chunks(chunk).zip(g.par_chunks(chunk))).for_each(
            |(dx, (y, g))| {
                dx.copy_from_slice(g);
                softmax_grad_rows(dx, y, d);
            },
        );
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        Ok((crate::fused_cuda::softmax_grad(s1, l1, s2, l2)?, l1.shape().clone()))
    }
}

/// `y + b` over the last dim, `b` the f32 master bias (read as it is, whatever `y`'s dtype);
/// its gradient is the column sums of `y`'s, in f32. On CUDA one kernel each way: candle's
/// broadcast add and the sum over rows in its backward compute every element's index
/// with 64-bit divisions, and cost more than the matrix product before them. Where the
/// fused kernels do not apply, candle's broadcast add.
pub fn bias_add(y: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if !applies(y) {
        return y.broadcast_add(&b.to_dtype(y.dtype())?);
    }
    y.contiguous()?.apply_op2(&b.to_dtype(DType::F32)?.contiguous()?, BiasAdd)
}

pub(crate) struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, b) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        Ok((CpuStorage::F32(bias_add_rows((y, l1), b, None)?), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        Ok((crate::fused_cuda::bias_add((s1, l1), (s2, l2), None)?, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        _b: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), Some(col_sums(grad)?)))
    }
}

/// `y + b` over rows of `b.len()`, plus `residual` when given.
fn bias_add_rows(
    (y, l): (&[f32], &Layout),
    b: &[f32],
    residual: Option<&[f32]>,
) -> candle_core::Result<Vec<f32>> {
    if b.is_empty() || l.dims().last() != Some(&b.len()) || residual.is_some_and(|r| r.len() != y.len()) {
        candle_core::bail!(
            "bias-add: input {:?} with a bias of {} or a residual of another size",
            l.dims(),
            b.len()
        );
    }
    let mut out = residual.unwrap_or(y).to_vec();
    let d = b.len();
    out.par_chunks_mut(d).enumerate().for_each(|(r, row)| match residual {
        Some(_) => row.iter_mut().zip(&y[r * d..]).zip(b).for_each(|((o, y), b)| *o += y + b),
        None => row.iter_mut().zip(b).for_each(|(o, b)| *o += b),
    });
    Ok(out)
}

/// `y + b + residual` (`device_block.rs`: a projection's bias and the residual stream's add
/// in one pass; no autograd).
pub(crate) struct ResidualBiasAdd;

impl CustomOp3 for ResidualBiasAdd {
    fn name(&self) -> &'static str {
        "residual-bias-add"
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
        let (y, b) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        let residual = f32_slice(s3, l3, self.name())?;
        Ok((CpuStorage::F32(bias_add_rows((y, l1), b, Some(residual))?), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        Ok((crate::fused_cuda::bias_add((s1, l1), (s2, l2), Some((s3, l3)))?, l1.shape().clone()))
    }
}

/// `residual + y + b` (no autograd): see [`ResidualBiasAdd`].
pub(crate) fn residual_bias_add(residual: &Tensor, y: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    y.contiguous()?.apply_op3_no_bwd(b, &residual.contiguous()?, &ResidualBiasAdd)
}

/// `act(y + b)` (no autograd: `device_block.rs`, which keeps `y` for the backward).
pub(crate) fn activation_with_bias(act: Activation, y: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    y.contiguous()?.apply_op2_no_bwd(b, &BiasedActivation(act))
}

/// The `dy` of [`activation_with_bias`] from `y`, `b` and `g`.
pub(crate) fn activation_with_bias_grad(
    act: Activation,
    y: &Tensor,
    b: &Tensor,
    g: &Tensor,
) -> candle_core::Result<Tensor> {
    y.contiguous()?.apply_op3_no_bwd(b, &g.contiguous()?, &BiasedActivationGrad(act))
}

struct BiasedActivation(Activation);

impl CustomOp2 for BiasedActivation {
    fn name(&self) -> &'static str {
        "activation-with-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let h = bias_add_rows((f32_slice(s1, l1, self.name())?, l1), f32_slice(s2, l2, self.name())?, None)?;
        let mut y = vec![0f32; h.len()];
        activation_rows(self.0, &h, &mut y);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        Ok((crate::fused_cuda::activation(self.0, (s1, l1), Some((s2, l2)))?, l1.shape().clone()))
    }
}

struct BiasedActivationGrad(Activation);

impl CustomOp3 for BiasedActivationGrad {
    fn name(&self) -> &'static str {
        "activation-with-bias-grad"
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
        let h = bias_add_rows((f32_slice(s1, l1, self.name())?, l1), f32_slice(s2, l2, self.name())?, None)?;
        let mut dx = f32_slice(s3, l3, self.name())?.to_vec();
        activation_grad_rows(self.0, &h, &mut dx);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dx = crate::fused_cuda::activation_grad(self.0, (s1, l1), Some((s2, l2)), (s3, l3))?;
        Ok((dx, l1.shape().clone()))
    }
}

/// Sums over all dims but the last, in f32: a bias's gradient.
struct ColSums;

impl CustomOp1 for ColSums {
    fn name(&self) -> &'static str {
        "column-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = f32_slice(s, l, self.name())?;
        let d = l.dims().last().copied().unwrap_or(1).max(1);
        let mut sums = vec![0f32; d];
        for row in g.chunks(d) {
            sums.iter_mut().zip(row).for_each(|(s, g)| *s += g);
        }
        Ok((CpuStorage::F32(sums), Shape::from(d)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let d = l.dims().last().copied().unwrap_or(1).max(1);
        Ok((crate::fused_cuda::col_sums(s, l)?, Shape::from(d)))
    }
}

/// Which side of [`split_heads`] / [`merge_heads`] holds the heads: `[B, H, T, D]`, or
/// `[B, H, D, T]` (keys, ready for `q · kᵀ` as a plain product: no transposed view whose
/// gradient candle would add with a strided kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadsLayout {
    TokensByWidth,
    WidthByTokens,
}

/// `[B, T, H·D]` → per-head `scale · x` in `layout`, as one copy (on CUDA candle's strided
/// copy is slower than the projection that feeds it).
pub fn split_heads(x: &Tensor, heads: usize, scale: f64, layout: HeadsLayout) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Heads { heads, scale: scale as f32, layout, split: true, padding: 0 })
}

/// The per-head `[B, H, T, D]` (or `[B, H, D, T]`) back to `[B, T, H·D]`, times `scale`.
pub fn merge_heads(x: &Tensor, scale: f64, layout: HeadsLayout) -> candle_core::Result<Tensor> {
    let heads = x.dim(1)?;
    x.contiguous()?.apply_op1(Heads { heads, scale: scale as f32, layout, split: false, padding: 0 })
}

/// [`split_heads`] with the token dim on the heads side followed by `padding` zero slots
/// (no autograd: `device_block.rs`).
pub(crate) fn split_heads_padded(
    y: &Tensor,
    (heads, scale, layout): (usize, f64, HeadsLayout),
    padding: usize,
) -> candle_core::Result<Tensor> {
    y.contiguous()?.apply_op1_no_bwd(&Heads { heads, scale: scale as f32, layout, split: true, padding })
}

/// [`merge_heads`] of heads whose last `padding` token slots are dropped (no autograd).
pub(crate) fn merge_heads_padded(
    x: &Tensor,
    scale: f64,
    layout: HeadsLayout,
    padding: usize,
) -> candle_core::Result<Tensor> {
    let op = Heads { heads: x.dim(1)?, scale: scale as f32, layout, split: false, padding };
    x.contiguous()?.apply_op1_no_bwd(&op)
}

#[derive(Clone, Copy)]
struct Heads {
    heads: usize,
    scale: f32,
    layout: HeadsLayout,
    split: bool,
    /// Token slots after the last token on the heads side (zeros): padded to a multiple
    /// of 8, the attention's products get aligned rows, which tensor cores need.
    padding: usize,
}

/// Sizes of a heads op: batch, tokens, token slots on the heads side, heads, head width.
#[derive(Clone, Copy)]
struct HeadsDims {
    b: usize,
    t: usize,
    slots: usize,
    h: usize,
    d: usize,
}

impl Heads {
    /// The sizes and the output's shape.
    fn dims(&self, l: &Layout) -> candle_core::Result<(HeadsDims, Shape)> {
        let transposed = self.layout == HeadsLayout::WidthByTokens;
        let h = self.heads;
        if self.split {
            let (b, t, c) = l.shape().dims3()?;
            if h == 0 || c % h != 0 {
                candle_core::bail!("attention: width {c} is not a multiple of {h} heads");
            }
            let (d, slots) = (c / h, t + self.padding);
            let shape = if transposed { (b, h, d, slots) } else { (b, h, slots, d) };
            Ok((HeadsDims { b, t, slots, h, d }, Shape::from(shape)))
        } else {
            let (b, h, x2, x3) = l.shape().dims4()?;
            let (slots, d) = if transposed { (x3, x2) } else { (x2, x3) };
            let Some(t) = slots.checked_sub(self.padding) else {
                candle_core::bail!("attention heads: {slots} token slots, {} of them padding", self.padding)
            };
            Ok((HeadsDims { b, t, slots, h, d }, Shape::from((b, t, h * d))))
        }
    }

    /// fused.cu's mode: 0 split, 1 split transposed, 2 merge, 3 merge transposed.
    #[cfg(feature = "cuda")]
    fn mode(&self) -> i32 {
        i32::from(!self.split) * 2 + i32::from(self.layout == HeadsLayout::WidthByTokens)
    }

    /// The CPU kernel: `x` permuted.
    fn permute(&self, (x, l): (&[f32], &Layout)) -> candle_core::Result<(Vec<f32>, Shape)> {
        let (HeadsDims { b, t, slots, h, d }, shape) = self.dims(l)?;
        let transposed = self.layout == HeadsLayout::WidthByTokens;
        // i runs over [B, T, H, D]; j is the same element on the heads side.
        let at = |i: usize| {
            let (di, r) = (i % d, i / d);
            let (hi, bt) = (r % h, r / h);
            let (ti, bh) = (bt % t, (bt / t) * h + hi);
            if transposed {
                (bh * d + di) * slots + ti
            } else {
                (bh * slots + ti) * d + di
            }
        };
        let mut out = vec![0f32; shape.elem_count()];
        for i in 0..b * t * h * d {
            let j = at(i);
            match self.split {
                true => out[j] = x[i] * self.scale,
                false => out[i] = x[j] * self.scale,
            }
        }
        Ok((out, shape))
    }
}

impl CustomOp1 for Heads {
    fn name(&self) -> &'static str {
        "attention-heads"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (out, shape) = self.permute((f32_slice(s, l, self.name())?, l))?;
        Ok((CpuStorage::F32(out), shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (dims, shape) = self.dims(l)?;
        Ok((crate::fused_cuda::heads((s, l), dims.into(), self.scale, self.mode())?, shape))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let inverse = Heads { split: !self.split, ..*self };
        Ok(Some(grad.contiguous()?.apply_op1(inverse)?))
    }
}

/// q, k and v from one product's output `[B, T, 3·H·D]` plus the f32 bias `[3·H·D]`, as one
/// `[3, B, H, T + padding, D]` (padding slots zero), q times `scale` (no autograd:
/// `device_block.rs`, which computes the three projections as one product).
pub(crate) fn split_qkv(
    y: &Tensor,
    bias: &Tensor,
    (heads, scale): (usize, f64),
    padding: usize,
) -> candle_core::Result<Tensor> {
    y.contiguous()?.apply_op2_no_bwd(bias, &QkvHeads { heads, scale: scale as f32, padding })
}

/// The gradients of [`split_qkv`]'s three parts (`[B, H, T + padding, D]` each) as one
/// `[B, T, 3·H·D]`, q's times `scale`.
pub(crate) fn merge_qkv(
    [dq, dk, dv]: [&Tensor; 3],
    scale: f64,
    padding: usize,
) -> candle_core::Result<Tensor> {
    let op = QkvHeads { heads: dq.dim(1)?, scale: scale as f32, padding };
    dq.contiguous()?.apply_op3_no_bwd(&dk.contiguous()?, &dv.contiguous()?, &op)
}

struct QkvHeads {
    heads: usize,
    scale: f32,
    padding: usize,
}

impl QkvHeads {
    /// The sizes from the `[B, T, 3·H·D]` side (a split's input).
    fn dims_of_tokens(&self, l: &Layout) -> candle_core::Result<HeadsDims> {
        let (b, t, c3) = l.shape().dims3()?;
        let h = self.heads;
        if h == 0 || c3 % (3 * h) != 0 {
            candle_core::bail!("q/k/v heads: width {c3} is not 3 × a multiple of {h} heads");
        }
        Ok(HeadsDims { b, t, slots: t + self.padding, h, d: c3 / (3 * h) })
    }

    /// The sizes from a part's `[B, H, slots, D]` (a merge's inputs).
    fn dims_of_heads(&self, l: &Layout) -> candle_core::Result<HeadsDims> {
        let (b, h, slots, d) = l.shape().dims4()?;
        let Some(t) = slots.checked_sub(self.padding) else {
            candle_core::bail!("q/k/v heads: {slots} token slots, {} of them padding", self.padding)
        };
        Ok(HeadsDims { b, t, slots, h, d })
    }

    /// For element i of the `[B, T, 3, H, D]` side: its part (q, k, v), its column, and its
    /// index within the part's `[B, H, slots, D]`.
    fn locate(HeadsDims { t, slots, h, d, .. }: HeadsDims, i: usize) -> (usize, usize, usize) {
        let (di, r) = (i % d, i / d);
        let (hi, r) = (r % h, r / h);
        let (part, bt) = (r % 3, r / 3);
        let (ti, bi) = (bt % t, bt / t);
        (part, (part * h + hi) * d + di, ((bi * h + hi) * slots + ti) * d + di)
    }
}

#[cfg(feature = "cuda")]
impl From<HeadsDims> for crate::fused_cuda::HeadsSizes {
    fn from(HeadsDims { b, t, slots, h, d }: HeadsDims) -> Self {
        Self { b, t, slots, h, d }
    }
}

impl CustomOp2 for QkvHeads {
    fn name(&self) -> &'static str {
        "qkv-split"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, bias) = (f32_slice(s1, l1, "qkv-split")?, f32_slice(s2, l2, "qkv-split")?);
        let dims = self.dims_of_tokens(l1)?;
        let HeadsDims { b, slots, h, d, .. } = dims;
        if bias.len() != 3 * h * d {
            candle_core::bail!("q/k/v split: a bias of {} values for width {}", bias.len(), 3 * h * d);
        }
        let part_size = b * h * slots * d;
        let mut out = vec![0f32; 3 * part_size];
        for (i, &v) in y.iter().enumerate() {
            let (part, col, j) = Self::locate(dims, i);
            out[part * part_size + j] = (v + bias[col]) * if part == 0 { self.scale } else { 1.0 };
        }
        Ok((CpuStorage::F32(out), Shape::from((3, b, h, slots, d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dims = self.dims_of_tokens(l1)?;
        let out = crate::fused_cuda::split_qkv((s1, l1), (s2, l2), dims.into(), self.scale)?;
        Ok((out, Shape::from((3, dims.b, dims.h, dims.slots, dims.d))))
    }
}

impl CustomOp3 for QkvHeads {
    fn name(&self) -> &'static str {
        "qkv-merge"
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
        let dims = self.dims_of_heads(l1)?;
        let parts = [
            f32_slice(s1, l1, "qkv-merge")?,
            f32_slice(s2, l2, "qkv-merge")?,
            f32_slice(s3, l3, "qkv-merge")?,
        ];
        let HeadsDims { b, t, h, d, .. } = dims;
        if parts.iter().any(|p| p.len() != parts[0].len()) {
            candle_core::bail!("q/k/v merge: parts of different sizes");
        }
        let out = (0..b * t * 3 * h * d)
            .map(|i| {
                let (part, _, j) = Self::locate(dims, i);
                parts[part][j] * if part == 0 { self.scale } else { 1.0 }
            })
            .collect();
        Ok((CpuStorage::F32(out), Shape::from((b, t, 3 * h * d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dims = self.dims_of_heads(l1)?;
        let out = crate::fused_cuda::merge_qkv([(s1, l1), (s2, l2), (s3, l3)], dims.into(), self.scale)?;
        Ok((out, Shape::from((dims.b, dims.t, 3 * dims.h * dims.d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Var, D};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn exp_is_accurate_over_the_range() {
        for i in -870..=880 {
            let x = i as f32 / 10.0 + 0.037;
            let (ours, libm) = (exp(x), x.exp());
            assert!(((ours - libm) / libm).abs() < 3e-7, "exp({x}) = {ours}, libm {libm}");
        }
        // Where libm's result would be subnormal (or 0), 0: never a subnormal.
        for x in [-87.31, -90.0, -103.0, -1000.0, f32::MIN] {
            assert_eq!(exp(x), 0.0, "exp({x})");
        }
        assert_eq!(exp(1000.0), exp(88.7));
    }

    /// A causal mask's entries (HF's `f32::MIN`) and vanishing probabilities come out of
    /// the softmax as exact zeros, not subnormals, and the rows still sum to 1.
    #[test]
    fn softmax_zeroes_masked_and_vanishing_probabilities() {
        let mut rows = vec![0.5, 0.25, 0.0, -1.0, 3.0, -84.2, 2.0, -200.0];
        let mask = [0.0, 0.0, f32::MIN, f32::MIN, 0.0, 0.0, 0.0, 0.0];
        softmax_rows(&mut rows, 4, Some(&mask));
        assert_eq!(&rows[2..4], [0.0, 0.0]);
        assert_eq!(rows[7], 0.0);
        // e^(−87.2) is normal, but over 1 + e^(−1) it would be subnormal: flushed.
        assert_eq!(rows[5], 0.0);
        for row in rows.chunks(4) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{row:?}");
        }
        assert!(rows.iter().all(|p| *p == 0.0 || p.is_normal()), "{rows:?}");
        let want = 1.0 / (1.0 + (-0.25f32).exp());
        assert!((rows[0] - want).abs() < 1e-6, "{} vs {want}", rows[0]);
    }

    /// The bias add and the heads' split and merge, forward and gradients, equal candle's
    /// broadcast add, transposes and reshapes.
    #[test]
    fn bias_add_and_heads_match_candle_ops() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1., (3, 7, 40), &dev)?;
        let b = Var::randn(0f32, 1., 40, &dev)?;
        let heads4 = Var::randn(0f32, 1., (3, 4, 7, 10), &dev)?;
        let (by_width, by_tokens) = (HeadsLayout::TokensByWidth, HeadsLayout::WidthByTokens);
        let split_ref = |x: &Tensor| x.reshape((3, 7, 4, 10))?.transpose(1, 2);
        type Case<'a> = (
            &'a str,
            Box<dyn Fn() -> candle_core::Result<Tensor> + 'a>,
            Box<dyn Fn() -> candle_core::Result<Tensor> + 'a>,
        );
        let cases: Vec<Case> = vec![
            ("bias add", Box::new(|| bias_add(&x, &b)), Box::new(|| x.broadcast_add(&b))),
            ("split", Box::new(|| split_heads(&x, 4, 0.5, by_width)), Box::new(|| split_ref(&x)? * 0.5)),
            (
                "split, keys transposed",
                Box::new(|| split_heads(&x, 4, 0.5, by_tokens)),
                Box::new(|| (split_ref(&x)? * 0.5)?.transpose(2, 3)),
            ),
            (
                "merge",
                Box::new(|| merge_heads(&heads4, 2.0, by_width)),
                Box::new(|| heads4.transpose(1, 2)?.reshape((3, 7, 40))? * 2.0),
            ),
            (
                "merge, keys transposed",
                Box::new(|| merge_heads(&heads4.transpose(2, 3)?, 2.0, by_tokens)),
                Box::new(|| heads4.transpose(1, 2)?.reshape((3, 7, 40))? * 2.0),
            ),
        ];
        for (name, fused, reference) in cases {
            let (yf, yr) = (fused()?, reference()?);
            assert_eq!(yf.dims(), yr.dims(), "{name}");
            assert_eq!(max_diff(&yf, &yr), 0.0, "{name}: forward");
            let probe = Tensor::randn(0f32, 1., yr.shape(), &dev)?;
            let gf = (yf * &probe)?.sum_all()?.backward()?;
            let gr = (yr * &probe)?.sum_all()?.backward()?;
            for (v, what) in [(&x, "x"), (&b, "b"), (&heads4, "heads")] {
                match (gf.get(v), gr.get(v)) {
                    (Some(f), Some(r)) => {
                        assert!(max_diff(f, r) < 1e-5, "{name}: d{what} off by {}", max_diff(f, r))
                    }
                    (None, None) => {}
                    _ => panic!("{name}: d{what} in one version only"),
                }
            }
        }
        Ok(())
    }

    /// Each fused op's forward and gradients equal those of the op-by-op version (which
    /// the parity tests check against PyTorch).
    #[test]
    fn fused_ops_match_the_op_by_op_versions() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 2., (3, 7, 40), &dev)?;
        let w = Var::randn(1f32, 0.5, 40, &dev)?;
        let b = Var::randn(0f32, 0.5, 40, &dev)?;
        let probe = Tensor::randn(0f32, 1., (3, 7, 40), &dev)?;
        let reference: [&dyn Fn() -> candle_core::Result<Tensor>; 5] = [
            &|| x.as_tensor() * candle_nn::ops::sigmoid(&(x.as_tensor() * 1.702)?)?,
            &|| x.gelu_erf(),
            &|| x.gelu(),
            &|| {
                let c = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
                let v = c.sqr()?.mean_keepdim(D::Minus1)?;
                c.broadcast_div(&(v + 1e-5)?.sqrt()?)?.broadcast_mul(&w)?.broadcast_add(&b)
            },
            &|| {
                let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?.exp()?;
                e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
            },
        ];
        let fused: [&dyn Fn() -> candle_core::Result<Tensor>; 5] = [
            &|| activation(Activation::QuickGelu, &x),
            &|| activation(Activation::Gelu, &x),
            &|| activation(Activation::GeluTanh, &x),
            &|| layer_norm(&x, &w, &b, 1e-5),
            &|| softmax_last_dim(&x),
        ];
        for (i, (r, f)) in reference.iter().zip(fused).enumerate() {
            let (yr, yf) = (r()?, f()?);
            assert!(max_diff(&yr, &yf) < 2e-6, "op {i}: forward differs by {}", max_diff(&yr, &yf));
            let gr = (yr * &probe)?.sum_all()?.backward()?;
            let gf = (yf * &probe)?.sum_all()?.backward()?;
            for (v, name) in [(&x, "x"), (&w, "w"), (&b, "b")] {
                match (gr.get(v), gf.get(v)) {
                    (Some(a), Some(c)) => {
                        let tol = 1e-5 * (1.0 + a.abs()?.max_all()?.to_scalar::<f32>()?);
                        assert!(max_diff(a, c) < tol, "op {i}: d{name} differs by {}", max_diff(a, c));
                    }
                    (None, None) => {}
                    _ => panic!("op {i}: d{name} present in one version only"),
                }
            }
        }
        Ok(())
    }
}
