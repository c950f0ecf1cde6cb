//! `wise eval`: accuracy of a classifier on named datasets, printed and appended to a
//! results file.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use wise_data::{Dataset, OnBadImage};
use wise_eval::{evaluate, EvalOptions, Evaluation, ResultsFile};
use wise_zeroshot::ImageClassifier;

#[derive(Args)]
pub struct EvalArgs {
    /// Classifier checkpoint (from `wise zeroshot`, `wise train` or `wise ensemble`).
    #[arg(long, required_unless_present = "zeroshot", conflicts_with_all = ["zeroshot", "finetuned", "alphas"])]
    model: Option<PathBuf>,
    /// α sweep without writing checkpoints: the zero-shot endpoint (with --finetuned, --alphas).
    #[arg(long, requires_all = ["finetuned", "alphas"])]
    zeroshot: Option<PathBuf>,
    /// α sweep: the fine-tuned endpoint.
    #[arg(long, requires = "zeroshot")]
    finetuned: Option<PathBuf>,
    /// α sweep: values as `0,0.5,1` or `START:END:STEP` (e.g. `0:1:0.1`).
    #[arg(long, requires = "zeroshot", allow_hyphen_values = true)]
    alphas: Option<String>,
    /// Allow α outside [0, 1] in the sweep.
    #[arg(long, requires = "zeroshot")]
    extrapolate: bool,
    /// A dataset to evaluate on, as NAME=PATH (ImageFolder or CSV); repeat for shifted sets.
    #[arg(long = "data", value_name = "NAME=PATH", required = true)]
    data: Vec<String>,
    /// Append one JSON line with the results to this file.
    #[arg(long)]
    results: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// What to do with an unreadable image: `error` stops, `skip` leaves it out and reports it.
    #[arg(long, default_value = "error", value_parser = ["error", "skip"])]
    on_bad_image: String,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let device = wise_clip::parse_device(&args.device)?;
    let datasets = parse_datasets(&args.data)?;
    let options = EvalOptions {
        batch_size: args.batch_size,
        on_bad_image: if args.on_bad_image == "skip" { OnBadImage::Skip } else { OnBadImage::Error },
    };
    if let (Some(zs), Some(ft), Some(alphas)) = (&args.zeroshot, &args.finetuned, &args.alphas) {
        return crate::ensemble::sweep(
            zs,
            ft,
            alphas,
            args.extrapolate,
            &datasets,
            &options,
            args.results.as_deref(),
            &device,
        );
    }
    let model = args.model.clone().context("--model (or --zeroshot/--finetuned/--alphas) is required")?;
    let classifier =
        ImageClassifier::load(&model, &device)?.with_compute_dtype(wise_clip::compute_dtype(&device));
    let mut evaluations = Vec::new();
    for (name, dataset) in &datasets {
        let bar = ProgressBar::new(dataset.samples.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{name:>12} {{bar:30}} {{pos}}/{{len}} {{per_sec}} eta {{eta}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let evaluation = evaluate(&classifier, name, dataset, &options, |done| bar.set_position(done as u64))
            .with_context(|| format!("evaluating on '{name}'"))?;
        bar.finish_and_clear();
        if evaluation.skipped > 0 {
            eprintln!("{name}: skipped {} unreadable images", evaluation.skipped);
        }
        evaluations.push(evaluation);
    }
    print_table(&evaluations);
    if let Some(path) = &args.results {
        let alpha = classifier.meta.extra.get("alpha").and_then(|a| a.parse::<f64>().ok());
        let record = ResultsFile::record(&model.display().to_string(), alpha, &evaluations);
        ResultsFile::new(path).append(&record).with_context(|| format!("appending to {}", path.display()))?;
        eprintln!("appended results to {}", path.display());
    }
    Ok(())
}

/// `NAME=PATH` specs, each opened as a dataset.
pub fn parse_datasets(specs: &[String]) -> anyhow::Result<Vec<(String, Dataset)>> {
    specs
        .iter()
        .map(|spec| {
            let (name, path) = spec
                .split_once('=')
                .filter(|(n, p)| !n.is_empty() && !p.is_empty())
                .with_context(|| format!("'{spec}': expected NAME=PATH"))?;
            Ok((name.to_string(), Dataset::open(path.as_ref(), None)?))
        })
        .collect()
}

fn print_table(evaluations: &[Evaluation]) {
    println!("{:<16} {:>8} {:>8} {:>8} {:>8}", "dataset", "n", "top1", "top5", "seconds");
    for e in evaluations {
        let m = &e.metrics;
        println!(
            "{:<16} {:>8} {:>7.2}% {:>7.2}% {:>8.1}",
            e.dataset,
            m.n,
            100.0 * m.top1(),
            100.0 * m.top5(),
            e.seconds
        );
    }
    println!();
    let header: Vec<String> = evaluations.iter().map(|e| format!("{:>12}", e.dataset)).collect();
    println!("{:<16} {}", "per-class top1", header.join(" "));
    let mut classes: Vec<String> = Vec::new();
    for e in evaluations {
        for (name, _, _) in e.metrics.per_class_accuracy() {
            if !classes.contains(&name) {
                classes.push(name);
            }
        }
    }
    for class in classes {
        let cells: Vec<String> = evaluations
            .iter()
            .map(|e| {
                e.metrics
                    .per_class_accuracy()
                    .into_iter()
                    .find(|(n, _, _)| *n == class)
                    .map(|(_, acc, n)| format!("{:>6.1}% {:>4}", 100.0 * acc, n))
                    .unwrap_or_else(|| format!("{:>12}", "-"))
            })
            .collect();
        println!("{class:<16} {}", cells.join(" "));
    }
}
