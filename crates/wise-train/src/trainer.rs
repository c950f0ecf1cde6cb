//! The fine-tuning loop, as wise-ft's `finetune`: for each batch, the cosine schedule sets
//! the learning rate, cross-entropy of the classifier's logits is back-propagated through
//! the whole classifier (tower and head), gradients are clipped to a global norm, and AdamW
//! steps. Every `save_every` steps and at each epoch end the full state is saved; a resumed
//! run continues bit for bit (data order and augmentation are functions of seed, epoch and
//! sample, not of a stateful generator).
//!
//! With `loss = contrastive` the same loop runs FLYP ([`crate::flyp`]): the loss is CLIP's
//! contrastive loss of images and class-prompt captions, both towers and the temperature
//! train, and the head is rebuilt from the text tower at every epoch end.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Device, Module, Tensor, Var};
use wise_data::{Dataset, Loader};
use wise_eval::{evaluate, EvalOptions, Evaluation, ResultsFile};
use wise_zeroshot::ImageClassifier;

use crate::config::{Loss, TrainConfig};
use crate::features::FrozenFeatures;
use crate::flyp::Flyp;
use crate::loss::cross_entropy;
use crate::memory::{self, StepMemory};
use crate::optim::{clip_scale, grad_norm, is_no_decay, AdamW, AdamWConfig};
use crate::schedule::cosine_lr;
use crate::state::{self, Progress};
use crate::{Error, Result};

/// The fine-tuned classifier written at the end of a run.
pub const FINETUNED_FILE: &str = "finetuned.safetensors";
pub const RESULTS_FILE: &str = "results.jsonl";

/// What a run reports as it goes (the CLI draws progress bars from it).
pub trait Observer {
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _batches: usize) {}
    fn step(&mut self, _info: &StepInfo) {}
    fn epoch_end(&mut self, _epoch: usize, _evaluations: &[Evaluation]) {}
    /// Prompts through the text tower so far, of `total`, while a zero-shot head is built
    /// (FLYP's rebuild after each epoch, an experiment's zeroshot stage): ImageNet's is
    /// 80,000 prompts, minutes on a CPU.
    fn head_progress(&mut self, _done: usize, _total: usize) {}
    /// Something the user should know before the run goes on (a step that may not fit in
    /// memory).
    fn warning(&mut self, _message: &str) {}
}

/// An observer that reports nothing.
pub struct Quiet;
impl Observer for Quiet {}

#[derive(Debug, Clone)]
pub struct StepInfo {
    pub epoch: usize,
    /// Optimizer steps done, of `total_steps`.
    pub step: usize,
    pub total_steps: usize,
    /// Micro-batches done in this epoch.
    pub batch: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub images_per_sec: f64,
    /// Share of this epoch's time so far spent waiting for the data loader (0 to 1): near 0
    /// while decoding keeps ahead of the model; a large share means the data path limits
    /// the run (more cores, smaller images on disk, or `--freeze-encoder`'s cached features).
    pub data_wait: f64,
}

#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub steps: usize,
    pub epochs: usize,
    pub last_loss: f64,
    pub seconds: f64,
    pub images: usize,
    pub finetuned: PathBuf,
}

/// One fine-tuning run.
pub struct Run<'a> {
    pub classifier: ImageClassifier,
    pub train: &'a Dataset,
    /// Evaluated after every epoch, results appended to `out_dir/results.jsonl`.
    pub evals: &'a [(String, Dataset)],
    pub config: TrainConfig,
    pub out_dir: PathBuf,
    /// Continue from `out_dir`'s saved state instead of starting fresh.
    pub resume: bool,
    /// Where frozen-tower features are cached (`--freeze-encoder`).
    pub feature_cache: PathBuf,
}

/// Runs `run` to its end (see the module docs). A contrastive run trains the text tower
/// of the classifier's `source_model`; [`train_with_clip`] names another CLIP.
pub fn train(run: Run, observer: &mut dyn Observer) -> Result<TrainSummary> {
    train_with_clip(run, None, observer)
}

/// [`train`], with the CLIP whose text tower a contrastive run trains given as `clip` (a
/// model folder, open_clip file or hub id) instead of the classifier's `source_model`,
/// e.g. when that folder has moved. Resuming without it uses the CLIP the run started
/// with. Cross-entropy runs ignore it.
pub fn train_with_clip(run: Run, clip: Option<&str>, observer: &mut dyn Observer) -> Result<TrainSummary> {
    let (batch_size, grad_accum) = (run.config.batch_size, run.config.grad_accum);
    let contrastive = run.config.loss == Loss::Contrastive;
    run_training(run, clip, observer)
        .map_err(|e| memory::explain_out_of_memory(e, batch_size, grad_accum, contrastive))
}

fn run_training(run: Run, clip: Option<&str>, observer: &mut dyn Observer) -> Result<TrainSummary> {
    let config = run.config.clone();
    config.validate()?;
    check_classes(&run.classifier, run.train)?;
    std::fs::create_dir_all(&run.out_dir).map_err(|e| Error::Io { path: run.out_dir.clone(), source: e })?;
    let device = run.classifier.device().clone();
    let contrastive = config.loss == Loss::Contrastive;

    let saved = run.out_dir.join(state::RESUME_FILE);
    if !run.resume && saved.exists() {
        return Err(Error::Config(format!(
            "{} already holds a run ({}): continue it with --resume, or choose another output folder",
            run.out_dir.display(),
            state::RESUME_FILE
        )));
    }
    let restored = if run.resume {
        let restored = state::load(&run.out_dir, &device)?;
        let diffs = config.differences(&restored.progress.config);
        if !diffs.is_empty() {
            return Err(Error::Config(format!(
                "--resume {}: saved with a different configuration: {}",
                run.out_dir.display(),
                diffs.join(", ")
            )));
        }
        if restored.progress.train_images != run.train.len() {
            return Err(Error::Config(format!(
                "--resume {}: saved for {} training images, this dataset has {}",
                run.out_dir.display(),
                restored.progress.train_images,
                run.train.len()
            )));
        }
        Some(restored)
    } else {
        None
    };
    let classifier = match &restored {
        Some(r) => r.classifier.clone().with_compute_dtype(run.classifier.compute_dtype),
        None => run.classifier,
    };

    // Contrastive: the classifier's image tower joined to a CLIP's text tower (restored
    // from the saved state when resuming).
    let flyp = if contrastive {
        let clip =
            clip.map(str::to_string).or_else(|| restored.as_ref().and_then(|r| r.progress.clip.clone()));
        let flyp = Flyp::new(&classifier, clip.as_deref())?;
        if let Some(r) = &restored {
            for (name, var) in flyp.text_params() {
                var.set(&r.tensor(&name, &device)?)?;
            }
        }
        Some(flyp)
    } else {
        None
    };
    // Saved beside the classifier: the text tower and temperature of a contrastive run.
    let extra = flyp.as_ref().map(Flyp::text_params).unwrap_or_default();

    // The parameters this run optimises: the whole classifier, the head over a frozen
    // tower, or (contrastive) both towers and the temperature; the head is then rebuilt,
    // not trained.
    let params: std::collections::BTreeMap<String, Var> = match &flyp {
        Some(f) => f.params().clone(),
        None => classifier
            .params
            .iter()
            .filter(|(n, _)| !config.freeze_encoder || n.starts_with("classification_head."))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect(),
    };
    // A frozen tower's step trains the head on cached features: nothing to check.
    if !config.freeze_encoder {
        let count = |vars: &mut dyn Iterator<Item = &Var>| vars.map(|v| v.elem_count()).sum::<usize>();
        let mut step = StepMemory::image_classifier(
            &device,
            &classifier.meta.vision_config,
            count(&mut classifier.params.values()) + count(&mut extra.values()),
            count(&mut params.values()),
            config.batch_size.min(run.train.len()),
            config.grad_accum,
        );
        if let Some(f) = &flyp {
            step = step.with_text(&f.clip.config.text_config);
        }
        if let Some(warning) =
            memory::check_before_training(&step, config.batch_size * config.grad_accum, &device)?
        {
            observer.warning(&warning);
        }
    }
    let adamw = AdamWConfig { weight_decay: config.wd, ..AdamWConfig::default() };
    let mut optimizer = AdamW::new(adamw, &params)?;
    if config.no_decay_on_bias_norm_embedding {
        optimizer.no_decay = optimizer.m.keys().filter(|n| is_no_decay(n)).cloned().collect();
    }
    let mut progress = match restored {
        Some(r) => {
            optimizer = r.optimizer(optimizer, &device)?;
            r.progress
        }
        None => Progress {
            step: 0,
            epoch: 0,
            batch: 0,
            config: config.clone(),
            train_images: run.train.len(),
            clip: None,
        },
    };
    // The CLIP this (possibly resumed) run takes its text tower from, for the next resume.
    if let Some(f) = &flyp {
        progress.clip = Some(f.source.clone());
    }

    let frozen = if config.freeze_encoder {
        Some(FrozenFeatures::load_or_compute(&classifier, run.train, &run.feature_cache, config.batch_size)?)
    } else {
        None
    };
    // Contrastive batches are full batches only: a tiny last batch has too few negatives.
    let loader = Loader::new(run.train, classifier.preprocessor(), &device)
        .with_batch_size(config.batch_size)
        .with_drop_last(contrastive);
    let batches_per_epoch = loader.num_batches();
    if batches_per_epoch == 0 {
        return Err(Error::Config(format!(
            "{} training images are less than one batch of {}{}",
            run.train.len(),
            config.batch_size,
            if contrastive { " (the contrastive loss uses full batches only)" } else { "" }
        )));
    }
    let steps_per_epoch = batches_per_epoch.div_ceil(config.grad_accum);
    let total_steps = config.max_steps.unwrap_or(config.epochs * steps_per_epoch);
    let epochs = total_steps.div_ceil(steps_per_epoch);

    let start = Instant::now();
    let mut images = 0usize;
    let mut last_loss = f64::NAN;
    while progress.step < total_steps {
        let epoch = progress.epoch;
        observer.epoch_start(epoch, epochs, batches_per_epoch);
        let mut grads: Option<GradStore> = None;
        let mut accumulated = 0usize;
        let mut loss_sum = 0f64;
        let epoch_start = Instant::now();
        let mut epoch_images = 0usize;
        let first_batch = progress.batch;
        let mut batch_index = first_batch;

        // `waited`: the time this epoch's loader has made the step wait so far.
        let mut handle_batch = |loss: Tensor, n: usize, waited: std::time::Duration| -> Result<bool> {
            let value = loss.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                return Err(Error::NonFinite {
                    step: progress.step,
                    epoch,
                    batch: batch_index,
                    value,
                    last_good: run.out_dir.join(state::RESUME_FILE),
                });
            }
            let micro = wise_clip::backward(&(loss / config.grad_accum as f64)?)?;
            grads = Some(match grads.take() {
                None => micro,
                Some(mut acc) => {
                    for var in params.values() {
                        if let (Some(a), Some(g)) = (acc.get(var), micro.get(var)) {
                            let sum = (a + g)?;
                            acc.insert(var, sum);
                        }
                    }
                    acc
                }
            });
            accumulated += 1;
            loss_sum += value;
            batch_index += 1;
            images += n;
            epoch_images += n;
            let end_of_epoch = batch_index == batches_per_epoch;
            if accumulated < config.grad_accum && !end_of_epoch {
                return Ok(false);
            }
            // One optimizer step.
            let g = grads.take().expect("at least one micro-batch was accumulated");
            let (grad_norm, grad_scale) = match config.clip_grad_norm {
                Some(max) => {
                    let norm = grad_norm(&params, &g)?;
                    (norm, clip_scale(norm, max))
                }
                None => (f64::NAN, 1.0),
            };
            let lr = cosine_lr(config.lr, config.warmup, total_steps, progress.step);
            optimizer.step(&params, &g, lr, grad_scale)?;
            if let Some(f) = &flyp {
                f.clamp_logit_scale()?;
            }
            progress.step += 1;
            progress.batch = batch_index;
            last_loss = loss_sum / accumulated as f64;
            observer.step(&StepInfo {
                epoch,
                step: progress.step,
                total_steps,
                batch: batch_index,
                loss: last_loss,
                lr,
                grad_norm,
                images_per_sec: epoch_images as f64 / epoch_start.elapsed().as_secs_f64().max(1e-9),
                data_wait: waited.as_secs_f64() / epoch_start.elapsed().as_secs_f64().max(1e-9),
            });
            accumulated = 0;
            loss_sum = 0.0;
            if config.save_every.is_some_and(|k| progress.step % k == 0) && !end_of_epoch {
                state::save(&run.out_dir, &classifier, &extra, &optimizer, &progress)?;
            }
            Ok(progress.step >= total_steps)
        };

        match (&frozen, &flyp) {
            (Some(features), _) => {
                for (x, labels) in
                    features.epoch(config.seed, epoch as u64, config.batch_size, first_batch)?
                {
                    let logits = classifier.head.forward(&x)?;
                    let loss = cross_entropy(&logits, &labels, config.label_smoothing)?;
                    if handle_batch(loss, labels.dim(0)?, std::time::Duration::ZERO)? {
                        break;
                    }
                }
            }
            (None, _) => {
                let mut batches =
                    loader.train_from(config.seed, epoch as u64, config.augment, first_batch)?;
                while let Some(batch) = batches.next() {
                    let batch = batch?;
                    let loss = match &flyp {
                        Some(flyp) => {
                            let captions =
                                flyp.captions(run.train, config.seed, epoch as u64, &batch.indices);
                            flyp.loss(&captions, &batch.pixels)?
                        }
                        None => {
                            let logits = classifier.logits(&batch.pixels)?;
                            cross_entropy(&logits, &batch.labels_tensor(&device)?, config.label_smoothing)?
                        }
                    };
                    if handle_batch(loss, batch.len(), batches.waited())? {
                        break;
                    }
                }
            }
        }
        // Epoch (or run) done: the classifier of this epoch, then the state to resume from.
        let finished_epoch = progress.batch >= batches_per_epoch;
        if finished_epoch {
            progress.epoch += 1;
            progress.batch = 0;
        }
        if let Some(f) = &flyp {
            f.rebuild_head(&classifier, |done, total| observer.head_progress(done, total))?;
        }
        let mut epoch_classifier = classifier.clone();
        epoch_classifier.meta.extra.insert(
            "train".into(),
            train_record(&config, &progress, &device, serde_json::json!({ "epoch": epoch + 1 })),
        );
        epoch_classifier.save(&run.out_dir.join(format!("epoch_{}.safetensors", epoch + 1)))?;
        state::save(&run.out_dir, &classifier, &extra, &optimizer, &progress)?;
        let mut evaluations = Vec::new();
        for (name, dataset) in run.evals {
            evaluations.push(evaluate(&classifier, name, dataset, &EvalOptions::default(), |_| {})?);
        }
        if !evaluations.is_empty() {
            let record = ResultsFile::record(&format!("epoch_{}", epoch + 1), None, &evaluations);
            let results = ResultsFile::new(&run.out_dir.join(RESULTS_FILE));
            results
                .append(&record)
                .map_err(|e| Error::Io { path: results.path().to_path_buf(), source: e })?;
        }
        observer.epoch_end(epoch, &evaluations);
        if !finished_epoch {
            break; // max_steps reached mid-epoch
        }
    }

    let mut finetuned = classifier.clone();
    finetuned.meta.extra.insert(
        "train".into(),
        train_record(&config, &progress, &device, serde_json::json!({ "epochs": progress.epoch })),
    );
    let path = run.out_dir.join(FINETUNED_FILE);
    finetuned.save(&path)?;
    Ok(TrainSummary {
        steps: progress.step,
        epochs: progress.epoch,
        last_loss,
        seconds: start.elapsed().as_secs_f64(),
        images,
        finetuned: path,
    })
}

/// The `wise.train` metadata of a checkpoint: the config, the step, `epoch_info`, for a
/// contrastive run the CLIP whose text tower gave the head, and `"cpu_products": "bf16"`
/// when this process trains on a CPU with the blocks' products in bf16.
fn train_record(
    config: &TrainConfig,
    progress: &Progress,
    device: &Device,
    epoch_info: serde_json::Value,
) -> String {
    let mut record = serde_json::json!({ "config": config, "step": progress.step });
    if let (Some(m), serde_json::Value::Object(info)) = (record.as_object_mut(), epoch_info) {
        m.extend(info);
        if device.is_cpu() && wise_clip::in_bf16_mode() {
            m.insert("cpu_products".into(), "bf16".into());
        }
        if let Some(clip) = &progress.clip {
            m.insert("clip".into(), clip.clone().into());
        }
    }
    record.to_string()
}

/// The training labels must be the head's classes, in the head's order.
fn check_classes(classifier: &ImageClassifier, train: &Dataset) -> Result<()> {
    let head = &classifier.meta.class_names;
    if head == &train.class_names {
        return Ok(());
    }
    let missing: Vec<&str> =
        train.class_names.iter().filter(|c| !head.contains(c)).map(String::as_str).collect();
    let unused: Vec<&str> =
        head.iter().filter(|c| !train.class_names.contains(c)).map(String::as_str).collect();
    Err(Error::Config(format!(
        "the training data's classes do not match the classifier's head: {}{}{}",
        if missing.is_empty() { String::new() } else { format!("not in the head: {}; ", missing.join(", ")) },
        if unused.is_empty() { String::new() } else { format!("not in the data: {}; ", unused.join(", ")) },
        if missing.is_empty() && unused.is_empty() { "same classes in a different order" } else { "" }
    )))
}
