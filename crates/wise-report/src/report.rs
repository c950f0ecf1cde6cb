//! The Markdown report: the figure's numbers as a table, and the four results people quote
//! (zero-shot, fine-tuned, α=0.5, best α).

use std::fmt::Write;
use std::path::Path;

use crate::error::Result;
use crate::results::Results;
use crate::selection::{format_alpha, Point, Selection};

/// The report for `reference` against the mean of `shifts` (default: every other dataset),
/// with the same rows and the same errors as [`crate::plot`]. No I/O.
pub fn report_markdown(results: &Results, reference: &str, shifts: Option<&[String]>) -> Result<String> {
    Ok(render_markdown(&Selection::new(results, reference, shifts)?, &results.path))
}

/// The report for an already made selection; `source` is named in the text.
///
/// Rows: the α sweep by α, then the other models in file order. Columns: α, model, the
/// reference, each shifted dataset, their mean ("mean shift"), and the average of the
/// reference and the mean shift ("avg", which ranks the best α). Top-1 in %, two decimals.
pub fn render_markdown(sel: &Selection, source: &Path) -> String {
    let mut md = String::new();
    let r = &sel.reference;
    // `write!` to a String cannot fail.
    let _ = writeln!(md, "## WiSE-FT: {r} vs. distribution shift\n");
    let _ = writeln!(
        md,
        "Top-1 accuracy (%) from `{}`. *mean shift*: the average over {}. *avg*: the mean of {r} \
         and *mean shift*.\n",
        source.display(),
        sel.shifts.join(", ")
    );

    let mut header = vec!["α".to_string(), "model".to_string(), escape(r)];
    header.extend(sel.shifts.iter().map(|s| escape(s)));
    header.extend(["mean shift".to_string(), "avg".to_string()]);
    let _ = writeln!(md, "| {} |", header.join(" | "));
    let align: Vec<&str> =
        header.iter().enumerate().map(|(i, _)| if i == 1 { ":---" } else { "---:" }).collect();
    let _ = writeln!(md, "|{}|", align.join("|"));
    for p in sel.sweep.iter().chain(&sel.others) {
        let mut row = vec![p.alpha.map_or("–".to_string(), format_alpha), escape(&p.model), pct(p.reference)];
        row.extend(p.shifts.iter().map(|&a| pct(a)));
        row.extend([pct(p.shift_mean), pct(p.balanced())]);
        let _ = writeln!(md, "| {} |", row.join(" | "));
    }
    md.push('\n');

    if sel.sweep.is_empty() {
        let _ = writeln!(md, "No model has an α, so there is no WiSE-FT sweep to summarise.");
        append_skipped(&mut md, sel);
        return md;
    }
    let fine_tuned = sel.at_alpha(1.0);
    let summary = |name: &str, p: Option<&Point>, versus: Option<&Point>| match p {
        None => format!("- **{name}**: not evaluated"),
        Some(p) => {
            let delta = |a: f64, b: f64| format!(" ({:+.2} pp vs. fine-tuned)", (a - b) * 100.0);
            let (dr, ds) = match versus {
                Some(v) => (delta(p.reference, v.reference), delta(p.shift_mean, v.shift_mean)),
                None => (String::new(), String::new()),
            };
            format!(
                "- **{name}** (`{}`): {r} {}%{dr}, mean shift {}%{ds}",
                p.model.replace('`', "'"),
                pct(p.reference),
                pct(p.shift_mean)
            )
        }
    };
    let best = sel.best();
    let best_name = match best.and_then(|p| p.alpha) {
        Some(a) => format!("best α={}", format_alpha(a)),
        None => "best α".to_string(),
    };
    let _ = writeln!(md, "{}", summary("zero-shot (α=0)", sel.at_alpha(0.0), None));
    let _ = writeln!(md, "{}", summary("fine-tuned (α=1)", fine_tuned, None));
    let _ = writeln!(md, "{}", summary("α=0.5", sel.at_alpha(0.5), fine_tuned));
    let _ = writeln!(md, "{}", summary(&best_name, best, fine_tuned));
    let _ = writeln!(
        md,
        "\nThe best α has the highest *avg*, weighing {r} and the shifts equally; it is chosen on \
         these same test sets, so it is an optimistic pick (the paper's default is α=0.5)."
    );
    append_skipped(&mut md, sel);
    md
}

fn append_skipped(md: &mut String, sel: &Selection) {
    if !sel.skipped.is_empty() {
        let skipped: Vec<String> = sel.skipped.iter().map(|s| s.to_string()).collect();
        let _ = writeln!(md, "\nNot shown, for missing datasets: {}.", skipped.join("; "));
    }
}

fn pct(a: f64) -> String {
    format!("{:.2}", a * 100.0)
}

/// Table cells must not contain `|` or line breaks.
fn escape(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}
