//! The learning-rate schedule of wise-ft (`cosine_lr`): linear warmup, then a half cosine
//! to zero over the remaining steps.

/// The learning rate at `step` (0-based) of `total_steps`.
///
/// Warmup: `base · (step + 1) / warmup`. After it, with `e = step − warmup` and
/// `es = total − warmup`: `0.5 · (1 + cos(π · e / es)) · base`.
pub fn cosine_lr(base_lr: f64, warmup: usize, total_steps: usize, step: usize) -> f64 {
    if step < warmup {
        return base_lr * (step + 1) as f64 / warmup as f64;
    }
    let e = (step - warmup) as f64;
    let es = total_steps.saturating_sub(warmup) as f64;
    if es == 0.0 {
        // wise-ft divides by zero here (NaN); a run that is all warmup ends at base_lr.
        return base_lr;
    }
    0.5 * (1.0 + (std::f64::consts::PI * e / es).cos()) * base_lr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        assert_eq!(cosine_lr(1.0, 4, 10, 0), 0.25);
        assert_eq!(cosine_lr(1.0, 4, 10, 3), 1.0);
        assert_eq!(cosine_lr(1.0, 4, 10, 4), 1.0);
        assert!((cosine_lr(1.0, 4, 10, 7) - 0.5).abs() < 1e-15);
        assert_eq!(cosine_lr(2.0, 0, 4, 0), 2.0);
        assert_eq!(cosine_lr(1.0, 3, 3, 2), 1.0);
    }
}
