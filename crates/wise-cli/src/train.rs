//! `wise train`: fine-tune a classifier end to end with wise-ft's recipe, on cross-entropy
//! or (`--loss contrastive`) on CLIP's contrastive loss with both towers (FLYP).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use wise_data::Dataset;
use wise_eval::Evaluation;
use wise_train::{train_with_clip, Loss, Observer, Run, StepInfo, TrainConfig};
use wise_zeroshot::ImageClassifier;

#[derive(Args)]
#[command(args_override_self = true)]
pub struct TrainArgs {
    /// Classifier to start from (usually `wise zeroshot`'s output).
    #[arg(long)]
    model: PathBuf,
    /// Training set: an ImageFolder or a CSV manifest with the head's classes.
    #[arg(long)]
    data: PathBuf,
    /// Output folder: `epoch_N.safetensors`, `finetuned.safetensors`, `resume.safetensors`.
    #[arg(long)]
    out: PathBuf,
    /// cross_entropy (wise-ft: the classifier's logits) or contrastive (FLYP: CLIP's loss
    /// between images and captions made from the classifier's templates, both towers
    /// trained, the head rebuilt from the text tower after every epoch).
    #[arg(long, default_value = "cross_entropy", value_name = "cross_entropy|contrastive")]
    loss: Loss,
    /// With --loss contrastive: the CLIP whose text tower is trained (model folder,
    /// open_clip file or hub id), instead of the classifier's source model.
    #[arg(long, value_name = "DIR|FILE|HUB_ID")]
    clip: Option<String>,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    #[arg(long, default_value_t = 3e-5)]
    lr: f64,
    /// Decoupled weight decay (AdamW).
    #[arg(long, default_value_t = 0.1)]
    wd: f64,
    /// Linear warmup, in optimizer steps.
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// Global gradient-norm cap; 0 disables clipping.
    #[arg(long, default_value_t = 1.0)]
    clip_grad_norm: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after this many optimizer steps (the schedule spans them).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Eval preprocessing instead of RandomResizedCrop.
    #[arg(long)]
    no_augment: bool,
    /// Train only the head, on cached features of the frozen tower (a linear classifier).
    #[arg(long)]
    freeze_encoder: bool,
    /// No weight decay on biases, norms and embeddings (wise-ft decays everything).
    #[arg(long)]
    no_decay_bias_norm: bool,
    /// Also save resumable state every N optimizer steps.
    #[arg(long)]
    save_every: Option<usize>,
    /// Evaluate after every epoch on NAME=PATH (repeatable); results in OUT/results.jsonl.
    #[arg(long = "eval", value_name = "NAME=PATH")]
    eval: Vec<String>,
    /// Continue the run saved in --out (same options required).
    #[arg(long)]
    resume: bool,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
}

impl TrainArgs {
    fn config(&self) -> TrainConfig {
        TrainConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            lr: self.lr,
            wd: self.wd,
            warmup: self.warmup,
            label_smoothing: self.label_smoothing,
            clip_grad_norm: (self.clip_grad_norm != 0.0).then_some(self.clip_grad_norm),
            seed: self.seed,
            max_steps: self.max_steps,
            augment: !self.no_augment,
            freeze_encoder: self.freeze_encoder,
            no_decay_on_bias_norm_embedding: self.no_decay_bias_norm,
            save_every: self.save_every,
            loss: self.loss,
        }
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let config = args.config();
    config.validate()?;
    if args.clip.is_some() && config.loss != Loss::Contrastive {
        anyhow::bail!("--clip names the text tower of --loss contrastive; cross-entropy training has none");
    }
    let device = wise_clip::parse_device(&args.device)?;
    let train_set = Dataset::open(&args.data, None)?;
    let evals = crate::eval::parse_datasets(&args.eval)?;
    let classifier =
        ImageClassifier::load(&args.model, &device)?.with_compute_dtype(wise_clip::compute_dtype(&device));
    let run = Run {
        classifier,
        train: &train_set,
        evals: &evals,
        config,
        out_dir: args.out.clone(),
        resume: args.resume,
        feature_cache: wise_train::features::default_cache_dir(),
    };
    let mut bars = Bars::default();
    let summary = train_with_clip(run, args.clip.as_deref(), &mut bars)
        .with_context(|| format!("training {} into {}", args.model.display(), args.out.display()))?;
    bars.finish();
    println!(
        "trained {} steps ({} epochs, {} images) in {:.1}s, last loss {:.4}{}: {}",
        summary.steps,
        summary.epochs,
        summary.images,
        summary.seconds,
        summary.last_loss,
        peak_memory(&device),
        summary.finetuned.display()
    );
    Ok(())
}

/// `, peak memory …`: the most the run held (RAM, or the accelerator's own), to size the
/// next run's batch by.
fn peak_memory(device: &candle_core::Device) -> String {
    use wise_train::memory::{display_size, peak_resident_bytes};
    match wise_clip::device_memory(device) {
        Some(m) => {
            format!(", peak memory {} of the device's {}", display_size(m.peak), display_size(m.total))
        }
        None => {
            peak_resident_bytes().map(|b| format!(", peak memory {}", display_size(b))).unwrap_or_default()
        }
    }
}

/// One progress bar per epoch: loss, lr, img/s, ETA.
#[derive(Default)]
pub struct Bars {
    bar: Option<ProgressBar>,
    /// A zero-shot head being built (FLYP's rebuilds, an experiment's zeroshot stage).
    head: Option<ProgressBar>,
}

impl Bars {
    pub fn finish(&mut self) {
        for bar in [self.bar.take(), self.head.take()].into_iter().flatten() {
            bar.finish_and_clear();
        }
    }
}

impl Observer for Bars {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, batches: usize) {
        let bar = ProgressBar::new(batches as u64);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "epoch {}/{epochs} {{bar:25}} {{pos}}/{{len}} {{msg}} eta {{eta}}",
                epoch + 1
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        self.bar = Some(bar);
    }

    fn step(&mut self, s: &StepInfo) {
        if let Some(bar) = &self.bar {
            bar.set_position(s.batch as u64);
            bar.set_message(format!(
                "loss {:.4} lr {:.2e} {:.1} img/s, waiting for data {:.0}%",
                s.loss,
                s.lr,
                s.images_per_sec,
                100.0 * s.data_wait
            ));
        }
    }

    fn epoch_end(&mut self, epoch: usize, evaluations: &[Evaluation]) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let accs: Vec<String> = evaluations
            .iter()
            .map(|e| format!("{} top1 {:.2}%", e.dataset, 100.0 * e.metrics.top1()))
            .collect();
        eprintln!("epoch {} done{}{}", epoch + 1, if accs.is_empty() { "" } else { ": " }, accs.join(", "));
    }

    fn warning(&mut self, message: &str) {
        eprintln!("warning: {message}");
    }

    fn head_progress(&mut self, done: usize, total: usize) {
        let bar = self.head.get_or_insert_with(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "zero-shot head {bar:25} {pos}/{len} prompts {per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        bar.set_position(done as u64);
        if done >= total {
            if let Some(bar) = self.head.take() {
                bar.finish_and_clear();
            }
        }
    }
}
