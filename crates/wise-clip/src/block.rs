//! One pre-norm transformer block as a single CPU op, forward and backward written out.
//!
//! ```text
//! x ─ LN1 ─ [Q|K|V] = ·Wqkvᵀ+b ─ attention ─ ·Woᵀ+b ─(+x)─ x_mid ─ LN2 ─ ·W1ᵀ+b ─ act ─ ·W2ᵀ+b ─(+x_mid)─ y
//! ```
//!
//! Op by op, a block is ~20 autograd nodes, and candle's backward pays every one of them
//! a zero-filled gradient buffer and an add (candle issue #1241): ~10 % of a training step
//! once the products run on a BLAS. As one op, its backward is the products and four
//! one-pass kernels: the residual stream's gradient is updated in place, the three input
//! projections write the column blocks of one `[N, 3C]` buffer (three products reading the
//! q/k/v weights where they are; their gradients are slices of one product), and each residual
//! add is the starting accumulator of the product before it.
//!
//! A candle custom op returns gradients for its inputs only, and a block has 16
//! parameters: its backward hands theirs over on a side channel that [`backward`]
//! collects. Train with [`backward`], not `Tensor::backward`, or these parameters get no
//! gradient (the parity tests check every parameter's gradient through [`backward`]).
//!
//! f32 on CPU with a BLAS only, its products optionally in bf16 ([`bf16_mode`]);
//! `nn::EncoderLayer` keeps the op-by-op block elsewhere.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Storage, Tensor, TensorId};
use rayon::prelude::*;

use crate::attention::Heads;
use crate::bf16_products::{self, PackedB};
use crate::config::Activation;
use crate::f32_products::{self, PackedF32};
use crate::fused::{
    activation_grad_rows, bias_activation_rows, f32_slice, layer_norm_grad_rows, layer_norm_rows,
};
use crate::matmul::{par_sgemm, product};
use crate::nn::EncoderLayer;

thread_local! {
    /// Parameter gradients from the blocks' backward passes run on this thread.
    static PARAM_GRADS: RefCell<Vec<(Tensor, Tensor)>> = const { RefCell::new(Vec::new()) };
    /// Set inside [`inference_mode`] on this thread.
    static INFERENCE: Cell<bool> = const { Cell::new(false) };
    /// Set inside [`bf16_mode`].
    static BF16_PRODUCTS: Cell<bool> = const { Cell::new(false) };
    /// The packed weights of the [`frozen_weights`] scope this thread is in.
    static FROZEN: RefCell<Option<Arc<PackedWeights>>> = const { RefCell::new(None) };
}

/// Weights packed for the bf16 or the f32 kernel, by tensor, layout (`W` as `Bᵀ` for a
/// forward's `x·Wᵀ`, as `B` for a backward's `dY·W`) and kernel (bf16 or not), for one
/// [`frozen_weights`] scope.
type PackedWeights = Mutex<HashMap<(TensorId, bool, bool), Arc<PackedWeight>>>;

/// A weight packed for one of the kernels.
enum PackedWeight {
    Bf16(PackedB),
    F32(PackedF32),
}

/// Runs `f` (forwards only: evaluation, features, zero-shot heads) with the fused blocks
/// keeping no activations for a backward pass, as PyTorch's `inference_mode`: each
/// block's buffers go back to the pool as soon as it is done, instead of living as long as
/// the output (for a ViT-L/14 at batch 256, ~100 GB). The blocks' outputs then have no
/// gradient.
pub fn inference_mode<T>(f: impl FnOnce() -> T) -> T {
    with_state(State { inference: true, ..State::current() }, f)
}

/// Runs `f` with the matrix products in bf16 (f32 sums), forward and backward, on CPUs with
/// AVX512_BF16, as PyTorch's CPU autocast: every product of the fused blocks (attention's
/// per-head ones included) and of [`crate::matmul`] (the patch embedding, projections,
/// heads). ~1.7× faster there for a ViT-B/32's inference and ~1.6×
/// for its training step (BENCHMARKS.md); results differ from f32's by bf16's rounding of
/// the products' inputs. Everything else (LayerNorm, softmax, the activations, the
/// gradients' sums, the optimizer) stays f32. f32 on other CPUs. `WISE_CPU_BF16=1` in the
/// environment sets it everywhere.
pub fn bf16_mode<T>(f: impl FnOnce() -> T) -> T {
    with_state(State { bf16: true, ..State::current() }, f)
}

/// Runs `f`, a loop of forwards (and backwards) over models whose weights do not change
/// inside it (an evaluation, the features of a dataset, a zero-shot head, a Fisher), with each
/// weight packed for the products once for the whole of `f` instead of once per product: in
/// [`bf16_mode`], ViT-B/32 inference 2.1–2.4× faster one image at a time, 16–19 % at batch 8,
/// 6 % at batch 32, for as much memory as a bf16 copy of the weights used; in f32 on CPUs
/// with AVX-512 (with AVX2: products of up to 256 rows, where it pays), the products run in
/// wise's own f32 kernel (`f32_products`) instead of the BLAS, which packs every weight at
/// every call, for as much memory as the weights used.
/// The copies are freed when `f` ends. Products of more rows than `PACK_ONCE_MAX_ROWS` (4096:
/// batches of ~80 images and more) gain next to nothing from it and run as outside.
/// Changing a weight inside (an optimizer step, `Var::set`) leaves its stale copy in use.
pub fn frozen_weights<T>(f: impl FnOnce() -> T) -> T {
    if FROZEN.with_borrow(Option::is_some) {
        return f();
    }
    with_state(State { frozen: Some(Arc::default()), ..State::current() }, f)
}

/// Whether the fused blocks run their products in bf16 on this thread: inside [`bf16_mode`]
/// or with `WISE_CPU_BF16=1`, on a CPU with AVX512_BF16, with a BLAS loaded (without one
/// the blocks run op by op, in f32).
pub fn in_bf16_mode() -> bool {
    (BF16_PRODUCTS.get() || bf16_products::requested())
        && bf16_products::supported()
        && crate::matmul::blas_name().is_some()
}

/// What [`inference_mode`], [`bf16_mode`] and [`frozen_weights`] set on a thread.
#[derive(Clone)]
struct State {
    inference: bool,
    bf16: bool,
    frozen: Option<Arc<PackedWeights>>,
}

impl State {
    fn current() -> Self {
        Self {
            inference: INFERENCE.get(),
            bf16: BF16_PRODUCTS.get(),
            frozen: FROZEN.with_borrow(Clone::clone),
        }
    }

    /// Sets this state on this thread, returning the one it replaces.
    fn install(self) -> Self {
        Self {
            inference: INFERENCE.replace(self.inference),
            bf16: BF16_PRODUCTS.replace(self.bf16),
            frozen: FROZEN.replace(self.frozen),
        }
    }
}

/// Runs `f` with `state` set on this thread, the previous one restored after however `f`
/// ends (a panic included).
fn with_state<T>(state: State, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<State>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(previous) = self.0.take() {
                previous.install();
            }
        }
    }
    let _restore = Restore(Some(state.install()));
    f()
}

/// Runs `f` on rayon's first thread when `device` is the CPU (on this one when it is one
/// of rayon's already, or for other devices), carrying [`inference_mode`], [`bf16_mode`] and
/// [`frozen_weights`] along.
///
/// The CPU kernels split their work over rayon's threads. Called from outside the pool
/// (a program's main thread), each of a training step's hundreds of splits is handed to
/// the pool while the caller sleeps until it is done: every hand-over wakes threads, and
/// the serial work between two splits runs on the caller while the pool's threads doze
/// off. Inside the pool a split is a work-stealing join between threads that are already
/// awake. The model's passes (encoders, [`backward`], the optimizer step) enter the pool
/// once each (candle's `Device::with_context` does the same with a private pool; this is
/// rayon's global one, which the data loader shares, so the cores are not oversubscribed).
///
/// The tensors are then allocated on rayon's threads, whose glibc malloc arenas hand each
/// heap back to the kernel as soon as it is empty: a program that trains on CPU should
/// keep them with a top pad of a heap's size (`MALLOC_TOP_PAD_=67108864`, or
/// `mallopt(M_TOP_PAD, 64 << 20)` as the `wise` binary does). Both together make a
/// ViT-B/32 training step ~5 % faster (BENCHMARKS.md).
pub fn on_compute_threads<R: Send>(device: &Device, f: impl FnOnce() -> R + Send) -> R {
    if !device.is_cpu() || rayon::current_thread_index().is_some() {
        return f();
    }
    // Always on the pool's first thread, so that every pass allocates its serial work's
    // tensors from the same malloc arena: a step's gradients, made by candle's backward on
    // the thread that runs it, would otherwise land in whichever thread's arena took the
    // pass, and an arena does not reuse the memory another freed (one more copy of the
    // gradients held, a ViT-L/14 step's 1.2 GB, in some runs; BENCHMARKS.md).
    let state = State::current();
    let job = Mutex::new(Some(f));
    let result = Mutex::new(None);
    rayon::broadcast(|context| {
        if context.index() == 0 {
            if let Some(f) = job.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let r = with_state(state.clone(), f);
                *result.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            }
        }
    });
    result.into_inner().unwrap_or_else(|e| e.into_inner()).expect("the pool's first thread ran the pass")
}

/// Buffers of the blocks' activations and temporaries, handed back when done with and
/// reused by the next call of the same shape. A fresh `vec![0.0; n]` costs a memset
/// (malloc hands back the same, used, memory): ~4 % of a training step. Every buffer
/// taken is overwritten whole before it is read.
static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// Buffers kept at most: the activations of ~20 blocks.
const POOL_BUFFERS: usize = 192;

/// A buffer of `n` values, contents unspecified: a pooled one of the same length, else one
/// with room for `n` but not twice that (text batches run to their longest caption, so their
/// sizes vary from batch to batch), else a new one.
fn take(n: usize) -> Vec<f32> {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let fits = |b: &Vec<f32>| b.capacity() >= n && b.capacity() <= 2 * n;
    let found = pool.iter().rposition(|b| b.len() == n).or_else(|| pool.iter().rposition(fits));
    match found {
        Some(i) => {
            let mut b = pool.swap_remove(i);
            b.resize(n, 0.0);
            b
        }
        None => vec![0f32; n],
    }
}

/// Hands buffers back to [`take`].
fn give(buffers: impl IntoIterator<Item = Vec<f32>>) {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    pool.extend(buffers.into_iter().filter(|b| !b.is_empty()));
    let excess = pool.len().saturating_sub(POOL_BUFFERS);
    pool.drain(..excess);
}

/// Whether the blocks keep their activations for a backward pass (not in [`inference_mode`]).
pub(crate) fn keeps_activations() -> bool {
    !INFERENCE.get()
}

/// A fused block's parameter gradients, for [`backward`] to collect.
pub(crate) fn hand_over(param_grads: Vec<(Tensor, Tensor)>) {
    PARAM_GRADS.with_borrow_mut(|all| all.extend(param_grads));
}

/// `loss.backward()`, plus the parameter gradients of the fused blocks: use it for every
/// backward pass through a model of this crate.
pub fn backward(loss: &Tensor) -> candle_core::Result<GradStore> {
    on_compute_threads(loss.device(), || {
        // A rayon thread waiting for a split inside this backward may run another thread's
        // whole backward meanwhile (it steals work while it waits): each collects its own
        // blocks' gradients, the interrupted one's set aside until it resumes.
        let outer = PARAM_GRADS.take();
        let grads = loss.backward();
        let from_blocks = PARAM_GRADS.replace(outer);
        let mut grads = grads?;
        for (param, grad) in from_blocks {
            let sum = match grads.remove(&param) {
                Some(g) => (g + grad)?,
                None => grad,
            };
            grads.insert(&param, sum);
        }
        Ok(grads)
    })
}

/// Rows of a product up to which [`frozen_weights`] keeps its weight packed: packing costs
/// as much as ~100–400 rows of the product, so keeping it made ViT-B/32 bf16 inference 2.1–2.4×
/// faster at batch 1 (50 rows), 16–19 % at batch 8, 6 % at batch 32 and 2 % at batch 128
/// (6,400 rows; BENCHMARKS.md); f32 (wise's kernel from packed weights against the BLAS)
/// 1.3–1.5× at batch 1, ~12 % at batch 32. Beyond this the packed copies would cost their
/// memory (half the model in bf16, all of it in f32, for each model of a sweep) for little.
const PACK_ONCE_MAX_ROWS: usize = 4096;

// The block's parameters, in this order.
const LN1_W: usize = 0;
const LN1_B: usize = 1;
const Q_W: usize = 2;
const K_W: usize = 4;
const V_W: usize = 6;
const OUT_W: usize = 8;
const OUT_B: usize = 9;
const LN2_W: usize = 10;
const LN2_B: usize = 11;
const FC1_W: usize = 12;
const FC1_B: usize = 13;
const FC2_W: usize = 14;
const FC2_B: usize = 15;

/// `layer(x)` for `x` `[B, T, C]` as one op, or `None` when the layer lacks a bias (not
/// a CLIP block: the caller runs it op by op). With `pooled` (a position per sequence,
/// checked by the caller), only the output at those positions, `[B, C]`: keys and values
/// need every token, all else runs on one row per sequence (`Encoder::forward_at`'s last
/// block).
pub(crate) fn forward(
    layer: &EncoderLayer,
    x: &Tensor,
    mask: Option<&Tensor>,
    pooled: Option<&[usize]>,
) -> candle_core::Result<Option<Tensor>> {
    let (_, t, c) = x.dims3()?;
    let attn = &layer.self_attn;
    let mut params =
        vec![layer.layer_norm1.weight.as_tensor().clone(), layer.layer_norm1.bias.as_tensor().clone()];
    for linear in [&attn.q_proj, &attn.k_proj, &attn.v_proj, &attn.out_proj] {
        let Some(bias) = &linear.bias else { return Ok(None) };
        params.extend([linear.weight.as_tensor().clone(), bias.as_tensor().clone()]);
    }
    params.extend([layer.layer_norm2.weight.as_tensor().clone(), layer.layer_norm2.bias.as_tensor().clone()]);
    for linear in [&layer.mlp.fc1, &layer.mlp.fc2] {
        let Some(bias) = &linear.bias else { return Ok(None) };
        params.extend([linear.weight.as_tensor().clone(), bias.as_tensor().clone()]);
    }
    if attn.heads == 0 || c % attn.heads != 0 {
        candle_core::bail!("attention: width {c} is not a multiple of {} heads", attn.heads);
    }
    let mask = match mask {
        Some(m) => {
            let m = m.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            if m.len() != t * t {
                candle_core::bail!("attention: mask of {} values for {t} tokens", m.len());
            }
            Some(m)
        }
        None => None,
    };
    let op = Block {
        params,
        pooled: pooled.map(<[usize]>::to_vec),
        heads: attn.heads,
        eps: (layer.layer_norm1.eps as f32, layer.layer_norm2.eps as f32),
        act: layer.mlp.act,
        mask,
        keep: keeps_activations(),
        bf16: in_bf16_mode(),
        frozen: FROZEN.with_borrow(Clone::clone),
        saved: Mutex::new(None),
    };
    let x = x.contiguous()?;
    Ok(Some(if op.keep { x.apply_op1(op)? } else { x.apply_op1_no_bwd(&op)? }))
}

struct Block {
    params: Vec<Tensor>,
    /// The one position per sequence whose output is wanted (the pooled last block), or
    /// `None` for every position.
    pooled: Option<Vec<usize>>,
    heads: usize,
    eps: (f32, f32),
    act: Activation,
    mask: Option<Vec<f32>>,
    /// Whether to keep the activations for a backward pass (not in [`inference_mode`]).
    keep: bool,
    /// Whether the products run in bf16 ([`bf16_mode`]), forward and backward.
    bf16: bool,
    /// Where the products find their weights packed, forward and backward
    /// ([`frozen_weights`]).
    frozen: Option<Arc<PackedWeights>>,
    /// The forward's activations, for the backward.
    saved: Mutex<Option<Saved>>,
}

/// What the backward needs, of `N` tokens of which `M` are outputs (`M = N` but in the
/// pooled block).
struct Saved {
    /// `[N, C]`.
    ln1: Vec<f32>,
    /// `[N, 3C]`; the pooled block's Q columns hold only its `M` rows.
    qkv: Vec<f32>,
    /// The attention probabilities, `[B, heads, M / B, T]` (empty: recomputed backwards).
    probs: Vec<f32>,
    /// From here on `M` rows.
    attn: Vec<f32>,
    x_mid: Vec<f32>,
    ln2: Vec<f32>,
    /// fc1's output before and after the activation.
    h: Vec<f32>,
    act: Vec<f32>,
}

impl Drop for Saved {
    fn drop(&mut self) {
        let all = [&mut self.ln1, &mut self.qkv, &mut self.probs, &mut self.attn];
        let all = all.into_iter().chain([&mut self.x_mid, &mut self.ln2, &mut self.h, &mut self.act]);
        give(all.map(std::mem::take));
    }
}

/// Runs `f` on the f32 data of CPU tensors (contiguous).
fn with_slices<R>(
    ts: &[&Tensor],
    f: impl FnOnce(&[&[f32]]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let slices = guards
        .iter()
        .map(|(s, l)| match &**s {
            Storage::Cpu(s) => f32_slice(s, l, "block"),
            _ => candle_core::bail!("block: CPU tensors expected"),
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    f(&slices)
}

/// `rows` rows of `bias`, plus `residual`'s matching rows when given: the starting
/// accumulator of a product (`C = start + A·Bᵀ`). `buffer` lends its allocation (a pooled
/// buffer, or a new `Vec` for an output handed to candle); nothing is zero-filled first.
fn start(mut buffer: Vec<f32>, rows: usize, bias: &[f32], residual: Option<&[f32]>) -> Vec<f32> {
    let d = bias.len();
    buffer.clear();
    buffer.reserve(rows * d);
    let rows_out = buffer.spare_capacity_mut()[..rows * d].par_chunks_mut(d).enumerate();
    rows_out.for_each(|(i, row)| match residual {
        Some(r) => row.iter_mut().zip(&r[i * d..(i + 1) * d]).zip(bias).for_each(|((o, r), b)| {
            o.write(r + b);
        }),
        None => row.iter_mut().zip(bias).for_each(|(o, &b)| {
            o.write(b);
        }),
    });
    // SAFETY: the loop above wrote each of the `rows × d` elements.
    unsafe { buffer.set_len(rows * d) };
    buffer
}

/// Sums of the columns of `rows × cols` `g` (a bias's gradient).
fn col_sums(g: &[f32], cols: usize) -> Vec<f32> {
    let rows = g.len() / cols;
    let per_task = rows.div_ceil(rayon::current_num_threads().max(1)).max(1);
    g.par_chunks(per_task * cols)
        .map(|g| {
            let mut acc = vec![0f32; cols];
            g.chunks_exact(cols).for_each(|r| acc.iter_mut().zip(r).for_each(|(a, v)| *a += v));
            acc
        })
        .reduce(
            || vec![0f32; cols],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        )
}

/// Rows `rows` of `[_, c]` `src`, in that order.
fn gather(src: &[f32], rows: &[usize], c: usize) -> Vec<f32> {
    let mut out = take(rows.len() * c);
    out.chunks_exact_mut(c).zip(rows).for_each(|(o, &r)| o.copy_from_slice(&src[r * c..(r + 1) * c]));
    out
}

/// Adds the rows of `[rows.len(), c]` `src` to rows `rows` of `dst` (row stride `ld`).
fn scatter_add(src: &[f32], rows: &[usize], (dst, ld): (&mut [f32], usize)) {
    let c = src.len() / rows.len().max(1);
    for (s, &r) in src.chunks_exact(c).zip(rows) {
        dst[r * ld..r * ld + c].iter_mut().zip(s).for_each(|(d, s)| *d += s);
    }
}

impl Block {
    fn heads(&self, t: usize, c: usize) -> Heads<'_> {
        Heads { heads: self.heads, d: c / self.heads, t, mask: self.mask.as_deref(), bf16: self.bf16 }
    }

    /// Sequence `i`'s query positions: all `t`, or the pooled one.
    fn queries(&self, i: usize, t: usize) -> Range<usize> {
        match &self.pooled {
            Some(positions) => positions[i]..positions[i] + 1,
            None => 0..t,
        }
    }

    /// The pooled block's output rows among the `[B·T]` tokens.
    fn pooled_rows(&self, t: usize) -> Option<Vec<usize>> {
        Some(crate::nn::pooled_rows(self.pooled.as_ref()?, t))
    }

    fn check(&self, w: &[&[f32]], c: usize) -> candle_core::Result<usize> {
        let inter = w[FC1_B].len();
        let expect = [c, c, c * c, c, c * c, c, c * c, c, c * c, c, c, c, inter * c, inter, c * inter, c];
        if w.iter().zip(expect).any(|(w, n)| w.len() != n) {
            candle_core::bail!("block: parameters do not fit width {c} (intermediate {inter})");
        }
        Ok(inter)
    }

    /// `C (+)= op(A)·op(B)` as [`par_sgemm`] with β = 0 or 1: in bf16 in [`bf16_mode`]
    /// (when the shape fits the kernel), else the BLAS's f32 product.
    fn product_into(
        &self,
        trans: (bool, bool),
        (m, n, k): (usize, usize, usize),
        a: (&[f32], usize),
        b: (&[f32], usize),
        accumulate: bool,
        c: (&mut [f32], usize),
    ) {
        if self.bf16 && bf16_products::fits(n, k) {
            bf16_products::product_into(trans, (m, n, k), a, b, None, accumulate, c);
        } else {
            par_sgemm(trans, (m, n, k), 1.0, a, b, if accumulate { 1.0 } else { 0.0 }, c);
        }
    }

    /// `C (+)= A·op(W)` for parameter `weight` (`w` holds the parameters' data): a forward's
    /// `x·Wᵀ` (`transposed`, W `[n, k]`) or a backward's `dY·W` (W `[k, n]`), as
    /// [`Block::product_into`], with the weight packed once per [`frozen_weights`] scope for
    /// products of up to [`PACK_ONCE_MAX_ROWS`] rows (in f32, by wise's own kernel, up to
    /// [`f32_products::max_rows`]).
    fn weight_product(
        &self,
        (weight, w): (usize, &[&[f32]]),
        transposed: bool,
        (m, n, k): (usize, usize, usize),
        a: (&[f32], usize),
        accumulate: bool,
        c: (&mut [f32], usize),
    ) {
        let b = (w[weight], if transposed { k } else { n });
        let kernel = if self.bf16 { bf16_products::fits(n, k) } else { m <= f32_products::max_rows() };
        let (Some(frozen), true) = (&self.frozen, kernel && m <= PACK_ONCE_MAX_ROWS) else {
            return self.product_into((false, transposed), (m, n, k), a, b, accumulate, c);
        };
        let key = (self.params[weight].id(), transposed, self.bf16);
        let cached = frozen.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        // Packed outside the lock: packing splits over rayon's threads, and a thread waiting
        // for its split may run another block's product meanwhile.
        let packed = cached.unwrap_or_else(|| {
            let packed = Arc::new(if self.bf16 {
                PackedWeight::Bf16(PackedB::new(transposed, (n, k), b))
            } else {
                PackedWeight::F32(PackedF32::new(transposed, (n, k), b))
            });
            frozen.lock().unwrap_or_else(|e| e.into_inner()).insert(key, packed.clone());
            packed
        });
        match &*packed {
            PackedWeight::Bf16(packed) => {
                bf16_products::product_into((false, transposed), (m, n, k), a, b, Some(packed), accumulate, c)
            }
            PackedWeight::F32(packed) => f32_products::product_into(m, a, packed, accumulate, c),
        }
    }

    /// `op(A)·op(B)` in a new buffer, in bf16 as [`Block::product_into`].
    fn product(
        &self,
        trans: (bool, bool),
        (m, n, k): (usize, usize, usize),
        a: (&[f32], usize),
        b: (&[f32], usize),
    ) -> Vec<f32> {
        if self.bf16 && bf16_products::fits(n, k) {
            bf16_products::product(trans, (m, n, k), a, b, None)
        } else {
            product(trans, (m, n, k), a, b)
        }
    }

    /// `[Q | K | V] = LN1(x)·Wqkvᵀ + bqkv`, `[N, 3C]`, from `ln1` `[N, C]`: three products
    /// reading the weights where they are, writing column blocks of one buffer. Pooled, Q
    /// only at the pooled rows (its other rows hold bias values nothing reads).
    fn input_projections(&self, ln1: &[f32], w: &[&[f32]], (t, c): (usize, usize)) -> Vec<f32> {
        let n = ln1.len() / c;
        let bqkv = [w[Q_W + 1], w[K_W + 1], w[V_W + 1]].concat();
        let mut qkv = start(take(n * 3 * c), n, &bqkv, None);
        let rows = self.pooled_rows(t);
        let first = if rows.is_some() { 1 } else { 0 };
        for (i, weight) in [Q_W, K_W, V_W].into_iter().enumerate().skip(first) {
            self.weight_product((weight, w), true, (n, c, c), (ln1, c), true, (&mut qkv[i * c..], 3 * c));
        }
        if let Some(rows) = rows {
            let ln1_at = gather(ln1, &rows, c);
            let mut q = take(rows.len() * c);
            self.weight_product((Q_W, w), true, (rows.len(), c, c), (&ln1_at, c), false, (&mut q, c));
            scatter_add(&q, &rows, (&mut qkv, 3 * c));
            give([ln1_at, q]);
        }
        qkv
    }
}

impl CustomOp1 for Block {
    fn name(&self) -> &'static str {
        "transformer-block"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (b, t, c) = l.shape().dims3()?;
        let rows = self.pooled_rows(t);
        // Output rows: every token, or one per sequence.
        let m = rows.as_ref().map_or(b * t, Vec::len);
        let params: Vec<&Tensor> = self.params.iter().collect();
        let (y, saved) = with_slices(&params, |w| {
            let inter = self.check(w, c)?;
            let mut ln1 = take(b * t * c);
            layer_norm_rows(x, (w[LN1_W], w[LN1_B]), self.eps.0, &mut ln1);
            let qkv = self.input_projections(&ln1, w, (t, c));
            let mut attn = take(m * c);
            let heads = self.heads(t, c);
            // Every head's probabilities when a backward will need them and they take no
            // more room than fc1's output (ViT-B, the text towers; not ViT-L/14's 16 heads
            // of 257 tokens), else one head's scratch per sequence, recomputed backwards.
            let per_sequence = heads.probs_len(m / b);
            let keep_probs = self.keep && heads.probs_len(1) <= inter;
            let mut probs = if keep_probs { take(b * per_sequence) } else { Vec::new() };
            let attend = |i: usize, y: &mut [f32], qkv: &[f32], p: &mut [f32]| {
                heads.forward(qkv, self.queries(i, t), y, p);
            };
            let outputs = attn.par_chunks_mut(m / b * c).zip(qkv.par_chunks(t * 3 * c)).enumerate();
            if keep_probs {
                outputs
                    .zip(probs.par_chunks_mut(per_sequence))
                    .for_each(|((i, (y, qkv)), p)| attend(i, y, qkv, p));
            } else {
                outputs.for_each(|(i, (y, qkv))| attend(i, y, qkv, &mut vec![0f32; m / b * t]));
            }
            let x_at = rows.as_ref().map(|rows| gather(x, rows, c));
            let mut x_mid = start(take(m * c), m, w[OUT_B], Some(x_at.as_deref().unwrap_or(x)));
            give(x_at);
            self.weight_product((OUT_W, w), true, (m, c, c), (&attn, c), true, (&mut x_mid, c));
            let mut ln2 = take(m * c);
            layer_norm_rows(&x_mid, (w[LN2_W], w[LN2_B]), self.eps.1, &mut ln2);
            // fc1's bias is added by the activation's pass, which reads h anyway (as the
            // product's starting accumulator it cost a pass writing h and the product
            // reading it back).
            let mut h = take(m * inter);
            self.weight_product((FC1_W, w), true, (m, inter, c), (&ln2, c), false, (&mut h, inter));
            let mut act = take(m * inter);
            bias_activation_rows(self.act, w[FC1_B], &mut h, &mut act);
            let mut y = start(Vec::new(), m, w[FC2_B], Some(&x_mid));
            self.weight_product((FC2_W, w), true, (m, c, inter), (&act, inter), true, (&mut y, c));
            Ok((y, Saved { ln1, qkv, probs, attn, x_mid, ln2, h, act }))
        })?;
        if self.keep {
            *self.saved.lock().map_err(|_| candle_core::Error::msg("block: poisoned lock"))? = Some(saved);
        }
        let shape = if rows.is_some() { Shape::from((b, c)) } else { l.shape().clone() };
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (_, t, c) = x.dims3()?;
        let grad = grad.contiguous()?;
        let saved = self.saved.lock().map_err(|_| candle_core::Error::msg("block: poisoned lock"))?;
        let s = saved.as_ref().ok_or_else(|| candle_core::Error::msg("block: backward before forward"))?;
        let rows = self.pooled_rows(t);
        let mut inputs: Vec<&Tensor> = vec![x, &grad];
        inputs.extend(&self.params);
        let (dx, param_grads) = with_slices(&inputs, |all| {
            let (x, dy, w) = (all[0], all[1], &all[2..]);
            let inter = self.check(w, c)?;
            let (n, m) = (x.len() / c, dy.len() / c);
            // The MLP: y = x_mid + act(LN2(x_mid)·W1ᵀ + b1)·W2ᵀ + b2 (M rows).
            let mut d_mid = dy.to_vec();
            let mut dh = take(m * inter);
            self.weight_product((FC2_W, w), false, (m, inter, c), (dy, c), false, (&mut dh, inter));
            let d_fc2 = self.product((true, false), (c, inter, m), (dy, c), (&s.act, inter));
            activation_grad_rows(self.act, &s.h, &mut dh);
            let mut d_ln2 = take(m * c);
            self.weight_product((FC1_W, w), false, (m, c, inter), (&dh, inter), false, (&mut d_ln2, c));
            let d_fc1 = self.product((true, false), (inter, c, m), (&dh, inter), (&s.ln2, c));
            let (mut d_ln2_w, mut d_ln2_b) = (vec![0f32; c], vec![0f32; c]);
            layer_norm_grad_rows(
                &s.x_mid,
                w[LN2_W],
                &d_ln2,
                self.eps.1,
                (&mut d_mid, true),
                (&mut d_ln2_w, &mut d_ln2_b),
            );
            // Attention: x_mid = x + attention(LN1(x)·Wqkvᵀ + bqkv)·Woᵀ + bo.
            let mut d_attn = take(m * c);
            self.weight_product((OUT_W, w), false, (m, c, c), (&d_mid, c), false, (&mut d_attn, c));
            let d_out = self.product((true, false), (c, c, m), (&d_mid, c), (&s.attn, c));
            // Pooled, dQ is 0 off the pooled rows: zeroed, the bias gradient is plain column sums.
            let mut dqkv = take(n * 3 * c);
            if rows.is_some() {
                dqkv.fill(0.0);
            }
            let heads = self.heads(t, c);
            let per_sequence = heads.probs_len(m / (n / t));
            dqkv.par_chunks_mut(t * 3 * c)
                .zip(s.qkv.par_chunks(t * 3 * c).zip(d_attn.par_chunks(m / (n / t) * c)))
                .enumerate()
                .for_each(|(i, (dqkv, (qkv, dy)))| {
                    let queries = self.queries(i, t);
                    let scratch = queries.len() * t;
                    let kept = s.probs.get(i * per_sequence..(i + 1) * per_sequence);
                    let mut p = vec![0f32; if kept.is_some() { 0 } else { scratch }];
                    heads.backward(qkv, queries, dy, dqkv, kept, (&mut p, &mut vec![0f32; scratch]));
                });
            let mut d_ln1 = take(n * c);
            let (d_wq, d_wkv) = match &rows {
                None => {
                    for (i, weight) in [Q_W, K_W, V_W].into_iter().enumerate() {
                        let d_proj = (&dqkv[i * c..], 3 * c);
                        self.weight_product((weight, w), false, (n, c, c), d_proj, i > 0, (&mut d_ln1, c));
                    }
                    // One product; the q/k/v gradients are row blocks of it.
                    let d_wqkv = self.product((true, false), (3 * c, c, n), (&dqkv, 3 * c), (&s.ln1, c));
                    let d_wqkv = Tensor::from_vec(d_wqkv, (3 * c, c), &Device::Cpu)?;
                    (d_wqkv.narrow(0, 0, c)?, d_wqkv.narrow(0, c, 2 * c)?)
                }
                Some(rows) => {
                    for (i, weight) in [K_W, V_W].into_iter().enumerate() {
                        let d_proj = (&dqkv[(i + 1) * c..], 3 * c);
                        self.weight_product((weight, w), false, (n, c, c), d_proj, i > 0, (&mut d_ln1, c));
                    }
                    let dq = gather(&dqkv, rows, 3 * c);
                    let mut d_ln1_at = take(m * c);
                    self.weight_product((Q_W, w), false, (m, c, c), (&dq, 3 * c), false, (&mut d_ln1_at, c));
                    scatter_add(&d_ln1_at, rows, (&mut d_ln1, c));
                    let ln1_at = gather(&s.ln1, rows, c);
                    let d_wq = self.product((true, false), (c, c, m), (&dq, 3 * c), (&ln1_at, c));
                    let d_wkv = self.product((true, false), (2 * c, c, n), (&dqkv[c..], 3 * c), (&s.ln1, c));
                    give([dq, ln1_at, d_ln1_at]);
                    (
                        Tensor::from_vec(d_wq, (c, c), &Device::Cpu)?,
                        Tensor::from_vec(d_wkv, (2 * c, c), &Device::Cpu)?,
                    )
                }
            };
            let d_bqkv = Tensor::from_vec(col_sums(&dqkv, 3 * c), 3 * c, &Device::Cpu)?;
            let d_out_b = col_sums(&d_mid, c);
            // The residual stream's gradient at every token: the pooled block's only at its rows.
            let mut dx = match &rows {
                None => d_mid,
                Some(rows) => {
                    let mut dx = vec![0f32; n * c];
                    scatter_add(&d_mid, rows, (&mut dx, c));
                    dx
                }
            };
            let (mut d_ln1_w, mut d_ln1_b) = (vec![0f32; c], vec![0f32; c]);
            layer_norm_grad_rows(
                x,
                w[LN1_W],
                &d_ln1,
                self.eps.0,
                (&mut dx, true),
                (&mut d_ln1_w, &mut d_ln1_b),
            );
            let vec = |v: Vec<f32>| {
                let n = v.len();
                Tensor::from_vec(v, n, &Device::Cpu)
            };
            let mut grads = vec![vec(d_ln1_w)?, vec(d_ln1_b)?, d_wq, d_bqkv.narrow(0, 0, c)?];
            for i in 0..2 {
                grads.extend([d_wkv.narrow(0, i * c, c)?, d_bqkv.narrow(0, (i + 1) * c, c)?]);
            }
            grads.extend([vec(d_out)?, vec(d_out_b)?, vec(d_ln2_w)?, vec(d_ln2_b)?]);
            grads.extend([vec(d_fc1)?, vec(col_sums(&dh, inter))?, vec(d_fc2)?, vec(col_sums(dy, c))?]);
            give([dh, d_ln2, d_attn, dqkv, d_ln1]);
            Ok((dx, grads))
        })?;
        let mut handed = Vec::with_capacity(param_grads.len());
        for (param, g) in self.params.iter().zip(param_grads) {
            handed.push((param.clone(), g.reshape(param.shape())?));
        }
        hand_over(handed);
        Ok(Some(Tensor::from_vec(dx, x.shape(), &Device::Cpu)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use candle_core::Var;

    use crate::nn::EncoderShape;
    use crate::params::ParamBuilder;
    use crate::tests::{assert_gradients_match, rel_diff};

    /// Whether a BLAS is loaded, which the fused blocks need (CI must have one).
    fn has_blas() -> candle_core::Result<bool> {
        let blas = crate::matmul::on_blas(&[&Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu)?]);
        assert!(blas || std::env::var_os("CI").is_none(), "CI must have a BLAS");
        Ok(blas)
    }

    /// The fused block equals the op-by-op block (which the parity tests hold to
    /// PyTorch): output, input gradient and every parameter's gradient, for each
    /// activation, with and without a causal mask, through [`backward`].
    #[test]
    fn matches_the_op_by_op_block() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        if !has_blas()? {
            return Ok(());
        }
        let (b, t, c, heads) = (3, 7, 24, 4);
        let causal: Vec<f32> =
            (0..t * t).map(|i| if i % t > i / t { f32::NEG_INFINITY } else { 0.0 }).collect();
        let causal = Tensor::from_vec(causal, (t, t), &dev)?;
        // 4 heads × 7 tokens: the probabilities are kept for the backward with fc1 40 wide,
        // recomputed with 16.
        let cases = [(Activation::QuickGelu, 40), (Activation::Gelu, 40), (Activation::GeluTanh, 40)];
        for (act, intermediate) in cases.into_iter().chain([(Activation::QuickGelu, 16)]) {
            for mask in [None, Some(&causal)] {
                let shape = EncoderShape { hidden: c, intermediate, layers: 2, heads, act, eps: 1e-5 };
                let mut pb = ParamBuilder::fresh(7, &dev);
                let layer = EncoderLayer::new(&mut pb, "layer", &shape).unwrap();
                // Fresh LayerNorms are the identity: perturb them so their gradients mean something.
                let mut params = pb.finish().unwrap();
                for (name, var) in params.iter_mut() {
                    if name.contains("layer_norm") {
                        var.set(&(var.as_tensor() + Tensor::randn(0f32, 0.3, var.shape(), &dev)?)?)?;
                    }
                }
                let x = candle_core::Var::randn(0f32, 1.0, (b, t, c), &dev)?;
                let probe = Tensor::randn(0f32, 1.0, (b, t, c), &dev)?;
                let fused = layer.forward(&x, mask)?;
                let reference = layer.forward_op_by_op(&x, mask)?;
                let what = format!("{act:?}, fc1 {intermediate}, mask {}", mask.is_some());
                assert!(
                    rel_diff(&fused, &reference) < 1e-5,
                    "{what}: forward off by {}",
                    rel_diff(&fused, &reference)
                );
                let fused_values = fused.flatten_all()?.to_vec1::<f32>()?;
                let g_fused = backward(&(fused * &probe)?.sum_all()?)?;
                let g_ref = (reference * &probe)?.sum_all()?.backward()?;
                let vars = params.iter().map(|(n, v)| (n.as_str(), v)).chain([("x", &x)]);
                let checked = assert_gradients_match(&what, vars, &g_fused, &g_ref);
                assert_eq!(checked, 17, "16 parameters and the input");
                // Inference mode: the same output, and nothing to backpropagate into the block.
                let inferred = inference_mode(|| layer.forward(&x, mask))?;
                assert_eq!(inferred.flatten_all()?.to_vec1::<f32>()?, fused_values);
                let g = backward(&(inferred * &probe)?.sum_all()?)?;
                assert!(g.get(&x).is_none() && g.get(&layer.mlp.fc1.weight).is_none(), "{what}");
                // Through an encoder the blocks run on rayon's threads (`on_compute_threads`):
                // this thread's inference mode must go with them.
                assert!(rayon::current_thread_index().is_none(), "the test runs outside the pool");
                let encoder = crate::nn::Encoder { layers: vec![layer.clone()] };
                let inferred = inference_mode(|| encoder.forward(&x, mask))?;
                assert_eq!(inferred.flatten_all()?.to_vec1::<f32>()?, fused_values);
                let g = backward(&(inferred * &probe)?.sum_all()?)?;
                assert!(g.get(&x).is_none() && g.get(&layer.mlp.fc1.weight).is_none(), "{what}: on the pool");
            }
        }
        Ok(())
    }

    /// Two random blocks of widths the bf16 kernel takes: 128 (q/k/v, out, fc2), 256 (fc1);
    /// and their parameters by name.
    fn bf16_sized_layers(seed: u64, act: Activation) -> (Vec<EncoderLayer>, BTreeMap<String, Var>) {
        let shape = EncoderShape { hidden: 128, intermediate: 256, layers: 2, heads: 2, act, eps: 1e-5 };
        let mut pb = ParamBuilder::fresh(seed, &Device::Cpu);
        let layers = (0..2).map(|i| EncoderLayer::new(&mut pb, &format!("l{i}"), &shape).unwrap()).collect();
        (layers, pb.finish().unwrap())
    }

    /// [`bf16_mode`] inference through an encoder (on rayon's threads, an `inference_mode`
    /// nested inside): within bf16's rounding of the f32 output where the CPU has
    /// AVX512_BF16, and not equal to it (the bf16 products ran); equal elsewhere. Inside
    /// [`frozen_weights`], equal to it (without AVX512_BF16: f32's packed kernel, up to its
    /// order of sums).
    #[test]
    fn bf16_inference_is_f32_up_to_bf16_rounding() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        if !has_blas()? {
            return Ok(());
        }
        let (layers, _) = bf16_sized_layers(11, Activation::QuickGelu);
        let encoder = crate::nn::Encoder { layers };
        let x = Tensor::randn(0f32, 1.0, (2, 9, 128), &dev)?;
        let f32_out = inference_mode(|| encoder.forward(&x, None))?;
        let bf16_out = bf16_mode(|| inference_mode(|| encoder.forward(&x, None)))?;
        let diff = rel_diff(&bf16_out, &f32_out);
        if crate::bf16_products::supported() {
            assert!(diff > 0.0 && diff < 1e-2, "bf16 against f32: {diff}");
        } else {
            assert_eq!(diff, 0.0);
        }
        // With the weights packed once for a scope: the same values, batch after batch, from
        // one packed copy of each of the 2 × 6 weights of the blocks' products. (Without
        // AVX512_BF16, f32's packed kernel: its own order of sums.)
        let values = |t: Tensor| t.flatten_all()?.to_vec1::<f32>();
        let (frozen, packed) = frozen_weights(|| -> candle_core::Result<_> {
            let mut outs = Vec::new();
            for _ in 0..2 {
                outs.push(bf16_mode(|| inference_mode(|| encoder.forward(&x, None)))?);
            }
            let packed = FROZEN.with_borrow(|f| f.as_ref().map(|f| f.lock().unwrap().len()));
            Ok((outs, packed))
        })?;
        for out in &frozen {
            if crate::bf16_products::supported() {
                assert_eq!(values(out.clone())?, values(bf16_out.clone())?);
            } else {
                assert!(rel_diff(out, &bf16_out) < 1e-5);
            }
        }
        let kernel = crate::bf16_products::supported() || f32_products::supported();
        assert_eq!(packed, Some(if kernel { 12 } else { 0 }));
        // Products of more rows than PACK_ONCE_MAX_ROWS pack per product: no copies kept.
        let big = Tensor::randn(0f32, 1.0, (PACK_ONCE_MAX_ROWS / 100 + 1, 100, 128), &dev)?;
        let packed = frozen_weights(|| -> candle_core::Result<_> {
            bf16_mode(|| inference_mode(|| encoder.forward(&big, None)))?;
            Ok(FROZEN.with_borrow(|f| f.as_ref().map(|f| f.lock().unwrap().len())))
        })?;
        assert_eq!(packed, Some(0));
        assert!(FROZEN.with_borrow(Option::is_none), "the packed weights go with the scope");
        Ok(())
    }

    /// [`bf16_mode`] training through two blocks, the last one pooled (every layout of the
    /// bf16 kernel: forward x·Wᵀ, backward dY·W and dYᵀ·X): the loss and every parameter's
    /// gradient within bf16's rounding of f32's and not equal to them where the CPU has
    /// AVX512_BF16; equal elsewhere. Inside [`frozen_weights`], equal to them (without
    /// AVX512_BF16: f32's packed kernel, up to its order of sums).
    #[test]
    fn bf16_training_is_f32_up_to_bf16_rounding() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        if !has_blas()? {
            return Ok(());
        }
        let (layers, params) = bf16_sized_layers(13, Activation::Gelu);
        let (first, last) = (&layers[0], &layers[1]);
        let x = candle_core::Var::randn(0f32, 1.0, (3, 9, 128), &dev)?;
        let probe = Tensor::randn(0f32, 1.0, (3, 128), &dev)?;
        let step = || -> candle_core::Result<(Tensor, GradStore)> {
            let y = last.forward_at(&first.forward(&x, None)?, &[0, 4, 8], None)?;
            let loss = (y * &probe)?.sqr()?.sum_all()?;
            let grads = backward(&loss)?;
            Ok((loss, grads))
        };
        let (loss, grads) = step()?;
        let (bf16_loss, bf16_grads) = bf16_mode(step)?;
        let bf16 = crate::bf16_products::supported();
        let diff = rel_diff(&bf16_loss, &loss);
        assert!(if bf16 { diff > 0.0 && diff < 1e-2 } else { diff == 0.0 }, "loss: {diff}");
        let mut checked = 0;
        for (name, var) in params.iter().map(|(n, v)| (n.as_str(), v)).chain([("x", &x)]) {
            let (g, want) = (bf16_grads.get(var).unwrap(), grads.get(var).unwrap());
            let diff = rel_diff(g, want);
            if !bf16 {
                assert_eq!(diff, 0.0, "d{name}");
            } else if !name.ends_with("k_proj.bias") {
                assert!(diff > 0.0 && diff < 2e-2, "d{name}: {diff}");
            }
            checked += 1;
        }
        assert_eq!(checked, 33, "32 parameters and the input");
        // A Fisher's loop: weights packed once for the forward (`x·Wᵀ`) and the backward
        // (`dY·W`), 2 × 6 each; the same gradients as packed per product.
        let (frozen_grads, packed) = frozen_weights(|| -> candle_core::Result<_> {
            let (_, grads) = bf16_mode(step)?;
            Ok((grads, FROZEN.with_borrow(|f| f.as_ref().map(|f| f.lock().unwrap().len()))))
        })?;
        assert_eq!(packed, Some(if bf16 || f32_products::supported() { 24 } else { 0 }));
        for (name, var) in &params {
            let (a, b) = (frozen_grads.get(var).unwrap(), bf16_grads.get(var).unwrap());
            if bf16 {
                assert_eq!(a.flatten_all()?.to_vec1::<f32>()?, b.flatten_all()?.to_vec1::<f32>()?, "d{name}");
            } else {
                assert!(rel_diff(a, b) < 1e-4, "d{name}");
            }
        }
        Ok(())
    }

    /// In f32, [`frozen_weights`] runs the blocks' weight products in wise's f32 kernel from
    /// copies packed once (2 × 6 for a forward, 2 × 6 more for a backward's `dY·W`): the
    /// output and a Fisher's loop's gradients (input and every parameter's) are the BLAS's
    /// up to the order of sums, and not equal to them (the kernel ran), where the CPU has
    /// AVX-512 or AVX2; equal elsewhere.
    #[test]
    fn f32_frozen_weights_match_the_blas() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        if !has_blas()? {
            return Ok(());
        }
        let (layers, params) = bf16_sized_layers(17, Activation::QuickGelu);
        let kernel = f32_products::supported();
        let close = |a: &Tensor, b: &Tensor, what: &str| {
            let diff = rel_diff(a, b);
            assert!(if kernel { diff > 0.0 && diff < 1e-5 } else { diff == 0.0 }, "{what}: {diff}");
        };
        let packed = || FROZEN.with_borrow(|f| f.as_ref().map(|f| f.lock().unwrap().len()));
        let encoder = crate::nn::Encoder { layers: layers.clone() };
        let x = Tensor::randn(0f32, 1.0, (2, 9, 128), &dev)?;
        let blas = inference_mode(|| encoder.forward(&x, None))?;
        let (frozen, count) = frozen_weights(|| -> candle_core::Result<_> {
            Ok((inference_mode(|| encoder.forward(&x, None))?, packed()))
        })?;
        close(&frozen, &blas, "output");
        assert_eq!(count, Some(if kernel { 12 } else { 0 }));
        let (first, last) = (&layers[0], &layers[1]);
        let x = candle_core::Var::randn(0f32, 1.0, (3, 9, 128), &dev)?;
        let probe = Tensor::randn(0f32, 1.0, (3, 128), &dev)?;
        let step = || -> candle_core::Result<GradStore> {
            let y = last.forward_at(&first.forward(&x, None)?, &[0, 4, 8], None)?;
            backward(&(y * &probe)?.sqr()?.sum_all()?)
        };
        let grads = step()?;
        let (frozen_grads, count) = frozen_weights(|| -> candle_core::Result<_> { Ok((step()?, packed())) })?;
        assert_eq!(count, Some(if kernel { 24 } else { 0 }));
        for (name, var) in params.iter().map(|(n, v)| (n.as_str(), v)).chain([("x", &x)]) {
            if !name.ends_with("k_proj.bias") {
                close(frozen_grads.get(var).unwrap(), grads.get(var).unwrap(), &format!("d{name}"));
            }
        }
        Ok(())
    }
}
