//! AdamW's update as one in-place pass per parameter, no temporaries: on CPU (rayon) and
//! on CUDA (`wise_clip::fused::adamw_cuda`, one kernel).
//!
//! Written with tensor ops, one AdamW step is ~14 passes over every parameter, each
//! allocating a new tensor (for ViT-B/32: 88 M parameters, ~5 GB of memory traffic per
//! step, ~12 % of a batch-16 training step on 2 cores; on a GPU ~14 kernel launches per
//! parameter tensor). Here the moments and the weights are updated together in place, with
//! exactly the arithmetic of [`crate::optim::AdamW::step`]'s tensor version (PyTorch's order):
//! `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
//! `θ ← θ(1 − lr·wd) − (lr/(1−β₁ᵗ)) · m / (√v/√(1−β₂ᵗ) + ε)`.

use std::sync::Mutex;

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, DType, InplaceOp1, InplaceOp2, Layout, Tensor};
use rayon::prelude::*;
use wise_clip::fused::f32_slice;

/// Whether the in-place update applies: f32 and contiguous, on the CPU, or on CUDA with
/// wise's fused kernels (`wise_clip::fused::applies`: built with `cuda`, not switched off;
/// and this crate built with `cuda` too).
pub fn applies(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| {
        t.dtype() == DType::F32
            && t.is_contiguous()
            && wise_clip::fused::applies(t)
            && (t.device().is_cpu() || cfg!(feature = "cuda"))
    })
}

/// The step's constants, as the tensor version computes them.
#[derive(Debug, Clone, Copy)]
pub struct Update {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// `1 − lr·wd`.
    pub decay: f64,
    /// `lr / (1 − β₁ᵗ)`.
    pub step_size: f64,
    /// `√(1 − β₂ᵗ)`.
    pub bias2_sqrt: f64,
    /// What the gradient is multiplied by first: gradient clipping's coefficient, or 1.
    pub grad_scale: f64,
}

/// Updates `m`, `v` and `theta` in place from the gradient `g` times `u.grad_scale`, in
/// one pass over the four (7 floats of memory traffic per parameter; as three passes, one
/// per updated tensor, it was 10, and clipping's separate scaling of `g` 2 more).
///
/// candle lends one tensor's storage mutably per in-place op, so the three are nested:
/// the op on `theta` runs the op on `m`, which runs the op on `v`, where the update is.
/// `theta`, `m` and `v` must not share storage (the optimizer allocates each on its own).
pub fn update(theta: &Tensor, m: &Tensor, v: &Tensor, g: &Tensor, u: Update) -> candle_core::Result<()> {
    theta.inplace_op2(g, &OnWeights { m, v, u })
}

const CHUNK: usize = 1 << 15;

fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("{what}: contiguous f32 expected"),
    }
}

/// A storage candle lent to one of the nested ops, passed down to the innermost.
enum Lent<'a> {
    Cpu(&'a mut [f32]),
    #[cfg(feature = "cuda")]
    Cuda(&'a mut CudaStorage, Layout),
}

/// The gradient's storage.
#[derive(Clone, Copy)]
enum Read<'a> {
    Cpu(&'a [f32]),
    #[cfg(feature = "cuda")]
    Cuda(&'a CudaStorage, &'a Layout),
}

/// Level 1: the weights (mutable) and the gradient.
struct OnWeights<'a> {
    m: &'a Tensor,
    v: &'a Tensor,
    u: Update,
}

impl OnWeights<'_> {
    fn next(&self, theta: Lent<'_>, g: Read<'_>) -> candle_core::Result<()> {
        self.m.inplace_op1(&OnFirstMoment { theta: Mutex::new(theta), g, v: self.v, u: self.u })
    }
}

impl InplaceOp2 for OnWeights<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        self.next(Lent::Cpu(slice_mut(s1, l1, self.name())?), Read::Cpu(f32_slice(s2, l2, self.name())?))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        self.next(Lent::Cuda(s1, l1.clone()), Read::Cuda(s2, l2))
    }
}

/// Level 2: the first moment (mutable).
struct OnFirstMoment<'a> {
    theta: Mutex<Lent<'a>>,
    g: Read<'a>,
    v: &'a Tensor,
    u: Update,
}

impl OnFirstMoment<'_> {
    fn next(&self, m: Lent<'_>) -> candle_core::Result<()> {
        let mut theta = self.theta.lock().unwrap_or_else(|e| e.into_inner());
        let step = OnSecondMoment { theta: Mutex::new(&mut theta), m: Mutex::new(m), g: self.g, u: self.u };
        self.v.inplace_op1(&step)
    }
}

impl InplaceOp1 for OnFirstMoment<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        self.next(Lent::Cpu(slice_mut(s, l, self.name())?))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &mut CudaStorage, l: &Layout) -> candle_core::Result<()> {
        self.next(Lent::Cuda(s, l.clone()))
    }
}

/// Level 3: the second moment (mutable), and the update itself.
struct OnSecondMoment<'a, 'b> {
    theta: Mutex<&'a mut Lent<'b>>,
    m: Mutex<Lent<'a>>,
    g: Read<'a>,
    u: Update,
}

impl InplaceOp1 for OnSecondMoment<'_, '_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let v = slice_mut(s, l, self.name())?;
        let mut theta = self.theta.lock().unwrap_or_else(|e| e.into_inner());
        let mut m = self.m.lock().unwrap_or_else(|e| e.into_inner());
        #[allow(irrefutable_let_patterns)] // one variant each without the `cuda` feature
        let (Lent::Cpu(theta), Lent::Cpu(m), Read::Cpu(g)) = (&mut **theta, &mut *m, self.g) else {
            candle_core::bail!("adamw: weights, moments and gradient on different devices");
        };
        if [m.len(), v.len(), g.len()] != [theta.len(); 3] {
            candle_core::bail!(
                "adamw: {} weights, {} and {} moments, {} gradients",
                theta.len(),
                m.len(),
                v.len(),
                g.len()
            );
        }
        let chunks = theta.par_chunks_mut(CHUNK).zip(m.par_chunks_mut(CHUNK)).zip(v.par_chunks_mut(CHUNK));
        chunks.zip(g.par_chunks(CHUNK)).for_each(|(((theta, m), v), g)| update_chunk(theta, m, v, g, self.u));
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &mut CudaStorage, l: &Layout) -> candle_core::Result<()> {
        let mut theta = self.theta.lock().unwrap_or_else(|e| e.into_inner());
        let mut m = self.m.lock().unwrap_or_else(|e| e.into_inner());
        let (Lent::Cuda(theta, lt), Lent::Cuda(m, lm), Read::Cuda(g, lg)) = (&mut **theta, &mut *m, self.g)
        else {
            candle_core::bail!("adamw: weights, moments and gradient on different devices");
        };
        let u = self.u;
        let constants =
            [u.beta1, u.beta2, u.eps, u.decay, u.step_size, u.bias2_sqrt, u.grad_scale].map(|c| c as f32);
        wise_clip::fused::adamw_cuda((theta, lt), (m, lm), (s, l), (g, lg), constants)
    }
}

/// The update of one chunk, compiled for AVX-512 and AVX2 too (picked at run time): the
/// square root and two divisions per parameter made the SSE2 build compute-bound, not
/// memory-bound.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn update_chunk(theta: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], u: Update) {
    let (b1, b2) = (u.beta1 as f32, u.beta2 as f32);
    let (take1, take2) = ((1.0 - u.beta1) as f32, (1.0 - u.beta2) as f32);
    let (decay, step, bias2, eps) = (u.decay as f32, u.step_size as f32, u.bias2_sqrt as f32, u.eps as f32);
    let scale = u.grad_scale as f32;
    for (((t, m), v), &g) in theta.iter_mut().zip(m).zip(v).zip(g) {
        // The tensor version's arithmetic, in its order (PyTorch's); Rust never fuses a
        // multiply and an add, whatever the target.
        let g = if scale == 1.0 { g } else { g * scale };
        *m = *m * b1 + g * take1;
        *v = *v * b2 + g * g * take2;
        *t = *t * decay - *m / (v.sqrt() / bias2 + eps) * step;
    }
}

/// Sum of the squares of a contiguous f32 CPU tensor's values, in one pass (as a tensor
/// op, `sqr` then `sum` writes and reads a temporary the size of the tensor).
pub fn sum_of_squares(t: &Tensor) -> candle_core::Result<f64> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("sum_of_squares: a CPU tensor expected");
    };
    let values = f32_slice(cpu, layout, "sum_of_squares")?;
    Ok(values.par_chunks(CHUNK).map(chunk_sum_of_squares).sum())
}

/// One chunk's sum of squares: 32 independent partial sums (a single running sum is a chain
/// of dependent adds), compiled for AVX-512 and AVX2 too.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn chunk_sum_of_squares(c: &[f32]) -> f64 {
    let mut lanes = [0f32; 32];
    let mut blocks = c.chunks_exact(32);
    for b in &mut blocks {
        lanes.iter_mut().zip(b).for_each(|(s, &x)| *s += x * x);
    }
    let tail: f32 = blocks.remainder().iter().map(|x| x * x).sum();
    lanes.iter().map(|&s| s as f64).sum::<f64>() + tail as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() / scale
    }

    /// Two steps of the one-pass update equal the tensor-op formulas (PyTorch's AdamW
    /// after `clip_grad_norm_`'s scaling), weights and both moments; an odd length
    /// exercises the chunk tails.
    #[test]
    fn one_pass_update_equals_the_tensor_formulas() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let n = 3 * CHUNK + 17;
        let theta = Tensor::randn(0f32, 1.0, n, &dev)?;
        let (m, v) = (Tensor::zeros(n, DType::F32, &dev)?, Tensor::zeros(n, DType::F32, &dev)?);
        let (mut rt, mut rm, mut rv) = (theta.copy()?, m.copy()?, v.copy()?);
        let (b1, b2, eps, lr, wd, scale) = (0.9, 0.999, 1e-8, 1e-3, 0.1, 0.25);
        for t in 1..=2 {
            let g = Tensor::randn(0f32, 1.0, n, &dev)?;
            let u = Update {
                beta1: b1,
                beta2: b2,
                eps,
                decay: 1.0 - lr * wd,
                step_size: lr / (1.0 - f64::powi(b1, t)),
                bias2_sqrt: (1.0 - f64::powi(b2, t)).sqrt(),
                grad_scale: scale,
            };
            update(&theta, &m, &v, &g, u)?;
            let g = (g * scale)?;
            rm = ((rm * b1)? + (&g * (1.0 - b1))?)?;
            rv = ((rv * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let denom = ((rv.sqrt()? / u.bias2_sqrt)? + eps)?;
            rt = ((rt * u.decay)? - ((&rm / denom)? * u.step_size)?)?;
        }
        assert!(max_rel(&m, &rm) < 1e-6, "first moment off by {}", max_rel(&m, &rm));
        assert!(max_rel(&v, &rv) < 1e-6, "second moment off by {}", max_rel(&v, &rv));
        assert!(max_rel(&theta, &rt) < 1e-6, "weights off by {}", max_rel(&theta, &rt));
        let short = Tensor::zeros(n - 1, DType::F32, &dev)?;
        let u =
            Update { beta1: b1, beta2: b2, eps, decay: 1.0, step_size: lr, bias2_sqrt: 1.0, grad_scale: 1.0 };
        let err = update(&theta, &m, &short, &rt, u);
        assert!(err.unwrap_err().to_string().contains("moments"), "a length mismatch is an error");
        Ok(())
    }

    #[test]
    fn sum_of_squares_equals_the_tensor_sum() -> candle_core::Result<()> {
        let t = Tensor::randn(0f32, 2.0, 2 * CHUNK + 5, &Device::Cpu)?;
        let want = t.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        let got = sum_of_squares(&t)?;
        assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
        Ok(())
    }
}
