//! `wise plot`: the WiSE-FT figure (reference vs. mean shifted top-1, logit axes, the α
//! curve) from a results file, and optionally a Markdown table of the same numbers.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

#[derive(Args)]
pub struct PlotArgs {
    /// Results file appended to by `wise eval --results` (one JSON line per model).
    results: PathBuf,
    /// The dataset fine-tuned for (x axis), as named in `wise eval --data NAME=PATH`.
    #[arg(long)]
    reference: String,
    /// Shifted datasets averaged on the y axis, comma-separated (default: every other dataset
    /// in the file).
    #[arg(long, value_delimiter = ',', value_name = "A,B,...")]
    shifts: Option<Vec<String>>,
    /// The figure to write: .png or .svg.
    #[arg(long)]
    out: PathBuf,
    /// Also write the numbers as a Markdown table (with zero-shot, fine-tuned, α=0.5 and best α).
    #[arg(long)]
    report: Option<PathBuf>,
}

pub fn run(args: PlotArgs) -> anyhow::Result<()> {
    let shifts: Option<Vec<String>> =
        args.shifts.map(|s| s.iter().map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect());
    anyhow::ensure!(shifts.as_ref().is_none_or(|s| !s.is_empty()), "--shifts names no dataset");
    let results = wise_report::read_results(&args.results)?;
    let selection = wise_report::plot(&results, &args.reference, shifts.as_deref(), &args.out)?;
    for skipped in &selection.skipped {
        eprintln!("warning: left out {skipped}");
    }
    eprintln!(
        "wrote {} ({} α values, {} other models; {} vs. mean of {})",
        args.out.display(),
        selection.sweep.len(),
        selection.others.len(),
        selection.reference,
        selection.shifts.join(", ")
    );
    if let Some(path) = &args.report {
        let markdown = wise_report::render_markdown(&selection, &args.results);
        wise_report::write_atomic(path, markdown.as_bytes())
            .with_context(|| format!("writing the report to {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
