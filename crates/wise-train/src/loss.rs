//! Cross-entropy with optional label smoothing, as wise-ft's `LabelSmoothing`:
//! `(1 − ls) · nll + ls · mean_c(−log p_c)`, averaged over the batch (plain cross-entropy
//! when `ls = 0`).

use candle_core::{Tensor, D};

use crate::Result;

/// `logits`: `[B, C]`; `labels`: `[B]` u32.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, label_smoothing: f64) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = logp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
    if label_smoothing == 0.0 {
        return Ok(nll.mean_all()?);
    }
    let smooth = logp.mean(D::Minus1)?.neg()?;
    Ok(((nll * (1.0 - label_smoothing))? + (smooth * label_smoothing)?)?.mean_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_hand_computed_values() {
        let logits = Tensor::new(&[[2.0f32, 0.0, 0.0], [0.0, 0.0, 0.0]], &Device::Cpu).unwrap();
        let labels = Tensor::new(&[0u32, 2], &Device::Cpu).unwrap();
        let lse0 = (2f64.exp() + 2.0).ln();
        let plain = ((lse0 - 2.0) + 3f64.ln()) / 2.0;
        let got = cross_entropy(&logits, &labels, 0.0).unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!((got - plain).abs() < 1e-6, "{got} vs {plain}");
        // Mean over classes of -log p: row 0 = lse0 - 2/3, row 1 = ln 3.
        let smooth = ((lse0 - 2.0 / 3.0) + 3f64.ln()) / 2.0;
        let want = 0.9 * plain + 0.1 * smooth;
        let got = cross_entropy(&logits, &labels, 0.1).unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
}
