//! sgemm rate (GFLOP/s) on each matrix-product shape of a ViT-B/32 training step, through
//! the same `wise_clip::matmul` entry points the model uses, and the forward's through
//! wise's own kernel from a weight packed once (`packed`, where the CPU has one:
//! `WISE_F32_KERNEL=avx2` picks the AVX2 one on an AVX-512 CPU), as loops over frozen
//! weights run it.
//!
//! ```text
//! cargo bench -p wise-clip --bench gemm -- [--tokens 800] [--reps 5] [--cold]
//! ```
//!
//! `--cold` reads a 1 GiB buffer before each timed product, so its operands come from
//! memory, as inside a training step, not from the last-level cache of the previous rep.
use std::time::Instant;

use candle_core::{Device, Tensor};
use wise_clip::f32_products::{self, PackedF32};
use wise_clip::matmul::{linear, matmul};

fn main() -> anyhow::Result<()> {
    let mut tokens = 800usize;
    let mut reps = 5usize;
    let mut cold = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--tokens" => tokens = args.next().unwrap_or_default().parse()?,
            "--reps" => reps = args.next().unwrap_or_default().parse()?,
            "--cold" => cold = true,
            _ => {}
        }
    }
    let dev = Device::Cpu;
    // Written once, so it is backed by real pages (untouched, it reads the one zero page).
    let flush = vec![1u8; if cold { 1 << 30 } else { 0 }];
    let r = |s: &[usize]| Tensor::randn(0f32, 1.0, s, &dev);
    let time = |name: &str, flop: f64, f: &dyn Fn() -> candle_core::Result<()>| -> anyhow::Result<()> {
        f()?;
        let mut s = 0.0;
        for _ in 0..reps {
            if cold {
                evict(&flush);
            }
            let t = Instant::now();
            f()?;
            s += t.elapsed().as_secs_f64();
        }
        let s = s / reps as f64;
        eprintln!("{name:<40} {:>8.1} GFLOP/s  {:>7.2} ms", flop / s / 1e9, s * 1e3);
        Ok(())
    };
    for (inp, out) in [(768, 768), (768, 2304), (768, 3072), (3072, 768)] {
        let x = r(&[tokens, inp])?;
        let w = r(&[out, inp])?;
        let b = r(&[out])?;
        let g = r(&[tokens, out])?;
        let flop = 2.0 * (tokens * inp * out) as f64;
        time(&format!("fwd  x·Wᵀ+b   {tokens}x{inp} -> {out}"), flop, &|| {
            linear(&x, &w, Some(&b)).map(drop)
        })?;
        if let Some(kernel) = f32_products::kernel_name() {
            let (xs, ws) = (x.flatten_all()?.to_vec1::<f32>()?, w.flatten_all()?.to_vec1::<f32>()?);
            let packed = PackedF32::new(true, (out, inp), (&ws, inp));
            let y = std::cell::RefCell::new(vec![0f32; tokens * out]);
            time(&format!("fwd  x·Wᵀ {kernel} packed"), flop, &|| {
                f32_products::product_into(tokens, (&xs, inp), &packed, false, (&mut y.borrow_mut(), out));
                Ok(())
            })?;
        }
        time(&format!("bwd  dY·W     {tokens}x{out} -> {inp}"), flop, &|| matmul(&g, &w).map(drop))?;
        time(&format!("bwd  dYᵀ·X    {out}x{tokens} · {tokens}x{inp}"), flop, &|| {
            matmul(&g.t()?, &x).map(drop)
        })?;
    }
    Ok(())
}

/// Reads a byte of every cache line of `buf` (larger than the last-level cache), so the
/// next product's operands come from memory, as inside a training step. Reading leaves
/// no dirty lines whose write-back the product would pay for.
fn evict(buf: &[u8]) {
    let sum = buf.iter().step_by(64).fold(0u8, |a, &b| a.wrapping_add(b));
    std::hint::black_box(sum);
}
