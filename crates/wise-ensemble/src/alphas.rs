//! Mixing coefficients: parsing `--alpha` lists and ranges, checking weight vectors, and
//! the file names wise-ft gives each α.

use crate::{Error, Result};

/// Parses `0,0.25,0.5` (a list) or `START:STOP:STEP` (a range, both ends included:
/// `0:1:0.1` is the eleven values 0.0, 0.1, …, 1.0). Range values are rounded to 10
/// decimals so `0.30000000000000004` comes out as `0.3`.
pub fn parse_alphas(spec: &str) -> Result<Vec<f64>> {
    let bad = |msg: String| Error::Invalid(format!("alphas '{spec}': {msg}"));
    let number = |s: &str| -> Result<f64> {
        let v: f64 = s.trim().parse().map_err(|_| bad(format!("'{}' is not a number", s.trim())))?;
        if v.is_finite() {
            Ok(v)
        } else {
            Err(bad(format!("'{}' is not finite", s.trim())))
        }
    };
    let values = if spec.contains(':') {
        let parts: Vec<&str> = spec.split(':').collect();
        let [start, stop, step] = parts[..] else {
            return Err(bad("a range is START:STOP:STEP".into()));
        };
        let (start, stop, step) = (number(start)?, number(stop)?, number(step)?);
        if step <= 0.0 {
            return Err(bad("STEP must be positive".into()));
        }
        if stop < start {
            return Err(bad("STOP is below START".into()));
        }
        // The tolerance makes 0:1:0.1 include 1.0 although 10 * 0.1 is not exactly 1.
        let n = ((stop - start) / step + 1e-9).floor() as usize;
        if n >= 100_000 {
            return Err(bad(format!("{} values; use a larger STEP", n + 1)));
        }
        (0..=n).map(|i| ((start + i as f64 * step) * 1e10).round() / 1e10).collect()
    } else {
        spec.split(',').map(number).collect::<Result<Vec<_>>>()?
    };
    if values.is_empty() {
        return Err(bad("no values".into()));
    }
    Ok(values)
}

/// WiSE-FT's pair of weights for `alpha`: `(1 − α)` for the zero-shot model, `α` for the
/// fine-tuned one. Outside `[0, 1]` is extrapolation, allowed only when asked for.
pub fn wise_ft_weights(alpha: f64, extrapolate: bool) -> Result<Vec<f64>> {
    if !alpha.is_finite() {
        return Err(Error::Invalid(format!("alpha {alpha} is not finite")));
    }
    if !extrapolate && !(0.0..=1.0).contains(&alpha) {
        return Err(Error::Invalid(format!(
            "alpha {alpha} is outside [0, 1]; pass --extrapolate to go past the end points"
        )));
    }
    Ok(vec![1.0 - alpha, alpha])
}

/// Checks one weight per model, summing to 1 (within 1e-6), each in `[0, 1]` unless
/// `extrapolate`: a weighted average of checkpoints, not a rescaling of them.
pub fn check_weights(weights: &[f64], models: usize, extrapolate: bool) -> Result<()> {
    if weights.len() != models {
        return Err(Error::Invalid(format!("{} weights for {models} models", weights.len())));
    }
    if let Some(w) = weights.iter().find(|w| !w.is_finite()) {
        return Err(Error::Invalid(format!("weight {w} is not finite")));
    }
    let sum: f64 = weights.iter().sum();
    if (sum - 1.0).abs() > 1e-6 {
        return Err(Error::Invalid(format!("weights {weights:?} sum to {sum}, not 1")));
    }
    if !extrapolate {
        if let Some(w) = weights.iter().find(|w| !(0.0..=1.0).contains(*w)) {
            return Err(Error::Invalid(format!(
                "weight {w} is outside [0, 1]; pass --extrapolate to allow it"
            )));
        }
    }
    Ok(())
}

/// `wise_ft_alpha=0.500.safetensors`: wise-ft's `f'wise_ft_alpha={alpha:.3f}.pt'` with the
/// safetensors extension. Rust's `{:.3}` rounds the exact binary value half to even, as
/// Python's `.3f` does.
pub fn alpha_file_name(alpha: f64) -> String {
    format!("wise_ft_alpha={alpha:.3}.safetensors")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ranges() {
        assert_eq!(parse_alphas("0,0.25, 0.5,1").unwrap(), [0.0, 0.25, 0.5, 1.0]);
        let r = parse_alphas("0:1:0.1").unwrap();
        assert_eq!(r.len(), 11);
        assert_eq!(r[3], 0.3);
        assert_eq!(r[10], 1.0);
        assert_eq!(parse_alphas("0.5:0.5:0.1").unwrap(), [0.5]);
        assert_eq!(parse_alphas("-0.5").unwrap(), [-0.5]);
        for bad in ["", "a", "0:1", "0:1:0", "1:0:0.1", "0,,1", "nan", "0:1:1e-9"] {
            let err = parse_alphas(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("'{bad}'")), "{err}");
        }
    }

    #[test]
    fn weights_are_checked() {
        assert_eq!(wise_ft_weights(0.25, false).unwrap(), [0.75, 0.25]);
        assert!(wise_ft_weights(1.5, false).unwrap_err().to_string().contains("--extrapolate"));
        assert_eq!(wise_ft_weights(1.5, true).unwrap(), [-0.5, 1.5]);
        assert!(check_weights(&[0.2, 0.3, 0.5], 3, false).is_ok());
        assert!(check_weights(&[0.2, 0.3], 3, false).unwrap_err().to_string().contains("2 weights"));
        assert!(check_weights(&[0.2, 0.3, 0.6], 3, false).unwrap_err().to_string().contains("sum"));
        assert!(check_weights(&[-0.5, 1.5], 2, false).is_err());
        assert!(check_weights(&[-0.5, 1.5], 2, true).is_ok());
    }

    #[test]
    fn file_names_round_like_python() {
        // Python: f'{0.0625:.3f}' == '0.062', f'{0.0675:.3f}' == '0.068' (0.0675 is stored
        // as 0.067500000000000004...), f'{1/3:.3f}' == '0.333'.
        assert_eq!(alpha_file_name(0.5), "wise_ft_alpha=0.500.safetensors");
        assert_eq!(alpha_file_name(0.0625), "wise_ft_alpha=0.062.safetensors");
        assert_eq!(alpha_file_name(0.0675), "wise_ft_alpha=0.068.safetensors");
        assert_eq!(alpha_file_name(1.0 / 3.0), "wise_ft_alpha=0.333.safetensors");
        assert_eq!(alpha_file_name(1.0), "wise_ft_alpha=1.000.safetensors");
    }
}
