//! The CUDA kernels (`src/kernels/fused.cu`: LayerNorm, softmax, the MLP's activations and
//! their backwards, the bias add and its column sums, the attention heads' split and merge,
//! f32 and bf16; AdamW's update, the sum of squares; `attention.cu`: flash attention on
//! tensor cores) checked without a GPU: `tests/support/cuda_on_cpu.cpp` compiles their
//! source as C++ with the CUDA primitives emulated by threads and barriers, runs each
//! against a double-precision reference, and fails on any error above tolerance. (On a
//! GPU, `scripts/gpu-check.sh` compares the CUDA build against the CPU end to end.)

use std::path::Path;
use std::process::Command;

#[test]
fn cuda_kernels_match_references_when_run_on_the_cpu() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = tempfile::tempdir().unwrap();
    let exe = out.path().join("cuda_on_cpu");
    let compiled = Command::new(&cxx)
        .args(["-std=c++20", "-O1", "-pthread", "-I"])
        .arg(dir.join("tests/support/cuda_shim"))
        .arg(dir.join("tests/support/cuda_on_cpu.cpp"))
        .arg("-o")
        .arg(&exe)
        .output();
    let compiled = match compiled {
        Ok(c) => c,
        Err(e) => {
            assert!(std::env::var_os("CI").is_none(), "CI needs a C++ compiler ({cxx}): {e}");
            eprintln!("skipped: no C++ compiler ({cxx}): {e}");
            return;
        }
    };
    assert!(compiled.status.success(), "{cxx} failed:\n{}", String::from_utf8_lossy(&compiled.stderr));
    let run = Command::new(&exe).output().unwrap();
    let report = String::from_utf8_lossy(&run.stdout);
    println!("{report}");
    assert!(run.status.success(), "kernels off their references:\n{report}");
    // Every kernel of both dtypes was checked: 3 LayerNorm widths × 4 outputs, 8 softmax
    // widths (3 padded and by 16 bytes, 3 masked) × 2, the 3 activations × 2 outputs with and without a bias at 2
    // widths (one value and 16 bytes per access), each in f32 and bf16; AdamW (f32) 2 steps
    // × 3 outputs; the sum of squares; the bias add (with and without a residual) and its
    // column sums at 3 sizes; the heads' splits and merges, unpadded and padded, 2 layouts
    // one value per access and 1 by 16 bytes; q/k/v's split and merge both ways; in both
    // dtypes; flash attention (bf16) at 5 sizes × 5 outputs.
    let expected = 2 * (12 + 16 + 3 * 8) + 6 + 1 + 2 * (3 * 3 + 2 * 2 * 2 + 2 * 2 + 2 * 2) + 5 * 5;
    assert_eq!(report.lines().filter(|l| l.starts_with("ok ")).count(), expected, "{report}");
}
