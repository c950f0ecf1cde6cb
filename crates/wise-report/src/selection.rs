//! What the figure and the table show: per model, the reference top-1 and the mean top-1
//! over the shifted datasets. Shared so that the picture and the numbers always agree.

use crate::error::{ReportError, Result};
use crate::results::{Record, Results};

/// One model's position in the figure. Accuracies are fractions.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub model: String,
    pub alpha: Option<f64>,
    /// Top-1 on the reference dataset.
    pub reference: f64,
    /// Top-1 on each shifted dataset, in the order of [`Selection::shifts`].
    pub shifts: Vec<f64>,
    /// Mean of `shifts`: each shifted dataset counts equally, whatever its size, as in the
    /// paper's "avg. distribution shifts".
    pub shift_mean: f64,
}

impl Point {
    /// The average of the reference and the shift mean: how [`Selection::best`] ranks α.
    pub fn balanced(&self) -> f64 {
        (self.reference + self.shift_mean) / 2.0
    }
}

/// A record that cannot be placed: it lacks the reference or a shifted dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub model: String,
    pub alpha: Option<f64>,
    pub line: usize,
    pub missing: Vec<String>,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "'{}'", self.model)?;
        if let Some(alpha) = self.alpha {
            write!(f, " (α={})", format_alpha(alpha))?;
        }
        write!(f, " on line {} has no {}", self.line, self.missing.join(", "))
    }
}

/// The models to show, split into the α sweep and the rest.
#[derive(Debug, Clone)]
pub struct Selection {
    pub reference: String,
    pub shifts: Vec<String>,
    /// Records with an α, sorted by α (the WiSE-FT curve).
    pub sweep: Vec<Point>,
    /// Records without an α, in file order.
    pub others: Vec<Point>,
    /// Records left out, in file order.
    pub skipped: Vec<Skipped>,
}

impl Selection {
    /// Places every record of `results` that has `reference` and all `shifts`.
    ///
    /// `shifts` defaults to every other dataset in the file (sorted by name). Errors: no
    /// record has the reference; a requested shift no record has; an empty shift list or one
    /// containing the reference; no record has everything.
    pub fn new(results: &Results, reference: &str, shifts: Option<&[String]>) -> Result<Self> {
        let path = || results.path.clone();
        let present = results.dataset_names();
        if !results.records.iter().any(|r| r.datasets.contains_key(reference)) {
            return Err(ReportError::NoReference { path: path(), reference: reference.to_string(), present });
        }
        let shifts: Vec<String> = match shifts {
            Some(shifts) => {
                if let Some(shift) = shifts.iter().find(|s| !present.contains(s)) {
                    return Err(ReportError::UnknownShift { path: path(), shift: shift.clone(), present });
                }
                if shifts.iter().any(|s| s == reference) {
                    return Err(ReportError::BadShifts {
                        path: path(),
                        message: format!("the reference '{reference}' cannot also be a shifted dataset"),
                    });
                }
                let mut unique: Vec<String> = Vec::new();
                for s in shifts {
                    if !unique.contains(s) {
                        unique.push(s.clone());
                    }
                }
                unique
            }
            None => present.iter().filter(|d| *d != reference).cloned().collect(),
        };
        if shifts.is_empty() {
            return Err(ReportError::BadShifts {
                path: path(),
                message: format!(
                    "no dataset besides the reference '{reference}' to measure distribution shift on"
                ),
            });
        }

        let mut selection = Selection {
            reference: reference.to_string(),
            shifts,
            sweep: vec![],
            others: vec![],
            skipped: vec![],
        };
        for record in &results.records {
            match selection.place(record) {
                Ok(point) if point.alpha.is_some() => selection.sweep.push(point),
                Ok(point) => selection.others.push(point),
                Err(skipped) => selection.skipped.push(skipped),
            }
        }
        if selection.sweep.is_empty() && selection.others.is_empty() {
            return Err(ReportError::NothingToPlot {
                path: path(),
                reference: selection.reference,
                skipped: selection.skipped.iter().map(Skipped::to_string).collect(),
                shifts: selection.shifts,
            });
        }
        // Stable sort: equal α keep file order.
        selection.sweep.sort_by(|a, b| a.alpha.partial_cmp(&b.alpha).unwrap_or(std::cmp::Ordering::Equal));
        Ok(selection)
    }

    fn place(&self, record: &Record) -> std::result::Result<Point, Skipped> {
        let top1 = |name: &String| record.datasets.get(name).map(|s| s.top1);
        let missing: Vec<String> = std::iter::once(&self.reference)
            .chain(&self.shifts)
            .filter(|name| top1(name).is_none())
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(Skipped {
                model: record.model.clone(),
                alpha: record.alpha,
                line: record.line,
                missing,
            });
        }
        let shifts: Vec<f64> = self.shifts.iter().filter_map(top1).collect();
        Ok(Point {
            model: record.model.clone(),
            alpha: record.alpha,
            reference: top1(&self.reference).unwrap_or_default(),
            shift_mean: shifts.iter().sum::<f64>() / shifts.len() as f64,
            shifts,
        })
    }

    /// The sweep's point at exactly `alpha` (the first, if evaluated twice under two names).
    pub fn at_alpha(&self, alpha: f64) -> Option<&Point> {
        self.sweep.iter().find(|p| p.alpha == Some(alpha))
    }

    /// The "best" α: the sweep point with the highest [`Point::balanced`] score, i.e. the
    /// average of reference and mean-shift top-1, weighing the fine-tuning task and
    /// robustness equally. Ties go to the smaller α (closer to the zero-shot model). It is
    /// chosen on the very numbers it reports, so it is an optimistic (oracle) pick; the paper
    /// recommends α=0.5 when no held-out choice is made.
    pub fn best(&self) -> Option<&Point> {
        self.sweep.iter().fold(None, |best: Option<&Point>, p| match best {
            Some(b) if b.balanced() >= p.balanced() => Some(b),
            _ => Some(p),
        })
    }
}

/// α for labels: at most 4 decimals, no trailing zeros (`0.3`, `1`, `0.25`), so a value
/// stored as 0.30000000000000004 still reads `0.3`.
pub fn format_alpha(alpha: f64) -> String {
    let s = format!("{alpha:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn results(text: &str) -> Results {
        Results::parse(Path::new("r.jsonl"), text).unwrap()
    }

    const TEXT: &str = concat!(
        r#"{"model": "ft", "alpha": 1.0, "R:top1": 0.8, "S1:top1": 0.5, "S2:top1": 0.3}"#,
        "\n",
        r#"{"model": "zs", "alpha": 0.0, "R:top1": 0.6, "S1:top1": 0.55, "S2:top1": 0.45}"#,
        "\n",
        r#"{"model": "mix", "alpha": 0.5, "R:top1": 0.75, "S1:top1": 0.6, "S2:top1": 0.5}"#,
        "\n",
        r#"{"model": "ep1", "R:top1": 0.7, "S1:top1": 0.5}"#,
        "\n",
    );

    #[test]
    fn sweep_sorted_and_incomplete_records_skipped() {
        let s = Selection::new(&results(TEXT), "R", None).unwrap();
        assert_eq!(s.shifts, ["S1", "S2"]);
        let alphas: Vec<_> = s.sweep.iter().map(|p| p.alpha.unwrap()).collect();
        assert_eq!(alphas, [0.0, 0.5, 1.0]);
        assert!((s.sweep[0].shift_mean - 0.5).abs() < 1e-12);
        assert_eq!(s.skipped.len(), 1);
        assert_eq!(s.skipped[0].to_string(), "'ep1' on line 4 has no S2");
        assert_eq!(s.best().unwrap().model, "mix");

        let only_s1 = Selection::new(&results(TEXT), "R", Some(&["S1".to_string()])).unwrap();
        assert_eq!(only_s1.others.len(), 1);
        assert!(only_s1.skipped.is_empty());
    }

    #[test]
    fn errors() {
        let r = results(TEXT);
        let err = |shifts: Option<&[String]>, reference| {
            Selection::new(&r, reference, shifts).unwrap_err().to_string()
        };
        assert_eq!(
            err(None, "ImageNet"),
            "r.jsonl has no results for the reference dataset 'ImageNet'; datasets present: R, S1, S2"
        );
        assert!(err(Some(&["S3".into()]), "R").contains("no results for the shifted dataset 'S3'"));
        assert!(err(Some(&["R".into()]), "R").contains("cannot also be a shifted dataset"));
        assert!(err(Some(&[]), "R").contains("no dataset besides the reference"));
        let lonely = results(r#"{"model": "m", "R:top1": 0.5}"#);
        assert!(Selection::new(&lonely, "R", None).unwrap_err().to_string().contains("no dataset besides"));
    }

    #[test]
    fn alpha_labels() {
        assert_eq!(format_alpha(0.30000000000000004), "0.3");
        assert_eq!(format_alpha(1.0), "1");
        assert_eq!(format_alpha(0.0), "0");
        assert_eq!(format_alpha(0.25), "0.25");
        assert_eq!(format_alpha(-0.0), "0");
    }
}
