//! wise-clip: a CLIP that can be *trained*, for robust fine-tuning (WiSE-FT).
//!
//! candle-transformers' CLIP runs inference only: its fused LayerNorm has no backward
//! pass and some embeddings are not variables. This crate is CLIP written for training:
//! every parameter is a [`candle_core::Var`] under its Hugging Face `CLIPModel` name,
//! every op is differentiable, and outputs and gradients match transformers (the parity
//! tests in `tests/` compare against fixtures made by `scripts/make_fixtures.py`).
//!
//! - [`config`]: HF `config.json` (and open_clip configs), presets ViT-B/32 … ViT-L/14-336.
//! - [`model`], [`vision`], [`text`], [`nn`]: the towers and their blocks.
//! - [`weights`], [`params`], [`hub`]: checkpoints (HF, sharded, open_clip), the HF cache.
//! - [`tokenizer`], [`preprocess`]: text and images in, exactly as HF's CLIP processor.
//! - [`device`]: CPU, CUDA or Metal, the compute dtype for each, and an accelerator's
//!   memory; [`profile`]: where a forward's time goes on any device (`WISE_PROFILE=1`).
//! - [`matmul`], [`fused`]: matrix products through the system BLAS, and fused
//!   activation, LayerNorm, softmax, bias and attention-heads kernels with their
//!   backwards, on CPU and CUDA (`fused_cuda.rs`, `kernels/fused.cu`); each transformer
//!   block is one op of the autograd graph on both (`block.rs` on CPU, `device_block.rs`
//!   on CUDA), trained through [`backward`]; [`kept_for_backward`] counts what the CUDA
//!   blocks keep for it.

mod attention;
pub mod bf16_products;
mod block;
pub mod config;
pub mod device;
mod device_block;
pub mod error;
pub mod f32_products;
mod flash;
pub mod fused;
#[cfg(feature = "cuda")]
mod fused_cuda;
pub mod hub;
pub mod matmul;
pub mod model;
pub mod nn;
pub mod params;
pub mod preprocess;
pub mod profile;
pub mod text;
pub mod tokenizer;
pub mod vision;
pub mod weights;

pub use block::{backward, bf16_mode, frozen_weights, in_bf16_mode, inference_mode, on_compute_threads};
pub use config::{Activation, ClipConfig, TextConfig, VisionConfig};
pub use device::{compute_dtype, device_memory, parse_device, DeviceMemory};
pub use device_block::{kept_for_backward, KeptBytes};
pub use error::{Error, Result};
pub use hub::{HubOptions, Layout, ModelSource};
pub use model::ClipModel;
pub use preprocess::ImagePreprocessor;
pub use tokenizer::ClipTokenizer;

#[cfg(test)]
mod tests {
    use candle_core::backprop::GradStore;
    use candle_core::{Tensor, Var};

    /// Asserts that `got` has, for every named variable, the gradient `want` has (to 1e-4
    /// relative); `k_proj.bias`'s is zero in exact arithmetic (softmax ignores a shift of a
    /// whole row of scores), so only its size is checked. Returns how many were compared.
    pub(crate) fn assert_gradients_match<'a>(
        what: &str,
        vars: impl IntoIterator<Item = (&'a str, &'a Var)>,
        got: &GradStore,
        want: &GradStore,
    ) -> usize {
        let mut checked = 0;
        for (name, var) in vars {
            let a = got.get(var).unwrap_or_else(|| panic!("{what}: no gradient for {name}"));
            let r = want.get(var).unwrap_or_else(|| panic!("{what}: no reference gradient for {name}"));
            if name.ends_with("k_proj.bias") {
                let max = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(max < 1e-5, "{what}: d{name} should be ~0, is up to {max}");
            } else {
                assert!(rel_diff(a, r) < 1e-4, "{what}: d{name} off by {}", rel_diff(a, r));
            }
            checked += 1;
        }
        checked
    }

    /// A product's `m × n` result `c` (leading dimension `ldc`) against `dot(i, j)` in f64
    /// (plus `c0`'s value when `accumulate`: C's values before), within 1e-5 relative; the
    /// padding between C's rows as it was in `c0`.
    pub(crate) fn assert_product(
        (c, c0, ldc): (&[f32], &[f32], usize),
        (m, n): (usize, usize),
        accumulate: bool,
        dot: impl Fn(usize, usize) -> f64,
        what: &str,
    ) {
        for i in 0..m {
            for j in 0..n {
                let want = dot(i, j) + if accumulate { c0[i * ldc + j] as f64 } else { 0.0 };
                let got = c[i * ldc + j] as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{what} ({i}, {j}): {got} vs {want}"
                );
            }
            assert_eq!(c[i * ldc + n..(i + 1) * ldc], c0[i * ldc + n..(i + 1) * ldc], "{what}: padding");
        }
    }

    /// max |a − b| / max |b|: how far a fused or pooled result is from its reference.
    pub(crate) fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6);
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() / scale
    }
}
