//! `wise shift`: a shifted copy of a test set (CIFAR-10-C / ImageNet-C corruptions at
//! severities 1..5) for robustness evaluation when no natural shift of the classes exists.
//! The work is done by the wise-shift crate.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use wise_data::Dataset;
use wise_shift::{shift_dataset, Corruption, Severity, ShiftOptions};

#[derive(Args)]
#[command(
    after_help = "Corruptions (Hendrycks & Dietterich 2019): gaussian_noise, shot_noise, impulse_noise, \
defocus_blur, glass_blur, motion_blur, zoom_blur, snow, frost, fog, brightness, contrast, elastic_transform, \
pixelate, jpeg_compression.

Parameters: the CIFAR-10-C table for images whose shorter side is under 85 pixels, the ImageNet-C table \
otherwise; blur radii and other sizes in pixels scale with side/32 or side/224.

Layout: one corruption and one severity write the ImageFolder into --out itself; otherwise \
--out/<corruption>/<severity>/. Files keep their relative paths and stems and become PNG; classnames.txt is \
copied; --out/shift.json records the settings."
)]
pub struct ShiftArgs {
    /// The clean ImageFolder (one folder per class), e.g. data/cifar10/test.
    #[arg(long)]
    data: PathBuf,
    /// Corruptions: a name, a comma-separated list, or `all`.
    #[arg(long, value_name = "NAME[,NAME...]|all")]
    corruption: String,
    /// Severities 1 (mild) to 5 (strong): `3`, `1,3,5`, `2..4` or `all`.
    #[arg(long, value_name = "1..5", default_value = "all")]
    severity: String,
    /// Output folder; it must be absent or empty unless --overwrite.
    #[arg(long)]
    out: PathBuf,
    /// Seed of the random corruptions (each image's draws come from the seed and its path).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Replace a non-empty --out (only once the new trees are complete).
    #[arg(long)]
    overwrite: bool,
}

pub fn run(args: ShiftArgs) -> anyhow::Result<()> {
    let opts = ShiftOptions {
        corruptions: Corruption::parse_list(&args.corruption)
            .map_err(|e| anyhow::anyhow!("--corruption: {e}"))?,
        severities: Severity::parse_list(&args.severity).map_err(|e| anyhow::anyhow!("--severity: {e}"))?,
        seed: args.seed,
        overwrite: args.overwrite,
    };
    // The image count, for the progress bar (a directory walk; shift_dataset walks again).
    let images = Dataset::image_folder(&args.data, None).map(|d| d.len()).unwrap_or(0);
    let total = images * opts.corruptions.len() * opts.severities.len();
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} images written {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if total <= 256 {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let progress = |n: usize| bar.inc(n as u64);
    let summary = shift_dataset(&args.data, &args.out, &opts, &progress)
        .with_context(|| format!("shifting {}", args.data.display()))?;
    bar.finish_and_clear();
    let names: Vec<&str> = opts.corruptions.iter().map(|c| c.name()).collect();
    let levels: Vec<String> = opts.severities.iter().map(|s| s.to_string()).collect();
    eprintln!(
        "{} images ({} classes) × {} corruption(s) [{}] × severity {} → {}",
        summary.images,
        summary.classes,
        names.len(),
        names.join(", "),
        levels.join(","),
        summary.out.display()
    );
    if summary.nested() {
        eprintln!("  trees: {}/<corruption>/<severity>/", summary.out.display());
    }
    Ok(())
}
