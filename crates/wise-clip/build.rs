//! With the `cuda` feature, compiles `src/kernels/fused.cu` (the CUDA fused LayerNorm,
//! softmax and QuickGELU kernels, `fused_cuda.rs`, and the flash attention it includes,
//! `attention.cu`) to PTX with `nvcc`, as candle-kernels
//! does for candle's own. PTX for `compute_$CUDA_COMPUTE_CAP` (default 80) is compiled for
//! the actual GPU by its driver when first loaded. Without the feature: nothing to do.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-changed=src/kernels/fused.cu");
    println!("cargo:rerun-if-changed=src/kernels/attention.cu"); // included by fused.cu
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    println!("cargo:rustc-env=WISE_CUDA_COMPUTE_CAP={cap}");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("fused.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), "-o"])
        .arg(&out)
        .arg("src/kernels/fused.cu")
        .status()
        .unwrap_or_else(|e| panic!("the cuda feature needs nvcc (NVCC={nvcc}): {e}"));
    assert!(status.success(), "nvcc failed on src/kernels/fused.cu ({status})");
}
