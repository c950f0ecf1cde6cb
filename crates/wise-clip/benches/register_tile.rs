//! The machine's fp32 ceiling for matrix products, against the loaded BLAS in the same run:
//! a 14 × 32 AVX-512 register tile (the inner kernel of a BLIS-style sgemm: 28 accumulators,
//! a row of B as two vectors, each value of A broadcast) over packed, 64-byte-aligned panels
//! that stay in cache, on every thread at once; then `wise_clip::matmul`'s whole sgemm
//! (packing, blocking, split over the same threads) on fc1's product, best of as many runs.
//! The gap is what an sgemm of wise's own could gain (BENCHMARKS.md, "what could close it").
//!
//! ```text
//! cargo bench -p wise-clip --bench register_tile -- [--reps 20]
//! ```

use std::time::Instant;

use candle_core::{Device, Tensor};

const MR: usize = 14;
const NR: usize = 32;
/// Depth of a panel, and how many A and B panels one pass runs over (~280 KB of A, 512 KB
/// of B: the L2 of the machine this was written on).
const KC: usize = 256;
const A_PANELS: usize = 20;
const B_PANELS: usize = 16;

fn main() -> anyhow::Result<()> {
    let mut reps = 20usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--reps" {
            reps = args.next().unwrap_or_default().parse()?;
        }
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        let threads = rayon::current_num_threads();
        let per_thread: Vec<f64> = rayon::broadcast(|_| tile::gflops(reps));
        let total: f64 = per_thread.iter().sum();
        eprintln!(
            "register tile {MR}x{NR}, KC {KC}, {threads} threads  {total:>8.1} GFLOP/s  {per_thread:.1?}"
        );
    } else {
        eprintln!("register tile: no AVX-512 here, skipped");
    }
    // The BLAS on a ViT-B/32 training step's widest product (fc1, 800 tokens), through the
    // entry point the model uses.
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (800, 768), &dev)?;
    let (w, bias) = (Tensor::randn(0f32, 1.0, (3072, 768), &dev)?, Tensor::randn(0f32, 1.0, 3072, &dev)?);
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        wise_clip::matmul::linear(&x, &w, Some(&bias))?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let blas = wise_clip::matmul::blas_name().unwrap_or("candle's gemm");
    eprintln!(
        "sgemm 800x768 -> 3072 ({blas})  {:>8.1} GFLOP/s",
        2.0 * (800 * 768 * 3072) as f64 / best / 1e9
    );
    Ok(())
}

#[cfg(target_arch = "x86_64")]
mod tile {
    use super::*;
    use std::arch::x86_64::*;

    /// `C[MR × NR] += A·B` over `KC`: A's panel holds MR values per k, B's NR.
    #[target_feature(enable = "avx512f")]
    unsafe fn kernel(a: *const f32, b: *const f32, c: *mut f32, ldc: usize) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for k in 0..KC {
            let (a, b) = (a.add(k * MR), b.add(k * NR));
            let (b0, b1) = (_mm512_load_ps(b), _mm512_load_ps(b.add(16)));
            for (i, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.add(i));
                acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            let row = c.add(i * ldc);
            _mm512_storeu_ps(row, _mm512_add_ps(_mm512_loadu_ps(row), acc[0]));
            _mm512_storeu_ps(row.add(16), _mm512_add_ps(_mm512_loadu_ps(row.add(16)), acc[1]));
        }
    }

    /// A 64-byte-aligned buffer (the panels' vector loads must not straddle cache lines).
    #[repr(C, align(64))]
    struct Line([f32; 16]);

    fn panels(n: usize) -> Vec<Line> {
        (0..n.div_ceil(16)).map(|i| Line(std::array::from_fn(|j| ((i * 16 + j) % 7) as f32 * 1e-3))).collect()
    }

    /// GFLOP/s of the best of `reps` passes over all A × B panel pairs, on this thread.
    pub fn gflops(reps: usize) -> f64 {
        let (a, b) = (panels(A_PANELS * MR * KC), panels(B_PANELS * NR * KC));
        let (m, n) = (A_PANELS * MR, B_PANELS * NR);
        let mut c = vec![0f32; m * n];
        let (a, b) = (a.as_ptr() as *const f32, b.as_ptr() as *const f32);
        let mut best = f64::MAX;
        for _ in 0..reps {
            let t = Instant::now();
            for j in 0..B_PANELS {
                for i in 0..A_PANELS {
                    // SAFETY: AVX-512 was detected; every panel and C tile is in bounds.
                    unsafe {
                        kernel(
                            a.add(i * MR * KC),
                            b.add(j * NR * KC),
                            c.as_mut_ptr().add(i * MR * n + j * NR),
                            n,
                        )
                    };
                }
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        std::hint::black_box(&c);
        2.0 * (m * n * KC) as f64 / best / 1e9
    }
}
