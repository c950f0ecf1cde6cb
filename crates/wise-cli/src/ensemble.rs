//! `wise ensemble`: WiSE-FT's weight-space ensembles. Checkpoints per α
//! (`wise_ft_alpha=0.500.safetensors`, as wise-ft names them), N-way weighted averages,
//! Fisher merging; or, with `--data`, the α sweep evaluated in memory with no file written
//! ([`sweep`], which `wise eval --zeroshot A --finetuned B --alphas ...` also calls).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::bail;
use candle_core::Device;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use wise_data::{Dataset, OnBadImage};
use wise_ensemble::{
    alpha_file_name, check_weights, merge, parse_alphas, wise_ft_weights, MergeSpec, Output,
};
use wise_eval::{EvalOptions, ResultsFile};
use wise_zeroshot::ImageClassifier;

#[derive(Args)]
pub struct EnsembleArgs {
    /// The zero-shot classifier θ0 (α = 0).
    #[arg(long, requires = "finetuned", conflicts_with_all = ["models", "weights"])]
    zeroshot: Option<PathBuf>,
    /// The fine-tuned classifier θ1 (α = 1).
    #[arg(long, requires = "zeroshot")]
    finetuned: Option<PathBuf>,
    /// Mixing coefficients for θ(α) = (1−α)·θ0 + α·θ1: a list `0,0.25,0.5` or a range
    /// `START:STOP:STEP` (both ends included).
    #[arg(long, requires = "zeroshot", allow_hyphen_values = true)]
    alpha: Option<String>,
    /// Checkpoints to average as Σ wᵢ·θᵢ (comma-separated), instead of --zeroshot/--finetuned.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    models: Vec<PathBuf>,
    /// One weight per --models entry, summing to 1 (default: all equal).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true, requires = "models")]
    weights: Vec<f64>,
    /// Folder for one `wise_ft_alpha=A.safetensors` per α.
    #[arg(long, conflicts_with = "out")]
    out_dir: Option<PathBuf>,
    /// Output checkpoint (with a single α, or with --models).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Diagonal Fisher files from `wise fisher`, one per model in the same order: Fisher
    /// merging, (c0·θ0 + c1·θ1)/(c0 + c1) with cᵢ = wᵢ·max(Fᵢ, floor).
    #[arg(long, value_delimiter = ',')]
    fisher: Vec<PathBuf>,
    /// Lower bound on Fisher values (wise-ft's --fisher_floor).
    #[arg(long, default_value_t = 1e-8)]
    fisher_floor: f64,
    /// Allow α (or weights) outside [0, 1].
    #[arg(long)]
    extrapolate: bool,
    /// Evaluate every α in memory on these datasets (NAME=PATH, repeatable) instead of
    /// writing checkpoints.
    #[arg(long = "data", value_name = "NAME=PATH", conflicts_with_all = ["out", "out_dir", "models", "fisher"])]
    data: Vec<String>,
    /// With --data: append one JSON line per α to this file.
    #[arg(long, requires = "data")]
    results: Option<PathBuf>,
    /// With --data: images per evaluation batch.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// With --data: cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(args: EnsembleArgs) -> anyhow::Result<()> {
    if !args.data.is_empty() {
        let (Some(zs), Some(ft), Some(alphas)) = (&args.zeroshot, &args.finetuned, &args.alpha) else {
            bail!("--data sweeps α in memory: it needs --zeroshot, --finetuned and --alpha");
        };
        anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
        let device = wise_clip::parse_device(&args.device)?;
        let datasets = crate::eval::parse_datasets(&args.data)?;
        let options = EvalOptions { batch_size: args.batch_size, on_bad_image: OnBadImage::Error };
        return sweep(
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
    let (inputs, outputs, method) = if let (Some(zs), Some(ft)) = (&args.zeroshot, &args.finetuned) {
        let Some(spec) = &args.alpha else { bail!("--alpha is required with --zeroshot/--finetuned") };
        let alphas = parse_alphas(spec)?;
        let path_of = |alpha: f64| -> anyhow::Result<PathBuf> {
            match (&args.out_dir, &args.out) {
                (Some(dir), _) => Ok(dir.join(alpha_file_name(alpha))),
                (None, Some(out)) if alphas.len() == 1 => Ok(out.clone()),
                (None, Some(_)) => bail!("--out takes one α; use --out-dir for {} of them", alphas.len()),
                (None, None) => bail!("give --out-dir (one file per α) or --out"),
            }
        };
        let outputs = alphas
            .iter()
            .map(|&alpha| {
                Ok(Output {
                    path: path_of(alpha)?,
                    weights: wise_ft_weights(alpha, args.extrapolate)?,
                    metadata: BTreeMap::from([("wise.alpha".to_string(), alpha.to_string())]),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        (vec![zs.clone(), ft.clone()], outputs, "wise-ft")
    } else if !args.models.is_empty() {
        let n = args.models.len();
        let weights = if args.weights.is_empty() { vec![1.0 / n as f64; n] } else { args.weights.clone() };
        check_weights(&weights, n, args.extrapolate)?;
        let Some(out) = &args.out else { bail!("--models writes one checkpoint: give --out") };
        (
            args.models.clone(),
            vec![Output { path: out.clone(), weights, metadata: BTreeMap::new() }],
            "weighted",
        )
    } else {
        bail!("give --zeroshot and --finetuned (WiSE-FT), or --models (a weighted average)");
    };
    let method = if args.fisher.is_empty() { method.to_string() } else { format!("{method}+fisher") };
    let mut spec = MergeSpec::new(inputs, &method, outputs);
    spec.fishers = args.fisher.clone();
    spec.fisher_floor = args.fisher_floor;
    write_merge(&spec)
}

/// Runs the streaming merge with a progress bar, and says what was written.
pub fn write_merge(spec: &MergeSpec) -> anyhow::Result<()> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("merging {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let report = merge(spec, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    for o in &spec.outputs {
        eprintln!("wrote {} (weights {:?})", o.path.display(), o.weights);
    }
    eprintln!(
        "{} tensors, {:.1} MB read, {:.1} MB per output, {:.2} s ({:.0} MB/s read)",
        report.layout.tensors.len(),
        report.bytes_read as f64 / 1e6,
        report.bytes_per_output as f64 / 1e6,
        report.seconds,
        report.bytes_read as f64 / 1e6 / report.seconds.max(1e-9)
    );
    Ok(())
}

/// The WiSE-FT α sweep in memory: every α of `alphas` (a list or `START:STOP:STEP`)
/// evaluated on every dataset, a table row printed and (with `results`) one JSON line
/// appended per α, with `"alpha"` set. No checkpoint is written.
#[allow(clippy::too_many_arguments)]
pub fn sweep(
    zeroshot: &Path,
    finetuned: &Path,
    alphas: &str,
    extrapolate: bool,
    datasets: &[(String, Dataset)],
    options: &EvalOptions,
    results: Option<&Path>,
    device: &Device,
) -> anyhow::Result<()> {
    let alphas = parse_alphas(alphas)?;
    let load = |p: &Path| -> anyhow::Result<ImageClassifier> {
        Ok(ImageClassifier::load(p, device)?.with_compute_dtype(wise_clip::compute_dtype(device)))
    };
    let (zs, ft) = (load(zeroshot)?, load(finetuned)?);
    let model = format!("wise-ft({}, {})", zeroshot.display(), finetuned.display());
    let names: Vec<String> = datasets.iter().map(|(n, _)| format!("{:>12}", format!("{n}:top1"))).collect();
    println!("{:>8} {}", "alpha", names.join(" "));
    wise_ensemble::sweep(&zs, &ft, &alphas, extrapolate, datasets, options, |point| {
        let cells: Vec<String> =
            point.evaluations.iter().map(|e| format!("{:>11.2}%", 100.0 * e.metrics.top1())).collect();
        println!("{:>8.3} {}", point.alpha, cells.join(" "));
        if let Some(path) = results {
            let record = ResultsFile::record(&model, Some(point.alpha), &point.evaluations);
            ResultsFile::new(path).append(&record).map_err(|e| wise_ensemble::Error::io(path, e))?;
        }
        Ok(())
    })?;
    if let Some(path) = results {
        eprintln!("appended {} results to {}", alphas.len(), path.display());
    }
    Ok(())
}
