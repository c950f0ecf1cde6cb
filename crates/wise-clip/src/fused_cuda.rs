//! The CUDA side of [`crate::fused`]: the MLP's activation, LayerNorm and softmax, forward and
//! backward, the bias add (with a residual) and its column sums, the attention heads'
//! split and merge, each one kernel (`src/kernels/fused.cu`, compiled to PTX by `build.rs`)
//! over f32 or bf16 activations; the activation can add the bias of the product before
//! it, saving the bias add's pass.
//!
//! Op by op on a GPU, LayerNorm is ~11 kernels in f32 with a temporary each, softmax 5,
//! QuickGELU 3, and autograd adds a zero-filled buffer and an add per node backwards; these
//! are memory-bound passes over the largest activations of a block. The custom ops in
//! `fused.rs` call the functions here from their `cuda_fwd`. LayerNorm reads the f32 master
//! weight and bias as they are and returns its backward as one f32 `[rows + 2, d]`
//! tensor (dx's rows, dw, db), as on the CPU. [`adamw`] is wise-train's optimizer step in
//! one pass, [`sum_of_squares`] its gradient norm.

use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, DevicePtr, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDevice, CudaStorageSlice, WrapErr};
use candle_core::{CudaStorage, Device, Layout, Result, Shape, Storage, Tensor};

use crate::config::Activation;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
const MODULE: &str = "wise_fused";
const THREADS: u32 = 256;
/// fused.cu's `LN_ROWS_PER_BLOCK` (backward) and `LN_MAX_WIDTH` (the widest row).
const LN_ROWS_PER_BLOCK: usize = 32;
pub(crate) const LN_MAX_WIDTH: usize = 2048;

/// Loads the kernel `{name}_{suffix}` of fused.cu (the module on first use); a driver
/// that cannot load the PTX gets an error saying how to run without it.
macro_rules! kernel {
    ($dev:expr, $name:expr, $suffix:expr) => {
        $dev.get_or_load_custom_func(&format!("{}_{}", $name, $suffix), MODULE, PTX).map_err(|e| {
            candle_core::Error::Msg(format!(
                "loading wise's fused CUDA kernel {}_{} (PTX for compute_{}): {e}; \
                 WISE_CUDA_FUSED=off runs candle's op-by-op kernels instead",
                $name,
                $suffix,
                env!("WISE_CUDA_COMPUTE_CAP")
            ))
        })
    };
}

fn launch_config(blocks: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (blocks.max(1) as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

fn view<'a, T>(s: &'a CudaSlice<T>, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(s.slice(start..end)),
        None => candle_core::bail!("{what}: contiguous input expected"),
    }
}

/// Calls `$body` with the f32 or bf16 slices of the storages (all of one dtype) and the
/// kernels' name suffix bound to `$suffix`, and wraps the slice it returns back into a
/// storage slice of that dtype.
macro_rules! per_dtype {
    ([$($s:expr),+], |$($x:ident),+; $suffix:ident| $body:expr) => {
        match ($(&$s.slice,)+) {
            ($(CudaStorageSlice::F32($x),)+) => {
                let $suffix = "f32";
                CudaStorageSlice::F32($body)
            }
            ($(CudaStorageSlice::BF16($x),)+) => {
                let $suffix = "bf16";
                CudaStorageSlice::BF16($body)
            }
            _ => candle_core::bail!("fused CUDA kernels take f32 or bf16 activations, all of one dtype"),
        }
    };
}

fn f32_view<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, f32>> {
    match &s.slice {
        CudaStorageSlice::F32(w) => view(w, l, what),
        _ => candle_core::bail!("{what}: f32 weights expected"),
    }
}

fn f32_view_mut<'a>(s: &'a mut CudaStorage, l: &Layout, what: &str) -> Result<CudaViewMut<'a, f32>> {
    match (&mut s.slice, l.contiguous_offsets()) {
        (CudaStorageSlice::F32(w), Some((start, end))) => Ok(w.slice_mut(start..end)),
        _ => candle_core::bail!("{what}: contiguous f32 expected"),
    }
}

/// AdamW's update in place (fused.cu `adamw_f32`) of weights `theta` and moments `m`, `v`
/// from the gradient `g`, all f32, contiguous and of one length. `c`: β₁, β₂, ε,
/// 1 − lr·wd, lr/(1 − β₁ᵗ), √(1 − β₂ᵗ), and the gradient's scale.
pub(crate) fn adamw(
    (theta, lt): (&mut CudaStorage, &Layout),
    (m, lm): (&mut CudaStorage, &Layout),
    (v, lv): (&mut CudaStorage, &Layout),
    (g, lg): (&CudaStorage, &Layout),
    c: [f32; 7],
) -> Result<()> {
    let n = lt.shape().elem_count();
    if [lm, lv, lg].iter().any(|l| l.shape().elem_count() != n) {
        candle_core::bail!("adamw: weights, moments and gradient differ in length");
    }
    let dev = theta.device.clone();
    let func = kernel!(dev, "adamw", "f32")?;
    let mut theta = f32_view_mut(theta, lt, "adamw weights")?;
    let mut m = f32_view_mut(m, lm, "adamw first moment")?;
    let mut v = f32_view_mut(v, lv, "adamw second moment")?;
    let g = f32_view(g, lg, "adamw gradient")?;
    let mut args = func.builder();
    args.arg(&mut theta);
    args.arg(&mut m);
    args.arg(&mut v);
    args.arg(&g);
    args.arg(&n);
    for x in &c {
        args.arg(x);
    }
    // SAFETY: the arguments match the kernel's signature (fused.cu); the lengths were checked.
    unsafe { args.launch(launch_config(n.div_ceil(THREADS as usize).min(1 << 16))) }.w()?;
    Ok(())
}

/// Σx² over all values of f32 tensors on one CUDA device: a kernel per tensor adding its
/// block sums into one device scalar (no temporaries), read back once.
pub(crate) fn sum_of_squares(ts: &[&Tensor]) -> Result<f64> {
    let Some(first) = ts.first() else { return Ok(0.0) };
    let Device::Cuda(dev) = first.device() else {
        candle_core::bail!("sum of squares: CUDA tensors expected")
    };
    let func = kernel!(dev, "sum_squares", "f32")?;
    let acc = dev.alloc_zeros::<f32>(1)?;
    for t in ts {
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cuda(s) = &*storage else { candle_core::bail!("sum of squares: CUDA tensors expected") };
        let x = f32_view(s, layout, "sum of squares")?;
        let n = layout.shape().elem_count();
        let mut args = func.builder();
        args.arg(&x);
        args.arg(&n);
        args.arg(&acc);
        // SAFETY: the arguments match the kernel's signature (fused.cu).
        unsafe { args.launch(launch_config(n.div_ceil(THREADS as usize).min(1024))) }.w()?;
    }
    Ok(dev.clone_dtoh(&acc)?[0] as f64)
}

fn storage(slice: CudaStorageSlice, dev: &CudaDevice) -> CudaStorage {
    CudaStorage { slice, device: dev.clone() }
}

/// Launches `{name}_{suffix}(inputs…, out, rows, cols, vec)`, a warp per row, into a fresh
/// output.
fn per_row<T: DeviceRepr>(
    dev: &CudaDevice,
    (name, suffix): (&str, &str),
    inputs: &[&CudaView<T>],
    (rows, cols): (usize, usize),
) -> Result<CudaSlice<T>> {
    let func = kernel!(dev, name, suffix)?;
    // SAFETY: every element is written by the kernel before it is read.
    let out = unsafe { dev.alloc::<T>(rows * cols)? };
    let (rows_i, cols_i) = (int_arg(rows, name)?, int_arg(cols, name)?);
    let vec = vector_access::<T>(dev, cols, inputs.iter().copied().chain([&out.slice(..)]));
    let mut args = func.builder();
    for x in inputs {
        args.arg(*x);
    }
    args.arg(&out);
    args.arg(&rows_i);
    args.arg(&cols_i);
    args.arg(&vec);
    // SAFETY: the arguments match the kernel's signature (fused.cu).
    unsafe { args.launch(launch_config(rows.div_ceil(THREADS as usize / 32))) }.w()?;
    Ok(out)
}

/// An optional f32 operand `[d]` of a kernel (a bias), passed as a null pointer when absent.
type Optional<'a> = Option<(&'a CudaStorage, &'a Layout)>;

/// fused.cu's code for the MLP's activation.
fn activation_code(act: Activation) -> i32 {
    match act {
        Activation::QuickGelu => 0,
        Activation::Gelu => 1,
        Activation::GeluTanh => 2,
    }
}

/// `act(x + b)` over rows, the bias `b` (f32) when given.
pub(crate) fn activation(
    act: Activation,
    (x, lx): (&CudaStorage, &Layout),
    bias: Optional,
) -> Result<CudaStorage> {
    let dev = &x.device;
    let bias = bias.map(|(b, lb)| f32_view(b, lb, "activation bias")).transpose()?;
    let slice = per_dtype!([x], |xs; suffix| {
        let xs = view(xs, lx, "activation")?;
        activation_launch(dev, ("activation_fwd", suffix), (&[&xs], bias.as_ref()), rows_cols(lx), act)?
    });
    Ok(storage(slice, dev))
}

/// The activation's `dx` from its input `x`, the bias when it was given, and `g`.
pub(crate) fn activation_grad(
    act: Activation,
    (x, lx): (&CudaStorage, &Layout),
    bias: Optional,
    (g, lg): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let dev = &x.device;
    let bias = bias.map(|(b, lb)| f32_view(b, lb, "activation-grad bias")).transpose()?;
    let slice = per_dtype!([x, g], |xs, gs; suffix| {
        let (xs, gs) = (view(xs, lx, "activation-grad")?, view(gs, lg, "activation-grad")?);
        activation_launch(dev, ("activation_bwd", suffix), (&[&xs, &gs], bias.as_ref()), rows_cols(lx), act)?
    });
    Ok(storage(slice, dev))
}

/// Launches `{name}_{suffix}(inputs[0], bias or null, inputs[1..]…, out, rows, cols, act,
/// vec)`, a block per row (grid-stride), into a fresh output.
fn activation_launch<T: DeviceRepr>(
    dev: &CudaDevice,
    (name, suffix): (&str, &str),
    (inputs, bias): (&[&CudaView<T>], Option<&CudaView<f32>>),
    (rows, cols): (usize, usize),
    act: Activation,
) -> Result<CudaSlice<T>> {
    let func = kernel!(dev, name, suffix)?;
    // SAFETY: every element is written by the kernel before it is read.
    let out = unsafe { dev.alloc::<T>(rows * cols)? };
    let (rows_i, cols_i) = (int_arg(rows, name)?, int_arg(cols, name)?);
    let code = activation_code(act);
    let vec = vector_access::<T>(dev, cols, inputs.iter().copied().chain([&out.slice(..)]));
    let mut args = func.builder();
    args.arg(inputs[0]);
    arg_or_null(&mut args, bias);
    for x in &inputs[1..] {
        args.arg(*x);
    }
    args.arg(&out);
    args.arg(&rows_i);
    args.arg(&cols_i);
    args.arg(&code);
    args.arg(&vec);
    // SAFETY: the arguments match the kernel's signature (fused.cu); a null bias is none.
    unsafe { args.launch(launch_config(rows.min(1 << 16))) }.w()?;
    Ok(out)
}

/// Pushes a kernel's optional operand: `v`, or a null pointer when absent.
fn arg_or_null<'a, 'b: 'a, 'c: 'b, T>(args: &mut LaunchArgs<'a>, v: Option<&'b CudaView<'c, T>>) {
    const NULL: u64 = 0;
    match v {
        Some(v) => args.arg(v),
        None => args.arg(&NULL),
    };
}

/// fused.cu's `vec`: 1 when rows of `cols` values split into 16-byte accesses and every
/// view starts 16-byte aligned, else 0.
fn vector_access<'a, T: 'a>(
    dev: &CudaDevice,
    cols: usize,
    views: impl IntoIterator<Item = &'a CudaView<'a, T>>,
) -> i32 {
    let per_access = 16 / std::mem::size_of::<T>().max(1);
    let stream = dev.cuda_stream();
    let aligned = |v: &CudaView<T>| v.device_ptr(&stream).0 % 16 == 0;
    i32::from(cols.is_multiple_of(per_access) && views.into_iter().all(aligned))
}

/// Rows and width of a contiguous `[.., d]` input.
fn rows_cols(l: &Layout) -> (usize, usize) {
    let cols = l.dims().last().copied().unwrap_or(1).max(1);
    (l.shape().elem_count() / cols, cols)
}

pub(crate) fn layer_norm(
    (x, lx): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
    eps: f32,
) -> Result<CudaStorage> {
    let (rows, cols) = rows_cols(lx);
    let dev = &x.device;
    let (w, b) = (f32_view(w, lw, "layer-norm")?, f32_view(b, lb, "layer-norm")?);
    let slice = per_dtype!([x], |xs; suffix| {
        let func = kernel!(dev, "layer_norm_fwd", suffix)?;
        let xs = view(xs, lx, "layer-norm")?;
        // SAFETY: every element is written by the kernel before it is read.
        let y = unsafe { dev.alloc(rows * cols)? };
        let (rows_i, cols_i) = (int_arg(rows, "layer-norm rows")?, int_arg(cols, "layer-norm width")?);
        let mut args = func.builder();
        args.arg(&xs);
        args.arg(&w);
        args.arg(&b);
        args.arg(&y);
        args.arg(&rows_i);
        args.arg(&cols_i);
        args.arg(&eps);
        // SAFETY: the arguments match the kernel's signature; a warp per row.
        unsafe { args.launch(launch_config(rows.div_ceil(THREADS as usize / 32))) }.w()?;
        y
    });
    Ok(storage(slice, dev))
}

/// `(x, w, g)` → f32 `[rows + 2, d]`: dx's rows, then dw, then db.
pub(crate) fn layer_norm_grad(
    (x, lx): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
    (g, lg): (&CudaStorage, &Layout),
    eps: f32,
) -> Result<(CudaStorage, Shape)> {
    let (rows, cols) = rows_cols(lx);
    if cols > LN_MAX_WIDTH {
        candle_core::bail!(
            "layer-norm-grad: rows of {cols} values, the CUDA kernel takes at most {LN_MAX_WIDTH}"
        );
    }
    let dev = &x.device;
    let w = f32_view(w, lw, "layer-norm-grad")?;
    // dw and db are sums of atomic adds: zeroed first.
    let out = dev.alloc_zeros::<f32>((rows + 2) * cols)?;
    let outputs = (
        out.slice(0..rows * cols),
        out.slice(rows * cols..(rows + 1) * cols),
        out.slice((rows + 1) * cols..),
    );
    match (&x.slice, &g.slice) {
        (CudaStorageSlice::F32(xs), CudaStorageSlice::F32(gs)) => {
            let inputs = (view(xs, lx, "layer-norm-grad")?, &w, view(gs, lg, "layer-norm-grad")?);
            layer_norm_grad_launch(dev, "f32", inputs, outputs, (rows, cols), eps)?
        }
        (CudaStorageSlice::BF16(xs), CudaStorageSlice::BF16(gs)) => {
            let inputs = (view(xs, lx, "layer-norm-grad")?, &w, view(gs, lg, "layer-norm-grad")?);
            layer_norm_grad_launch(dev, "bf16", inputs, outputs, (rows, cols), eps)?
        }
        _ => candle_core::bail!("layer-norm-grad: f32 or bf16 activations and gradient of one dtype"),
    }
    Ok((storage(CudaStorageSlice::F32(out), dev), Shape::from((rows + 2, cols))))
}

type F32Views<'a> = (CudaView<'a, f32>, CudaView<'a, f32>, CudaView<'a, f32>);

fn layer_norm_grad_launch<T: DeviceRepr>(
    dev: &CudaDevice,
    suffix: &str,
    (x, w, g): (CudaView<T>, &CudaView<f32>, CudaView<T>),
    (dx, dw, db): F32Views,
    (rows, cols): (usize, usize),
    eps: f32,
) -> Result<()> {
    let func = kernel!(dev, "layer_norm_bwd", suffix)?;
    let (rows_i, cols_i) = (rows as i32, cols as i32);
    let mut args = func.builder();
    args.arg(&x);
    args.arg(w);
    args.arg(&g);
    args.arg(&dx);
    args.arg(&dw);
    args.arg(&db);
    args.arg(&rows_i);
    args.arg(&cols_i);
    args.arg(&eps);
    // SAFETY: the arguments match the kernel's signature.
    unsafe { args.launch(launch_config(rows.div_ceil(LN_ROWS_PER_BLOCK))) }.w()?;
    Ok(())
}

/// Softmax over the first `valid` values of each row (all when `None`), the rest 0; plus
/// the f32 additive `mask` `[m, cols]` (row `row % m` for each row) when given.
pub(crate) fn softmax(
    x: &CudaStorage,
    lx: &Layout,
    valid: Option<usize>,
    mask: Optional,
) -> Result<CudaStorage> {
    let dev = &x.device;
    let (rows, cols) = rows_cols(lx);
    let valid = int_arg(valid.unwrap_or(cols).min(cols), "softmax columns")?;
    let mask_rows =
        int_arg(mask.map_or(1, |(_, l)| l.shape().elem_count() / cols.max(1)).max(1), "mask rows")?;
    if mask.is_some_and(|(_, l)| l.dims().last() != Some(&cols)) {
        candle_core::bail!("softmax: a mask whose rows are not {cols} wide");
    }
    let mask = mask.map(|(m, lm)| f32_view(m, lm, "softmax mask")).transpose()?;
    let slice = per_dtype!([x], |xs; suffix| {
        let func = kernel!(dev, "softmax_fwd", suffix)?;
        let xs = view(xs, lx, "softmax")?;
        // SAFETY: every element is written by the kernel before it is read.
        let out = unsafe { dev.alloc(rows * cols)? };
        let (rows_i, cols_i) = (int_arg(rows, "softmax rows")?, int_arg(cols, "softmax width")?);
        let vec = vector_access(dev, cols, [&xs, &out.slice(..)]);
        let mut args = func.builder();
        args.arg(&xs);
        arg_or_null(&mut args, mask.as_ref());
        args.arg(&out);
        args.arg(&rows_i);
        args.arg(&cols_i);
        args.arg(&valid);
        args.arg(&mask_rows);
        args.arg(&vec);
        // SAFETY: the arguments match the kernel's signature (fused.cu); a null mask is none.
        unsafe { args.launch(launch_config(rows.div_ceil(THREADS as usize / 32))) }.w()?;
        out
    });
    Ok(storage(slice, dev))
}

pub(crate) fn softmax_grad(
    y: &CudaStorage,
    ly: &Layout,
    g: &CudaStorage,
    lg: &Layout,
) -> Result<CudaStorage> {
    let dev = &y.device;
    let slice = per_dtype!([y, g], |ys, gs; suffix| {
        let (ys, gs) = (view(ys, ly, "softmax-grad")?, view(gs, lg, "softmax-grad")?);
        per_row(dev, ("softmax_bwd", suffix), &[&ys, &gs], rows_cols(ly))?
    });
    Ok(storage(slice, dev))
}

/// `y + b`, plus `residual` when given, for `y` `[.., d]` (f32 or bf16) and the f32 master
/// bias `b` `[d]`: a block per row.
pub(crate) fn bias_add(
    (y, ly): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
    residual: Option<(&CudaStorage, &Layout)>,
) -> Result<CudaStorage> {
    let (rows, cols) = rows_cols(ly);
    if lb.shape().elem_count() != cols
        || residual.is_some_and(|(_, lr)| lr.shape().elem_count() != rows * cols)
    {
        candle_core::bail!(
            "bias-add: rows of {cols} values, a bias of {}, or a residual of another size",
            lb.shape().elem_count()
        );
    }
    let dev = &y.device;
    let b = f32_view(b, lb, "bias-add")?;
    let residual = residual.map(|(r, lr)| (&r.slice, lr));
    let slice = match (&y.slice, residual) {
        (CudaStorageSlice::F32(ys), None) => {
            CudaStorageSlice::F32(bias_add_launch(dev, "f32", (ys, ly), &b, None, (rows, cols))?)
        }
        (CudaStorageSlice::BF16(ys), None) => {
            CudaStorageSlice::BF16(bias_add_launch(dev, "bf16", (ys, ly), &b, None, (rows, cols))?)
        }
        (CudaStorageSlice::F32(ys), Some((CudaStorageSlice::F32(rs), lr))) => {
            CudaStorageSlice::F32(bias_add_launch(dev, "f32", (ys, ly), &b, Some((rs, lr)), (rows, cols))?)
        }
        (CudaStorageSlice::BF16(ys), Some((CudaStorageSlice::BF16(rs), lr))) => {
            CudaStorageSlice::BF16(bias_add_launch(dev, "bf16", (ys, ly), &b, Some((rs, lr)), (rows, cols))?)
        }
        _ => candle_core::bail!("bias-add: f32 or bf16 input, and a residual of the same dtype"),
    };
    Ok(storage(slice, dev))
}

fn bias_add_launch<T: DeviceRepr>(
    dev: &CudaDevice,
    suffix: &str,
    (y, ly): (&CudaSlice<T>, &Layout),
    b: &CudaView<f32>,
    residual: Option<(&CudaSlice<T>, &Layout)>,
    (rows, cols): (usize, usize),
) -> Result<CudaSlice<T>> {
    let func = kernel!(dev, "bias_add", suffix)?;
    let y = view(y, ly, "bias-add")?;
    let residual = residual.map(|(r, lr)| view(r, lr, "bias-add residual")).transpose()?;
    // SAFETY: every element is written by the kernel before it is read.
    let out = unsafe { dev.alloc::<T>(rows * cols)? };
    let (rows_i, cols_i) = (int_arg(rows, "bias-add rows")?, int_arg(cols, "bias-add width")?);
    let vec = vector_access::<T>(dev, cols, [&y, &out.slice(..)].into_iter().chain(residual.as_ref()));
    let mut args = func.builder();
    args.arg(&y);
    args.arg(b);
    arg_or_null(&mut args, residual.as_ref());
    args.arg(&out);
    args.arg(&rows_i);
    args.arg(&cols_i);
    args.arg(&vec);
    // SAFETY: the arguments match the kernel's signature; blocks stride over the rows; a
    // null residual is none.
    unsafe { args.launch(launch_config(rows.min(1 << 16))) }.w()?;
    Ok(out)
}

/// Column sums of `g` `[.., d]` as f32 `[d]`: the bias's gradient.
pub(crate) fn col_sums(g: &CudaStorage, lg: &Layout) -> Result<CudaStorage> {
    let (rows, cols) = rows_cols(lg);
    let dev = &g.device;
    // Blocks add their partial sums atomically: zeroed first.
    let out = dev.alloc_zeros::<f32>(cols)?;
    let (rows_i, cols_i) = (int_arg(rows, "column-sum rows")?, int_arg(cols, "column-sum width")?);
    match &g.slice {
        CudaStorageSlice::F32(gs) => {
            col_sums_launch(dev, "f32", view(gs, lg, "column sums")?, &out, (rows_i, cols_i))?
        }
        CudaStorageSlice::BF16(gs) => {
            col_sums_launch(dev, "bf16", view(gs, lg, "column sums")?, &out, (rows_i, cols_i))?
        }
        _ => candle_core::bail!("column sums: f32 or bf16 expected"),
    }
    Ok(storage(CudaStorageSlice::F32(out), dev))
}

/// `n` as a kernel's `int` argument.
fn int_arg(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n)
        .map_err(|_| candle_core::Error::Msg(format!("{what}: {n} is too large for the CUDA kernel")))
}

/// Rows per block of fused.cu's `col_sums`.
const COL_SUM_ROWS: usize = 64;

fn col_sums_launch<T: DeviceRepr>(
    dev: &CudaDevice,
    suffix: &str,
    g: CudaView<T>,
    out: &CudaSlice<f32>,
    (rows, cols): (i32, i32),
) -> Result<()> {
    let func = kernel!(dev, "col_sums", suffix)?;
    let mut args = func.builder();
    args.arg(&g);
    args.arg(out);
    args.arg(&rows);
    args.arg(&cols);
    let blocks = (rows as usize).div_ceil(COL_SUM_ROWS).min(1 << 14);
    // SAFETY: the arguments match the kernel's signature; blocks stride over the rows.
    unsafe { args.launch(launch_config(blocks)) }.w()?;
    Ok(())
}

/// The sizes of fused.cu's `heads`: batch, tokens, token slots on the heads side (tokens
/// plus zero padding), heads, head width.
pub(crate) struct HeadsSizes {
    pub b: usize,
    pub t: usize,
    pub slots: usize,
    pub h: usize,
    pub d: usize,
}

/// fused.cu's `heads` (see [`crate::fused::HeadsLayout`]), `mode` 0–3 as there; a split
/// leaves the padding slots zero.
pub(crate) fn heads(
    (x, lx): (&CudaStorage, &Layout),
    HeadsSizes { b, t, slots, h, d }: HeadsSizes,
    scale: f32,
    mode: i32,
) -> Result<CudaStorage> {
    let n = b * t * h * d;
    let n_u = index_len(n)?;
    let split = mode < 2;
    let out_len = if split { b * h * slots * d } else { n };
    let dev = &x.device;
    let (t, slots, h, d) = (t as i32, slots as i32, h as i32, d as i32);
    let slice = per_dtype!([x], |xs; suffix| {
        let func = kernel!(dev, "heads", suffix)?;
        let xs = view(xs, lx, "attention heads")?;
        let out = match split && slots > t {
            true => dev.alloc_zeros(out_len)?,
            // SAFETY: every element is written by the kernel before it is read.
            false => unsafe { dev.alloc(out_len)? },
        };
        // 16-byte accesses along a head: untransposed layouts only.
        let vec = match mode & 1 {
            0 => vector_access(dev, d as usize, [&xs, &out.slice(..)]),
            _ => 0,
        };
        let mut args = func.builder();
        args.arg(&xs);
        args.arg(&out);
        args.arg(&n_u);
        args.arg(&t);
        args.arg(&slots);
        args.arg(&h);
        args.arg(&d);
        args.arg(&scale);
        args.arg(&mode);
        args.arg(&vec);
        // SAFETY: the arguments match the kernel's signature (fused.cu).
        unsafe { args.launch(launch_config(n.div_ceil(THREADS as usize).min(1 << 16))) }.w()?;
        out
    });
    Ok(storage(slice, dev))
}

/// fused.cu's `split_qkv`: `[B, T, 3·H·D]` plus the f32 bias `[3·H·D]` → `[3, B, H, slots,
/// D]` (padding slots zero), q times `scale_q`.
pub(crate) fn split_qkv(
    (x, lx): (&CudaStorage, &Layout),
    (bias, lb): (&CudaStorage, &Layout),
    HeadsSizes { b, t, slots, h, d }: HeadsSizes,
    scale_q: f32,
) -> Result<CudaStorage> {
    let n = index_len(b * t * 3 * h * d)?;
    let sizes = [t, slots, h, d].map(|s| s as i32);
    let dev = &x.device;
    let bias = f32_view(bias, lb, "q/k/v split bias")?;
    let out_len = 3 * b * h * slots * d;
    let slice = per_dtype!([x], |xs; suffix| {
        let func = kernel!(dev, "split_qkv", suffix)?;
        let xs = view(xs, lx, "q/k/v split")?;
        let out = match slots > t {
            true => dev.alloc_zeros(out_len)?,
            // SAFETY: every element is written by the kernel before it is read.
            false => unsafe { dev.alloc(out_len)? },
        };
        let vec = vector_access(dev, d, [&xs, &out.slice(..)]);
        let mut args = func.builder();
        args.arg(&xs);
        args.arg(&bias);
        args.arg(&out);
        launch_qkv(args, &n, &sizes, &scale_q, &vec)?;
        out
    });
    Ok(storage(slice, dev))
}

/// fused.cu's `merge_qkv`: the gradients of q, k, v (`[B, H, slots, D]` each) → one
/// `[B, T, 3·H·D]`, q's times `scale_q`.
pub(crate) fn merge_qkv(
    parts: [(&CudaStorage, &Layout); 3],
    HeadsSizes { b, t, slots, h, d }: HeadsSizes,
    scale_q: f32,
) -> Result<CudaStorage> {
    let n = index_len(b * t * 3 * h * d)?;
    let sizes = [t, slots, h, d].map(|s| s as i32);
    let [(q, lq), (k, lk), (v, lv)] = parts;
    let dev = &q.device;
    let slice = per_dtype!([q, k, v], |qs, ks, vs; suffix| {
        let func = kernel!(dev, "merge_qkv", suffix)?;
        let (qs, ks, vs) = (view(qs, lq, "q/k/v merge")?, view(ks, lk, "q/k/v merge")?, view(vs, lv, "q/k/v merge")?);
        // SAFETY: every element is written by the kernel before it is read.
        let out = unsafe { dev.alloc(n as usize)? };
        let vec = vector_access(dev, d, [&qs, &ks, &vs, &out.slice(..)]);
        let mut args = func.builder();
        args.arg(&qs);
        args.arg(&ks);
        args.arg(&vs);
        args.arg(&out);
        launch_qkv(args, &n, &sizes, &scale_q, &vec)?;
        out
    });
    Ok(storage(slice, dev))
}

/// Launches `split_qkv` or `merge_qkv` (fused.cu), whose pointer arguments `args` holds:
/// the sizes after them, a thread per value (or 16 bytes) of the `n`-long side.
fn launch_qkv<'a>(
    mut args: LaunchArgs<'a>,
    n: &'a u32,
    sizes: &'a [i32; 4],
    scale_q: &'a f32,
    vec: &'a i32,
) -> Result<()> {
    args.arg(n);
    for size in sizes {
        args.arg(size);
    }
    args.arg(scale_q);
    args.arg(vec);
    // SAFETY: with the pointers the caller pushed, the arguments match the kernels'
    // signatures (fused.cu).
    unsafe { args.launch(launch_config((*n as usize).div_ceil(THREADS as usize).min(1 << 16))) }.w()?;
    Ok(())
}

/// `n` values as the heads kernels' 32-bit index.
fn index_len(n: usize) -> Result<u32> {
    u32::try_from(n).ok().filter(|&n| n < 1 << 31).ok_or_else(|| {
        candle_core::Error::Msg(format!("attention heads: {n} values, the CUDA kernels take < 2^31"))
    })
}

/// attention.cu's query (key) rows per block, and threads per block.
const FLASH_ROWS: usize = 64;
const FLASH_THREADS: u32 = 128;

/// The bf16 views of flash attention's `[BH, S, 64]` operands, each checked to start
/// 16-byte aligned (attention.cu moves rows 16 bytes at a time).
fn flash_views<'a, const N: usize>(
    dev: &CudaDevice,
    operands: [(&'a CudaStorage, &'a Layout); N],
) -> Result<[CudaView<'a, half::bf16>; N]> {
    let stream = dev.cuda_stream();
    let mut views = Vec::with_capacity(N);
    for (s, l) in operands {
        let CudaStorageSlice::BF16(x) = &s.slice else {
            candle_core::bail!("flash attention: bf16 operands expected");
        };
        let x = view(x, l, "flash attention")?;
        if x.device_ptr(&stream).0 % 16 != 0 {
            candle_core::bail!("flash attention: an operand not 16-byte aligned");
        }
        views.push(x);
    }
    Ok(views.try_into().unwrap_or_else(|_| unreachable!("N views pushed")))
}

fn flash_launch(blocks: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (FLASH_THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// attention.cu's forward: `O` `[BH, S, 64]` (bf16) and `lse` `[BH, S]` (f32) from q, k, v
/// `[BH, S, 64]`, keys past `valid` off, the f32 additive `mask` `[S, S]` when given.
pub(crate) fn flash_attention(
    [q, k, v]: [(&CudaStorage, &Layout); 3],
    mask: Optional,
    (bh, s, valid): (usize, usize, usize),
) -> Result<(CudaStorage, CudaStorage)> {
    let dev = &q.0.device;
    let [qs, ks, vs] = flash_views(dev, [q, k, v])?;
    let mask = mask.map(|(m, lm)| f32_view(m, lm, "attention mask")).transpose()?;
    let n = bh * s * crate::flash::HEAD_WIDTH;
    // SAFETY: the kernel writes every row of both before anything reads them.
    let (o, lse) = unsafe { (dev.alloc::<half::bf16>(n)?, dev.alloc::<f32>(bh * s)?) };
    let (s_i, valid_i) = (int_arg(s, "attention slots")?, int_arg(valid, "attention tokens")?);
    let func = kernel!(dev, "flash_fwd", "bf16")?;
    let mut args = func.builder();
    args.arg(&qs);
    args.arg(&ks);
    args.arg(&vs);
    arg_or_null(&mut args, mask.as_ref());
    args.arg(&o);
    args.arg(&lse);
    args.arg(&s_i);
    args.arg(&valid_i);
    // SAFETY: the arguments match the kernel's signature (attention.cu); a null mask is none.
    unsafe { args.launch(flash_launch(bh * s.div_ceil(FLASH_ROWS))) }.w()?;
    Ok((storage(CudaStorageSlice::BF16(o), dev), storage(CudaStorageSlice::F32(lse), dev)))
}

/// attention.cu's backward: `[dq; dk; dv]` as one `[3, BH, S, 64]` bf16 buffer from the
/// forward's operands, its `O` and `lse`, and `dO`.
pub(crate) fn flash_attention_grad(
    [q, k, v, o, d_o]: [(&CudaStorage, &Layout); 5],
    lse: (&CudaStorage, &Layout),
    mask: Optional,
    (bh, s, valid): (usize, usize, usize),
) -> Result<CudaStorage> {
    let dev = &q.0.device;
    let [qs, ks, vs, os, dos] = flash_views(dev, [q, k, v, o, d_o])?;
    let lse = f32_view(lse.0, lse.1, "attention lse")?;
    let mask = mask.map(|(m, lm)| f32_view(m, lm, "attention mask")).transpose()?;
    let n = bh * s * crate::flash::HEAD_WIDTH;
    let rows = int_arg(bh * s, "attention rows")?;
    let (s_i, valid_i) = (int_arg(s, "attention slots")?, int_arg(valid, "attention tokens")?);
    // SAFETY: each kernel writes every row of its outputs before anything reads them.
    let (delta, grads) = unsafe { (dev.alloc::<f32>(bh * s)?, dev.alloc::<half::bf16>(3 * n)?) };
    let func = kernel!(dev, "flash_delta", "bf16")?;
    let mut args = func.builder();
    args.arg(&os);
    args.arg(&dos);
    args.arg(&delta);
    args.arg(&rows);
    // SAFETY: the arguments match the kernel's signature (attention.cu).
    unsafe { args.launch(launch_config((bh * s).div_ceil(THREADS as usize / 32))) }.w()?;
    let (dq, dk, dv) = (grads.slice(..n), grads.slice(n..2 * n), grads.slice(2 * n..));
    let blocks = bh * s.div_ceil(FLASH_ROWS);
    for (name, outputs) in [("flash_bwd_kv", vec![&dk, &dv]), ("flash_bwd_q", vec![&dq])] {
        let func = kernel!(dev, name, "bf16")?;
        let mut args = func.builder();
        for x in [&qs, &ks, &vs, &dos] {
            args.arg(x);
        }
        args.arg(&lse);
        args.arg(&delta);
        arg_or_null(&mut args, mask.as_ref());
        for x in outputs {
            args.arg(x);
        }
        args.arg(&s_i);
        args.arg(&valid_i);
        // SAFETY: the arguments match the kernels' signatures (attention.cu); a null mask
        // is none; dq, dk and dv are disjoint slices of `grads`.
        unsafe { args.launch(flash_launch(blocks)) }.w()?;
    }
    Ok(storage(CudaStorageSlice::BF16(grads), dev))
}
