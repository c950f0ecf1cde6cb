//! `wise bench`: how fast this machine runs a CLIP-shaped classifier, for inference or for
//! fine-tuning steps, on random weights and inputs.
//!
//! It times exactly what `wise eval` and `wise train` run: the image tower (HF's
//! `image_embeds`) in the compute dtype of the device, one training step of wise-ft's
//! recipe (forward, cross-entropy, backward, global-norm clipping, AdamW) on random pixels or
//! fed by `wise train`'s loader from a real dataset (shuffled, augmented, decoded ahead), the
//! whole of `wise eval` on a real dataset (decode, resize, model), or the data path alone
//! (decode, resize, normalise, no model), the zero-shot head (the text tower over every class ×
//! template prompt), or the machine's fp32 matrix-product ceiling (`sgemm`: the model's
//! product shapes and a 2048³ one through wise's BLAS path, for the gemm-bound limit).
//! One JSON line goes to stdout in the shape of `scripts/bench_torch.py`'s, so
//! `scripts/bench.sh` and `scripts/gpu-check.sh` can put the two side by side. Infer and
//! train lines carry the model's FLOPs per image (`model_gflop_per_img`, every token of
//! every layer, as PyTorch computes them), so a run's GFLOP/s and share of the ceiling
//! follow from them.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::{Device, Tensor};
use clap::{Args, ValueEnum};
use wise_clip::{compute_dtype, parse_device, ClipConfig, ClipModel, ClipTokenizer, ImagePreprocessor};
use wise_data::{Batch, Batches, Dataset, Loader};
use wise_eval::{evaluate, EvalOptions};
use wise_train::loss::cross_entropy;
use wise_train::memory::{self, StepMemory};
use wise_train::optim::{clip_scale, grad_norm, AdamW, AdamWConfig};
use wise_zeroshot::{zeroshot_head, ClassifierMeta, ImageClassifier, Templates, PROMPT_BATCH};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// The image tower forward (image embeddings).
    Infer,
    /// One optimizer step of the whole classifier (tower + head): on random pixels, or with
    /// `--data` on the batches `wise train` makes of it (shuffled, augmented, full batches).
    Train,
    /// `wise eval` of a random classifier over `--data` (loader and model together).
    Eval,
    /// The eval data path alone over `--data`: decode, resize, crop, normalise (with
    /// `--augment` the training transform: a random resized crop).
    Preprocess,
    /// The best fp32 matrix-product rate through wise's BLAS path, on the model's products
    /// at `--batch-size` images and on 2048³, and through wise's own kernel from packed
    /// weights (CPUs with AVX-512 or AVX2); also the attention's per-head products (a head per
    /// thread). In bf16 (`WISE_CPU_BF16=1`) the same products in bf16.
    Sgemm,
    /// The zero-shot head: every `--classnames` × `--templates` prompt through the text
    /// tower, `--batch-size` prompts at a time (rates in prompts, not images).
    Zeroshot,
}

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value_t = Mode::Infer)]
    mode: Mode,
    /// Model shape: ViT-B/32, ViT-B/16, ViT-L/14 or ViT-L/14-336.
    #[arg(long, default_value = "ViT-B/32")]
    preset: String,
    /// Images a batch, or prompts for `zeroshot` (default 32; `zeroshot`: as `wise zeroshot`).
    #[arg(long = "batch-size")]
    batch: Option<usize>,
    /// `--batch-size` or the mode's default.
    #[arg(skip)]
    batch_size: usize,
    /// Classes of the head (train mode); ImageNet's 1000 by default.
    #[arg(long, default_value_t = 1000)]
    classes: usize,
    /// Untimed iterations first (allocations, kernel compilation, caches).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    #[arg(long, default_value_t = 5)]
    iters: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, cuda, cuda:N or metal. The compute dtype is the device's (`WISE_COMPUTE_DTYPE` overrides).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Dataset for `eval`, `preprocess` and (optional) `train`: an ImageFolder or CSV manifest.
    #[arg(long)]
    data: Option<PathBuf>,
    /// `preprocess`: the training transform (random resized crop, as `wise train` augments)
    /// instead of the eval one.
    #[arg(long)]
    augment: bool,
    /// Use this many images of `--data`, evenly spread over it (0: all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Class names for `zeroshot`, as `wise zeroshot --classes` reads them: a classnames.txt
    /// or a dataset folder (default: `--classes` names `class N`).
    #[arg(long)]
    classnames: Option<PathBuf>,
    /// Prompt templates for `zeroshot`: a named set or a file.
    #[arg(long, default_value = "openai_imagenet")]
    templates: String,
}

pub fn run(mut args: BenchArgs) -> anyhow::Result<()> {
    let default_batch = if args.mode == Mode::Zeroshot { PROMPT_BATCH } else { 32 };
    args.batch_size = args.batch.unwrap_or(default_batch);
    anyhow::ensure!(args.batch_size > 0 && args.iters > 0, "--batch-size and --iters must be at least 1");
    anyhow::ensure!(args.classes > 0, "--classes must be at least 1");
    let config = ClipConfig::preset(&args.preset).with_context(|| {
        format!("unknown --preset {}: expected ViT-B/32, ViT-B/16, ViT-L/14 or ViT-L/14-336", args.preset)
    })?;
    let device = parse_device(&args.device)?;
    let dtype = compute_dtype(&device);
    let vc = &config.vision_config;
    if args.mode == Mode::Sgemm {
        return sgemm_ceiling(&args, vc, &device);
    }
    if args.mode == Mode::Zeroshot {
        return zeroshot_head_rate(&args, &config, &device);
    }
    anyhow::ensure!(!args.augment || args.mode == Mode::Preprocess, "--augment is for --mode preprocess");
    let dataset = match (&args.data, args.mode) {
        (Some(path), Mode::Eval | Mode::Preprocess | Mode::Train) => {
            Some(subset(Dataset::open(path, None)?, args.limit))
        }
        (None, Mode::Eval | Mode::Preprocess) => anyhow::bail!("--mode eval and preprocess need --data"),
        (Some(_), _) => anyhow::bail!("--data is for --mode eval, preprocess and train"),
        (None, _) => None,
    };
    let class_names = match &dataset {
        Some(d) => d.class_names.clone(),
        None => (0..args.classes).map(|c| format!("class {c}")).collect(),
    };
    let meta = ClassifierMeta {
        class_names,
        templates: Vec::new(),
        source_model: format!("random {}", args.preset),
        vision_config: vc.clone(),
        projection_dim: config.projection_dim,
        preprocessing: (&ImagePreprocessor::new(vc.image_size)).into(),
        extra: Default::default(),
    };
    let classifier = ImageClassifier::fresh(meta, args.seed, &device)?.with_compute_dtype(dtype);
    let size = vc.image_size;
    let pixels = Tensor::randn(0f32, 1f32, (args.batch_size, vc.num_channels, size, size), &device)?;
    let labels: Vec<u32> = (0..args.batch_size).map(|i| (i * 7919 % args.classes) as u32).collect();
    let labels = Tensor::new(labels, &device)?;

    // Train mode over `--data`: `wise train`'s batches, epoch after epoch.
    let mut train_batches = match (&dataset, args.mode) {
        (Some(d), Mode::Train) => Some(TrainBatches::new(
            Loader::new(d, classifier.preprocessor(), &device)
                .with_batch_size(args.batch_size)
                .with_drop_last(true),
            args.seed,
        )?),
        _ => None,
    };

    let params = classifier.params.clone();
    // `wise train`'s memory check: a step that cannot fit is refused before it starts.
    let step_memory = (args.mode == Mode::Train).then(|| {
        let count = params.values().map(|v| v.elem_count()).sum();
        StepMemory::image_classifier(&device, vc, count, count, args.batch_size, 1)
    });
    if let Some(step) = &step_memory {
        let checked = memory::check_before_training(step, args.batch_size, &device)
            .context("wise train would refuse this step (WISE_MEMORY_CHECK=off benches it anyway)")?;
        if let Some(warning) = checked {
            eprintln!("warning: {warning}");
        }
    }
    // Only train mode needs the optimizer's moments (2 × the parameters).
    let mut optimizer =
        if args.mode == Mode::Train { Some(AdamW::new(AdamWConfig::default(), &params)?) } else { None };
    let mut step = |phases: &mut [f64; 5]| -> anyhow::Result<()> {
        match args.mode {
            Mode::Eval => {
                let dataset = dataset.as_ref().expect("checked above");
                let options = EvalOptions { batch_size: args.batch_size, ..EvalOptions::default() };
                let result = evaluate(&classifier, "bench", dataset, &options, |_| {})?;
                anyhow::ensure!(result.metrics.n == dataset.len(), "evaluated {} images", result.metrics.n);
            }
            Mode::Preprocess => {
                let dataset = dataset.as_ref().expect("checked above");
                let loader =
                    Loader::new(dataset, classifier.preprocessor(), &device).with_batch_size(args.batch_size);
                let batches = if args.augment { loader.train(args.seed, 0)? } else { loader.eval()? };
                let mut images = 0;
                for batch in batches {
                    images += batch?.len();
                }
                anyhow::ensure!(images == dataset.len(), "prepared {images} images");
            }
            Mode::Infer => {
                let pixels = pixels.to_dtype(dtype)?;
                let features = wise_clip::inference_mode(|| classifier.encoder.forward(&pixels))?;
                anyhow::ensure!(features.dims() == [args.batch_size, config.projection_dim]);
            }
            Mode::Train => {
                // Phase times (waiting for the batch, forward, backward, clipping, optimizer),
                // exact on CPU; on an accelerator they only say where work was queued, unless
                // WISE_PROFILE is set: then each phase waits for the device.
                let mut clock = Instant::now();
                let mut lap = |i: usize| -> candle_core::Result<()> {
                    if wise_clip::profile::enabled() {
                        device.synchronize()?;
                    }
                    phases[i] += clock.elapsed().as_secs_f64();
                    clock = Instant::now();
                    Ok(())
                };
                // Waiting for the loader counts: it is part of what a training step costs.
                let (pixels, labels) = match train_batches.as_mut() {
                    Some(batches) => {
                        let batch = batches.next()?;
                        (batch.pixels.clone(), batch.labels_tensor(&device)?)
                    }
                    None => (pixels.clone(), labels.clone()),
                };
                lap(0)?;
                let loss = cross_entropy(&classifier.logits(&pixels)?, &labels, 0.0)?;
                let value = loss.to_scalar::<f32>()?;
                anyhow::ensure!(value.is_finite(), "the loss is {value}");
                lap(1)?;
                let grads = wise_clip::backward(&loss)?;
                lap(2)?;
                let scale = clip_scale(grad_norm(&params, &grads)?, 1.0);
                lap(3)?;
                optimizer.as_mut().expect("train mode").step(&params, &grads, 3e-5, scale)?;
                lap(4)?;
            }
            Mode::Sgemm | Mode::Zeroshot => unreachable!("returned before the classifier was made"),
        }
        // Accelerators queue work: wait for it, or the clock stops early.
        device.synchronize()?;
        Ok(())
    };
    let mut timed = || -> anyhow::Result<(Vec<f64>, [f64; 5])> {
        for _ in 0..args.warmup {
            step(&mut [0.0; 5])?;
        }
        wise_clip::profile::take();
        let (mut times, mut phases) = (Vec::with_capacity(args.iters), [0f64; 5]);
        for _ in 0..args.iters {
            let t0 = Instant::now();
            step(&mut phases)?;
            times.push(t0.elapsed().as_secs_f64());
        }
        Ok((times, phases))
    };
    // Forwards of fixed weights (not training): with bf16 products and small batches, each
    // weight is packed once for all the iterations, as `wise eval` does for a dataset.
    let (times, phases) = if args.mode == Mode::Train {
        // The advice `wise train` gives when an accelerator runs out of memory.
        timed().map_err(|e| {
            match memory::out_of_memory_advice(&format!("{e:#}"), args.batch_size, 1, false) {
                Some(explained) => anyhow::anyhow!(explained),
                None => e,
            }
        })?
    } else {
        wise_clip::frozen_weights(timed)?
    };

    // Images per timed iteration: a pass over the whole (limited) dataset, or a batch.
    let images = match (&dataset, args.mode) {
        (Some(d), Mode::Eval | Mode::Preprocess) => d.len(),
        _ => args.batch_size,
    };
    let total: f64 = times.iter().sum();
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    let mut line = serde_json::json!({
        "impl": "wise",
        "mode": args.mode.to_possible_value().expect("no skipped variants").get_name(),
        "preset": args.preset,
        "device": device_name(&device),
        "dtype": format!("{dtype:?}").to_lowercase(),
        "img_per_s": round3((images * args.iters) as f64 / total),
        "img_per_s_best": round3(images as f64 / best),
        "images": images,
        "batch_size": args.batch_size,
        "threads": candle_core::utils::get_num_threads(),
        "iters": args.iters,
        "iter_s": times.iter().map(|t| (t * 1e4).round() / 1e4).collect::<Vec<_>>(),
        "blas": wise_clip::matmul::blas_name(),
        "f32_kernel": wise_clip::f32_products::kernel_name(),
        // Products of more rows than this go to the BLAS (null: no limit, or no kernel).
        "f32_kernel_max_rows": Some(wise_clip::f32_products::max_rows()).filter(|r| (1..usize::MAX).contains(r)),
    });
    if bf16_products(&device) {
        line["products"] = serde_json::json!("bf16");
    }
    if let (Some(path), Some(d)) = (&args.data, &dataset) {
        line["data"] = serde_json::json!(path.display().to_string());
        line["data_images"] = serde_json::json!(d.len());
        if args.mode == Mode::Preprocess {
            line["transform"] = serde_json::json!(if args.augment { "train" } else { "eval" });
        }
    }
    let forward = vc.forward_flops(config.projection_dim);
    match args.mode {
        Mode::Infer => line["model_gflop_per_img"] = serde_json::json!(round3(forward / 1e9)),
        Mode::Train => {
            // Forward and backward (two products per forward one) of tower and head.
            let head = 2.0 * (config.projection_dim * classifier.meta.class_names.len()) as f64;
            line["model_gflop_per_img"] = serde_json::json!(round3(3.0 * (forward + head) / 1e9));
        }
        _ => {}
    }
    if let Some(step) = &step_memory {
        // What `wise train` plans for this step (less the loader, unless this bench has one;
        // on an accelerator the least it keeps), against the most this process held (in
        // RAM, or the accelerator's memory pool).
        let loader = if train_batches.is_some() { 0 } else { step.loader };
        line["memory_estimate_gb"] = serde_json::json!(round3((step.total() - loader) as f64 / 1e9));
        if let Some(peak) = memory::peak_resident_bytes().filter(|_| device.is_cpu()) {
            line["peak_rss_gb"] = serde_json::json!(round3(peak as f64 / 1e9));
        }
        if let Some(m) = wise_clip::device_memory(&device) {
            line["device_peak_gb"] = serde_json::json!(round3(m.peak as f64 / 1e9));
            line["device_memory_gb"] = serde_json::json!(round3(m.total as f64 / 1e9));
        }
    }
    if args.mode == Mode::Train {
        line["phase_s"] = serde_json::json!({
            "forward": round3(phases[1] / args.iters as f64),
            "backward": round3(phases[2] / args.iters as f64),
            "clip_grad_norm": round3(phases[3] / args.iters as f64),
            "optimizer": round3(phases[4] / args.iters as f64),
        });
        if train_batches.is_some() {
            // Waiting for the loader's next batch (and its copy to the device).
            line["phase_s"]["data"] = serde_json::json!(round3(phases[0] / args.iters as f64));
        }
    }
    if wise_clip::profile::enabled() {
        // Seconds per timed iteration in each part of the forward (WISE_PROFILE=1).
        let parts = wise_clip::profile::take().into_iter().map(|(part, _, seconds)| {
            (part.to_string(), serde_json::json!(round3(seconds / args.iters as f64)))
        });
        line["profile_s"] = serde_json::Value::Object(parts.collect());
    }
    println!("{line}");
    Ok(())
}

/// Whether the blocks' products run in bf16 (`WISE_CPU_BF16=1` on a CPU with AVX512_BF16).
fn bf16_products(device: &Device) -> bool {
    device.is_cpu() && wise_clip::in_bf16_mode()
}

/// `wise bench --mode sgemm`: each product a ViT block runs (q/k/v, out, fc1, fc2 over
/// batch × tokens rows) and a 2048³ one, through `wise_clip::matmul` as the model calls it
/// (the loaded BLAS, split over rayon's threads), and the block's products through wise's
/// f32 kernel from a packed weight (`packed …`, on CPUs with AVX-512 or AVX2); the best of `--iters`
/// runs of each after `--warmup`, in GFLOP/s, and the best of all (`gflops_best`).
fn sgemm_ceiling(args: &BenchArgs, vc: &wise_clip::VisionConfig, device: &Device) -> anyhow::Result<()> {
    let rows = args.batch_size * vc.num_positions();
    let (c, i) = (vc.hidden_size, vc.intermediate_size);
    let shapes = [(rows, c, 3 * c), (rows, c, c), (rows, c, i), (rows, i, c), (2048, 2048, 2048)];
    let mut rates = serde_json::Map::new();
    let mut best_of_all = 0f64;
    let mut record = |name: String, gflops: f64, ceiling: bool| {
        if ceiling {
            best_of_all = best_of_all.max(gflops);
        }
        rates.insert(name, serde_json::json!((gflops * 10.0).round() / 10.0));
    };
    for (m, k, n) in shapes {
        let a = Tensor::randn(0f32, 1.0, (m, k), device)?;
        let b = Tensor::randn(0f32, 1.0, (k, n), device)?;
        let gflops = best_rate(args, m * n * k, || {
            wise_clip::matmul::matmul(&a, &b)?;
            Ok(device.synchronize()?)
        })?;
        record(format!("{m}x{k}x{n}"), gflops, true);
    }
    // wise's own f32 kernel, from a weight packed once (what `frozen_weights` loops run, and
    // faster than a BLAS on the machines measured): part of the ceiling.
    if device.is_cpu() && !bf16_products(device) && wise_clip::f32_products::supported() {
        for &(m, k, n) in &shapes[..4] {
            let a = Tensor::randn(0f32, 1.0, (m, k), device)?.flatten_all()?.to_vec1::<f32>()?;
            let w = Tensor::randn(0f32, 1.0, (n, k), device)?.flatten_all()?.to_vec1::<f32>()?;
            let packed = wise_clip::f32_products::PackedF32::new(true, (n, k), (&w, k));
            let mut c = vec![0f32; m * n];
            let gflops = best_rate(args, m * n * k, || {
                wise_clip::f32_products::product_into(m, (&a, k), &packed, false, (&mut c, n));
                Ok(())
            })?;
            record(format!("packed {m}x{k}x{n}"), gflops, true);
        }
    }
    // The attention's products for one sequence, each head's `[T, 64]`·`[64, T]` (scores,
    // B transposed) and `[T, T]`·`[T, 64]` (values), as the fused block runs them: a head
    // per thread, not split. Not part of the ceiling (they are far from it).
    let (heads, t, d) = (c / 64, vc.num_positions(), 64);
    for (what, k, n, transposed) in [("scores", d, t, true), ("values", t, d, false)] {
        let a = Tensor::randn(0f32, 1.0, (heads, t, k), device)?;
        let b = Tensor::randn(0f32, 1.0, if transposed { (heads, n, k) } else { (heads, k, n) }, device)?;
        let b = if transposed { b.transpose(1, 2)? } else { b };
        let gflops = best_rate(args, heads * t * n * k, || {
            wise_clip::matmul::matmul(&a, &b)?;
            Ok(device.synchronize()?)
        })?;
        record(format!("{what} {heads}x{t}x{k}x{n}"), gflops, false);
    }
    let mut line = serde_json::json!({
        "impl": "wise",
        "mode": "sgemm",
        "device": device_name(device),
        "dtype": "f32",
        "gflops_best": (best_of_all * 10.0).round() / 10.0,
        "gflops": rates,
        "batch_size": args.batch_size,
        "threads": candle_core::utils::get_num_threads(),
        "iters": args.iters,
        "blas": wise_clip::matmul::blas_name(),
        "f32_kernel": wise_clip::f32_products::kernel_name(),
    });
    if bf16_products(device) {
        line["products"] = serde_json::json!("bf16");
    }
    println!("{line}");
    Ok(())
}

/// GFLOP/s of the fastest of `--iters` runs of `product` (`macs` multiply-adds) after
/// `--warmup` untimed ones.
fn best_rate(
    args: &BenchArgs,
    macs: usize,
    mut product: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let mut best = f64::INFINITY;
    for run in 0..args.warmup + args.iters {
        let t0 = Instant::now();
        product()?;
        if run >= args.warmup {
            best = best.min(t0.elapsed().as_secs_f64());
        }
    }
    Ok(2.0 * macs as f64 / best / 1e9)
}

/// `wise bench --mode zeroshot`: [`zeroshot_head`] of a random CLIP of the preset's shape
/// (its text tower: ViT-B/32's is 12 layers of width 512) for every class × template
/// prompt, tokenized to 77 ids as CLIP's tokenizer does; one iteration is the whole head.
fn zeroshot_head_rate(args: &BenchArgs, config: &ClipConfig, device: &Device) -> anyhow::Result<()> {
    let class_names = match &args.classnames {
        Some(path) => Dataset::class_names_of(path)?,
        None => (0..args.classes).map(|c| format!("class {c}")).collect(),
    };
    let templates = Templates::resolve(&args.templates)?;
    let tokenizer = ClipTokenizer::openai(config.text_config.max_position_embeddings)?;
    let model = ClipModel::fresh(config, args.seed, device)?.with_compute_dtype(compute_dtype(device));
    let prompts = class_names.len() * templates.items.len();
    let build = || -> anyhow::Result<()> {
        let head = zeroshot_head(&model, &tokenizer, &class_names, &templates, args.batch_size, |_, _| {})?;
        anyhow::ensure!(head.dims() == [class_names.len(), config.projection_dim]);
        Ok(())
    };
    for _ in 0..args.warmup {
        build()?;
    }
    let mut times = Vec::with_capacity(args.iters);
    for _ in 0..args.iters {
        let t0 = Instant::now();
        build()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    let total: f64 = times.iter().sum();
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    let mut line = serde_json::json!({
        "impl": "wise",
        "mode": "zeroshot",
        "preset": args.preset,
        "device": device_name(device),
        "dtype": format!("{:?}", compute_dtype(device)).to_lowercase(),
        "prompts_per_s": round3((prompts * args.iters) as f64 / total),
        "prompts_per_s_best": round3(prompts as f64 / best),
        "prompts": prompts,
        "classes": class_names.len(),
        "templates": templates.items.len(),
        "batch_size": args.batch_size,
        "threads": candle_core::utils::get_num_threads(),
        "iters": args.iters,
        "iter_s": times.iter().map(|t| (t * 1e4).round() / 1e4).collect::<Vec<_>>(),
        "blas": wise_clip::matmul::blas_name(),
        "f32_kernel": wise_clip::f32_products::kernel_name(),
    });
    if bf16_products(device) {
        line["products"] = serde_json::json!("bf16");
    }
    println!("{line}");
    Ok(())
}

/// `wise train`'s batches of a dataset, one epoch after another, for as long as asked.
struct TrainBatches {
    loader: Loader,
    seed: u64,
    epoch: u64,
    batches: Batches,
}

impl TrainBatches {
    fn new(loader: Loader, seed: u64) -> anyhow::Result<Self> {
        anyhow::ensure!(
            loader.num_batches() > 0,
            "--data has {} images, less than one batch of {}",
            loader.len(),
            loader.batch_size()
        );
        let batches = loader.train(seed, 0)?;
        Ok(Self { loader, seed, epoch: 0, batches })
    }

    fn next(&mut self) -> anyhow::Result<Batch> {
        loop {
            match self.batches.next() {
                Some(batch) => return Ok(batch?),
                None => {
                    self.epoch += 1;
                    self.batches = self.loader.train(self.seed, self.epoch)?;
                }
            }
        }
    }
}

/// `limit` samples spread evenly over the dataset (so every class is represented), or all.
fn subset(mut dataset: Dataset, limit: usize) -> Dataset {
    if limit > 0 && limit < dataset.samples.len() {
        let n = dataset.samples.len();
        dataset.samples = (0..limit).map(|i| dataset.samples[i * n / limit].clone()).collect();
    }
    dataset
}

fn device_name(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}
