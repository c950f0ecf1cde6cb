//! The logit axis of the paper's Figure 1.
//!
//! Effective-robustness plots (Taori et al. 2020, and WiSE-FT's Figure 1) put accuracies on
//! a logit scale, p → ln(p / (1 − p)), where models trained the ordinary way lie close to a
//! line; a model above that line is "effectively robust". The chart itself is drawn in
//! logit units, and ticks are placed at round percentages.

use std::ops::Range;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};

/// Accuracies are clamped into [`P_MIN`, `P_MAX`] before the transform, so 0% and 100%
/// (a broken model, a tiny test set) stay on the chart instead of going to ∓∞.
pub const P_MIN: f64 = 0.005;
pub const P_MAX: f64 = 0.995;

pub fn logit(p: f64) -> f64 {
    let p = p.clamp(P_MIN, P_MAX);
    (p / (1.0 - p)).ln()
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The chart range (in logit units) around data values `values` (fractions): their extent,
/// padded by 8% of it on each side, at least 0.3 wide (about ±3.5 points near 70%), and
/// reaching a little past the clamp at most (so a clamped marker is not cut by the frame).
pub fn range(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values {
        lo = lo.min(logit(v));
        hi = hi.max(logit(v));
    }
    if !lo.is_finite() || !hi.is_finite() {
        return (logit(0.1), logit(0.9));
    }
    let pad = ((hi - lo) * 0.08).max((0.3 - (hi - lo)) / 2.0).max(0.02);
    let limit = logit(P_MAX) + 0.4;
    ((lo - pad).max(-limit), (hi + pad).min(limit))
}

/// Tick positions (as fractions) for a logit axis over `[lo, hi]` (logit units), at most
/// about `max_ticks` of them.
///
/// Two candidates, and the one with more ticks wins:
/// - an even grid, every 10, 5, 2, 1, 0.5, 0.2 or 0.1 points: the finest whose neighbours
///   stay at least 1/`max_ticks` of the axis apart (zoomed-in sweeps, the usual case);
/// - round values in groups, roundest first — 50%; 10/90; 30/70; 20/80; 40/60; 5/95; 1/99;
///   2/98; 0.5/99.5 — each group taken whole if it keeps 1/14 of the axis from the ticks
///   taken so far (wide ranges reaching into the tails, where an even grid bunches up).
///
/// If neither gives two ticks (a very narrow range), the 0.1-point grid is thinned.
pub fn ticks(lo: f64, hi: f64, max_ticks: usize) -> Vec<f64> {
    let span = hi - lo;
    let at = |pct: f64| logit(pct / 100.0);
    let in_range = |pct: &f64| at(*pct) >= lo - 1e-9 && at(*pct) <= hi + 1e-9;
    let min_gap =
        |ticks: &[f64]| ticks.windows(2).map(|w| (at(w[1]) - at(w[0])).abs()).fold(f64::INFINITY, f64::min);
    let grid = |step: f64| -> Vec<f64> {
        let count = (100.0 / step).round() as usize;
        (1..count).map(|k| k as f64 * step).filter(in_range).collect()
    };

    let mut even: Vec<f64> = Vec::new();
    for step in [10.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.1] {
        let ticks = grid(step);
        if ticks.len() >= 2 && min_gap(&ticks) >= span / max_ticks.max(2) as f64 {
            even = ticks;
        } else if !even.is_empty() {
            break;
        }
    }

    let groups: [&[f64]; 9] = [
        &[50.0],
        &[10.0, 90.0],
        &[30.0, 70.0],
        &[20.0, 80.0],
        &[40.0, 60.0],
        &[5.0, 95.0],
        &[1.0, 99.0],
        &[2.0, 98.0],
        &[0.5, 99.5],
    ];
    let mut round: Vec<f64> = Vec::new();
    for group in groups {
        let mut trial = round.clone();
        trial.extend(group.iter().copied().filter(in_range));
        trial.sort_by(f64::total_cmp);
        if trial.len() > round.len() && min_gap(&trial) >= span / 14.0 {
            round = trial;
        }
    }

    let mut ticks = if even.len() >= round.len() { even } else { round };
    if ticks.len() < 2 {
        ticks.clear();
        for p in grid(0.1) {
            if ticks.last().is_none_or(|&t| at(p) - at(t) >= span / 4.0) {
                ticks.push(p);
            }
        }
    }
    ticks.into_iter().map(|pct| pct / 100.0).collect()
}

/// A plotters axis whose values are accuracies (fractions) placed by their logit, with
/// ticks from [`ticks`]. Using it as the chart's coordinate keeps every drawing call in
/// plain accuracies, and straight lines in logit space (y = x) stay straight.
#[derive(Debug, Clone)]
pub struct LogitAxis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl LogitAxis {
    /// An axis spanning [`range`] of `values`, with at most about `max_ticks` ticks.
    pub fn around(values: impl IntoIterator<Item = f64>, max_ticks: usize) -> Self {
        let (lo, hi) = range(values);
        Self { lo, hi, ticks: ticks(lo, hi, max_ticks) }
    }

    /// The extent in logit units.
    pub fn logit_range(&self) -> (f64, f64) {
        (self.lo, self.hi)
    }
}

impl Ranged for LogitAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let t = (logit(*value) - self.lo) / (self.hi - self.lo);
        limit.0 + (t * (limit.1 - limit.0) as f64).round() as i32
    }

    /// Only the round ticks, as grid lines and labels; no light (minor) lines.
    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        sigmoid(self.lo)..sigmoid(self.hi)
    }
}

/// A tick label: `70%`, `99.5%`, `72.3%`.
pub fn percent_label(p: f64) -> String {
    let pct = (p * 1000.0).round() / 10.0;
    if pct.fract() == 0.0 {
        format!("{pct:.0}%")
    } else {
        format!("{pct:.1}%")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pct_ticks(lo: f64, hi: f64) -> Vec<String> {
        let (a, b) = range([lo, hi]);
        ticks(a, b, 10).into_iter().map(percent_label).collect()
    }

    #[test]
    fn round_ticks_at_every_zoom() {
        assert_eq!(pct_ticks(0.4, 0.6), ["40%", "45%", "50%", "55%", "60%"]);
        assert_eq!(pct_ticks(0.68, 0.81), ["68%", "70%", "72%", "74%", "76%", "78%", "80%"]);
        assert_eq!(pct_ticks(0.0, 1.0), ["1%", "10%", "30%", "50%", "70%", "90%", "99%"]);
        let narrow = pct_ticks(0.712, 0.713);
        assert!(narrow.len() >= 2, "{narrow:?}");
    }

    #[test]
    fn transform_clamps_and_inverts() {
        assert!((sigmoid(logit(0.73)) - 0.73).abs() < 1e-12);
        assert_eq!(logit(0.0), logit(P_MIN));
        assert_eq!(logit(1.0), logit(P_MAX));
        assert_eq!(logit(0.5), 0.0);
    }
}
