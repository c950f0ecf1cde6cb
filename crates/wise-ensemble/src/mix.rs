//! The arithmetic of a merge, on plain slices: decode a chunk of a tensor to f32, mix, and
//! encode it back to the tensor's own dtype.
//!
//! The expressions are evaluated in the order wise-ft's PyTorch code evaluates them, in
//! f32, so the results agree with it to the last bit or so (`tests/formula.rs` checks them
//! against `_merge` run by PyTorch):
//!
//! - plain: `w0·x0 + w1·x1 + …` (for WiSE-FT `w = (1−α, α)`);
//! - Fisher: `cᵢ = wᵢ·max(Fᵢ, floor)`, then `(c0·x0 + c1·x1 + …) / (c0 + c1 + …)`.
//!
//! Weights are given in f64 and rounded to f32 once, as PyTorch does with a Python float
//! multiplying an f32 tensor. f16/bf16 tensors are mixed in f32 and rounded back to nearest
//! even; f64 tensors are mixed in f32 too (CLIP checkpoints are never f64).

use safetensors::Dtype;

/// Dtypes whose tensors are mixed. Any other (integer buffers such as `position_ids`, fp8)
/// has no meaningful average and must be identical in every input.
pub fn is_mixable(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

/// Bytes per element of a dtype that is a whole number of bytes wide.
pub fn element_bytes(dtype: Dtype) -> usize {
    (dtype.bitsize() / 8).max(1)
}

/// The input an output equals bit for bit: when the weights are one-hot (WiSE-FT at α = 0
/// or 1) the merge copies that input's bytes instead of computing `1·x + 0·y`, which
/// would turn `-0.0` into `0.0`, and `0·inf` into NaN.
pub fn one_hot(weights: &[f64]) -> Option<usize> {
    let ones: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] == 1.0).collect();
    match ones[..] {
        [i] if weights.iter().enumerate().all(|(j, w)| j == i || *w == 0.0) => Some(i),
        _ => None,
    }
}

/// Decodes little-endian `bytes` of a mixable `dtype` into `out` (replacing its content).
pub fn decode(dtype: Dtype, bytes: &[u8], out: &mut Vec<f32>) {
    // Resize-then-zip loops over fixed-size chunks compile to straight vector code. Every
    // element is overwritten, so `resize` without `clear` (no zero-filling of a buffer
    // that is reused chunk after chunk).
    match dtype {
        Dtype::F32 => {
            out.resize(bytes.len() / 4, 0.0);
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Dtype::F16 => {
            out.resize(bytes.len() / 2, 0.0);
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        Dtype::BF16 => {
            out.resize(bytes.len() / 2, 0.0);
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        Dtype::F64 => {
            out.resize(bytes.len() / 8, 0.0);
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32;
            }
        }
        _ => out.clear(),
    }
}

/// Encodes `values` as little-endian `dtype` into `out` (replacing its content).
pub fn encode(dtype: Dtype, values: &[f32], out: &mut Vec<u8>) {
    // As in `decode`: every byte is overwritten.
    out.resize(values.len() * element_bytes(dtype), 0);
    match dtype {
        Dtype::F32 => {
            for (b, v) in out.chunks_exact_mut(4).zip(values) {
                b.copy_from_slice(&v.to_le_bytes());
            }
        }
        Dtype::F16 => {
            for (b, &v) in out.chunks_exact_mut(2).zip(values) {
                b.copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
            }
        }
        Dtype::BF16 => {
            for (b, &v) in out.chunks_exact_mut(2).zip(values) {
                b.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes());
            }
        }
        Dtype::F64 => {
            for (b, &v) in out.chunks_exact_mut(8).zip(values) {
                b.copy_from_slice(&(v as f64).to_le_bytes());
            }
        }
        _ => out.clear(),
    }
}

/// `out = w0·x0 + w1·x1 + …`, accumulated left to right.
pub fn weighted_sum(xs: &[Vec<f32>], weights: &[f32], out: &mut Vec<f32>) {
    out.clear();
    let (Some(x0), Some(&w0)) = (xs.first(), weights.first()) else { return };
    out.extend(x0.iter().map(|&x| w0 * x));
    for (x, &w) in xs.iter().zip(weights).skip(1) {
        for (o, &x) in out.iter_mut().zip(x) {
            *o += w * x;
        }
    }
}

/// Fisher-weighted average: `cᵢ = wᵢ·Fᵢ` (the Fishers already floored), then
/// `Σ cᵢ·xᵢ / Σ cᵢ`, both sums left to right. `den` is scratch space.
pub fn fisher_weighted(
    xs: &[Vec<f32>],
    fishers: &[Vec<f32>],
    weights: &[f32],
    out: &mut Vec<f32>,
    den: &mut Vec<f32>,
) {
    out.clear();
    den.clear();
    let (Some(x0), Some(f0), Some(&w0)) = (xs.first(), fishers.first(), weights.first()) else { return };
    for (&x, &f) in x0.iter().zip(f0) {
        let c = w0 * f;
        out.push(c * x);
        den.push(c);
    }
    for ((x, f), &w) in xs.iter().zip(fishers).zip(weights).skip(1) {
        for (((o, d), &x), &f) in out.iter_mut().zip(den.iter_mut()).zip(x).zip(f) {
            let c = w * f;
            *o += c * x;
            *d += c;
        }
    }
    for (o, &d) in out.iter_mut().zip(den.iter()) {
        *o /= d;
    }
}

/// `F ← max(F, floor)`: wise-ft's `torch.maximum(fisher, fisher_floor * ones)`, which
/// keeps a parameter that no example moved from getting weight 0 in every model.
pub fn apply_floor(fisher: &mut [f32], floor: f32) {
    for f in fisher {
        *f = f.max(floor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_hot_weights() {
        assert_eq!(one_hot(&[1.0, 0.0]), Some(0));
        assert_eq!(one_hot(&[0.0, 0.0, 1.0]), Some(2));
        assert_eq!(one_hot(&[0.5, 0.5]), None);
        assert_eq!(one_hot(&[1.0, 1.0, -1.0]), None);
        assert_eq!(one_hot(&[-0.0, 1.0]), Some(1));
    }

    #[test]
    fn half_precision_round_trips_and_rounds_to_nearest_even() {
        let values = [0.0f32, -0.0, 1.0, -2.5, 65504.0, 1e-7, f32::INFINITY];
        for dtype in [Dtype::F16, Dtype::BF16, Dtype::F32, Dtype::F64] {
            let mut bytes = Vec::new();
            let mut back = Vec::new();
            encode(dtype, &values, &mut bytes);
            assert_eq!(bytes.len(), values.len() * element_bytes(dtype));
            decode(dtype, &bytes, &mut back);
            let mut again = Vec::new();
            encode(dtype, &back, &mut again);
            assert_eq!(bytes, again, "{dtype:?}: decode/encode is not the identity on stored values");
        }
        // 1 + 2^-11 lies halfway between two f16 values: ties go to the even one (1.0).
        let mut bytes = Vec::new();
        encode(Dtype::F16, &[1.0 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11)], &mut bytes);
        let mut back = Vec::new();
        decode(Dtype::F16, &bytes, &mut back);
        assert_eq!(back, [1.0, 1.0 + 2.0 * 2f32.powi(-10)]);
    }

    #[test]
    fn formulas() {
        let xs = vec![vec![1.0f32, 2.0, -4.0], vec![3.0, 2.0, 4.0]];
        let mut out = Vec::new();
        weighted_sum(&xs, &[0.75, 0.25], &mut out);
        assert_eq!(out, [1.5, 2.0, -2.0]);
        let mut fishers = vec![vec![1.0f32, 0.0, 3.0], vec![3.0, 0.0, 1.0]];
        for f in &mut fishers {
            apply_floor(f, 1e-8);
        }
        let mut den = Vec::new();
        fisher_weighted(&xs, &fishers, &[0.5, 0.5], &mut out, &mut den);
        // (0.5·1·1 + 0.5·3·3) / (0.5 + 1.5) = 2.5; equal floors: the plain mean; 3:1 → -2.
        assert_eq!(out, [2.5, 2.0, -2.0]);
    }
}
