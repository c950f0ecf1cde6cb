//! `wise soup`: model soups — the uniform average of several fine-tuned classifiers, or the
//! greedy soup that keeps an ingredient only if held-out accuracy does not drop.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;
use wise_data::OnBadImage;
use wise_ensemble::{greedy_soup, MergeSpec, Output};
use wise_eval::{evaluate, EvalOptions};
use wise_zeroshot::ImageClassifier;

use crate::ensemble::write_merge;
use crate::eval::parse_datasets;

#[derive(Args)]
pub struct SoupArgs {
    /// The ingredients: classifiers fine-tuned from the same start (comma-separated).
    #[arg(long, value_delimiter = ',', num_args = 1.., required = true)]
    models: Vec<PathBuf>,
    /// `uniform`: average them all; `greedy`: best held-out first, keep each only if the
    /// held-out accuracy does not drop.
    #[arg(long, default_value = "uniform", value_parser = ["uniform", "greedy"])]
    mode: String,
    /// Held-out dataset as NAME=PATH (required for greedy; reported for uniform).
    #[arg(long, value_name = "NAME=PATH")]
    held_out: Option<String>,
    /// Output checkpoint.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(args: SoupArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let device = wise_clip::parse_device(&args.device)?;
    let held_out = match &args.held_out {
        Some(spec) => parse_datasets(std::slice::from_ref(spec))?.pop(),
        None => None,
    };
    let options = EvalOptions { batch_size: args.batch_size, on_bad_image: OnBadImage::Error };
    let (selected, soup_meta) = if args.mode == "greedy" {
        let Some((name, dataset)) = &held_out else { bail!("--mode greedy needs --held-out NAME=PATH") };
        let plan = greedy_soup(&args.models, (name, dataset), &options, &device, |line| eprintln!("{line}"))?;
        let ingredients: Vec<_> = plan
            .ingredients
            .iter()
            .map(|(p, acc)| json!({"path": p.display().to_string(), "held_out_top1": acc}))
            .collect();
        let selected: Vec<String> = plan.selected.iter().map(|p| p.display().to_string()).collect();
        let meta = json!({
            "mode": "greedy",
            "held_out": name,
            "ingredients": ingredients,
            "selected": selected,
            "held_out_top1": plan.held_out_top1,
        });
        eprintln!(
            "greedy soup: {} of {} ingredients, {name} top-1 {:.2}%",
            plan.selected.len(),
            args.models.len(),
            100.0 * plan.held_out_top1
        );
        (plan.selected, meta)
    } else {
        (args.models.clone(), json!({"mode": "uniform"}))
    };
    let n = selected.len();
    let output = Output {
        path: args.out.clone(),
        weights: vec![1.0 / n as f64; n],
        metadata: BTreeMap::from([("wise.soup".to_string(), soup_meta.to_string())]),
    };
    write_merge(&MergeSpec::new(selected, &format!("soup-{}", args.mode), vec![output]))?;
    if let (Some((name, dataset)), "uniform") = (&held_out, args.mode.as_str()) {
        let soup =
            ImageClassifier::load(&args.out, &device)?.with_compute_dtype(wise_clip::compute_dtype(&device));
        let e = evaluate(&soup, name, dataset, &options, |_| {})
            .with_context(|| format!("evaluating the soup on '{name}'"))?;
        eprintln!("uniform soup: {name} top-1 {:.2}%", 100.0 * e.metrics.top1());
    }
    Ok(())
}
