//! `wise fisher`: the diagonal Fisher information of a classifier on a dataset, for
//! Fisher-weighted merging (`wise ensemble --fisher`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use wise_data::{Dataset, OnBadImage};
use wise_ensemble::hash::sha256_file;
use wise_ensemble::{diagonal_fisher, FisherOptions};
use wise_zeroshot::ImageClassifier;

#[derive(Args)]
pub struct FisherArgs {
    /// Classifier checkpoint.
    #[arg(long)]
    model: PathBuf,
    /// Images to estimate it on (ImageFolder or CSV), usually the model's training set.
    /// Their labels are not used: labels are sampled from the model's own prediction.
    #[arg(long)]
    data: PathBuf,
    /// Examples: a seeded random subset of the dataset (default: every image).
    #[arg(long)]
    samples: Option<usize>,
    /// Output safetensors: one f32 tensor per parameter, under the parameter's name.
    #[arg(long)]
    out: PathBuf,
    /// Seeds the subset and the sampled labels.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images decoded per loader batch (gradients are still taken one image at a time).
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// What to do with an unreadable image: `error` stops, `skip` leaves it out.
    #[arg(long, default_value = "error", value_parser = ["error", "skip"])]
    on_bad_image: String,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(args: FisherArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let device = wise_clip::parse_device(&args.device)?;
    let dataset = Dataset::open(&args.data, None)?;
    let classifier =
        ImageClassifier::load(&args.model, &device)?.with_compute_dtype(wise_clip::compute_dtype(&device));
    let options = FisherOptions {
        samples: args.samples,
        seed: args.seed,
        batch_size: args.batch_size,
        on_bad_image: if args.on_bad_image == "skip" { OnBadImage::Skip } else { OnBadImage::Error },
    };
    let bar = ProgressBar::new(args.samples.unwrap_or(dataset.samples.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("fisher {bar:30} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let fisher = diagonal_fisher(&classifier, &dataset, &options, |done, _| bar.set_position(done as u64))
        .with_context(|| format!("Fisher of {} on {}", args.model.display(), args.data.display()))?;
    bar.finish_and_clear();
    let extra = BTreeMap::from([
        ("wise.fisher_model".to_string(), args.model.display().to_string()),
        ("wise.fisher_model_sha256".to_string(), sha256_file(&args.model)?),
        ("wise.fisher_data".to_string(), args.data.display().to_string()),
        ("wise.fisher_seed".to_string(), args.seed.to_string()),
    ]);
    fisher.save(&args.out, &extra)?;
    if !fisher.without_gradient.is_empty() {
        eprintln!("no gradient (left out): {}", fisher.without_gradient.join(", "));
    }
    eprintln!("wrote {}: {} tensors, {} examples", args.out.display(), fisher.tensors.len(), fisher.examples);
    Ok(())
}
