//! `wise embed`: CLIP features of images and texts (HF `get_image_features` /
//! `get_text_features`), for inspection, retrieval, or checking a model against another
//! implementation; from a classifier checkpoint, its tower's image features and its logits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{DType, Tensor};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use wise_clip::preprocess::ImagePreprocessor;
use wise_clip::weights::save_safetensors_atomic;
use wise_clip::{ClipModel, ModelSource};
use wise_data::IMAGE_EXTENSIONS;
use wise_zeroshot::ImageClassifier;

#[derive(Args)]
pub struct EmbedArgs {
    /// HF model directory, open_clip .safetensors file, hub id, or classifier checkpoint
    /// (images only: its tower's features, and its logits).
    #[arg(long)]
    model: String,
    /// Image files or folders (folders are searched recursively, in sorted order).
    #[arg(long, num_args = 1..)]
    images: Vec<PathBuf>,
    /// A text file with one text per line.
    #[arg(long)]
    texts: Option<PathBuf>,
    /// Output .safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// Also store the preprocessed `pixel_values`.
    #[arg(long)]
    save_pixels: bool,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// What embeds: a CLIP (both towers), or a classifier (its tower and head).
enum Embedder {
    Clip(ClipModel, Box<ModelSource>),
    Classifier(ImageClassifier),
}

impl Embedder {
    fn preprocessor(&self) -> anyhow::Result<ImagePreprocessor> {
        Ok(match self {
            Embedder::Clip(_, source) => source.preprocessor()?,
            Embedder::Classifier(c) => c.preprocessor(),
        })
    }

    /// Image features, and a classifier's logits.
    fn images(&self, pixels: &Tensor) -> anyhow::Result<(Tensor, Option<Tensor>)> {
        Ok(match self {
            Embedder::Clip(model, _) => (model.image_features(pixels)?, None),
            Embedder::Classifier(c) => {
                let (features, logits) = c.features_and_logits(pixels)?;
                (features, Some(logits))
            }
        })
    }
}

pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    anyhow::ensure!(
        !args.images.is_empty() || args.texts.is_some(),
        "nothing to embed: give --images and/or --texts"
    );
    let device = wise_clip::parse_device(&args.device)?;
    let dtype = wise_clip::compute_dtype(&device);
    let mut meta = HashMap::new();
    let embedder = if ImageClassifier::is_checkpoint(Path::new(&args.model)) {
        anyhow::ensure!(
            args.texts.is_none(),
            "{}: a classifier has no text tower; --texts needs a CLIP",
            args.model
        );
        let classifier = ImageClassifier::load(Path::new(&args.model), &device)?.with_compute_dtype(dtype);
        meta.insert("model".to_string(), args.model.clone());
        meta.insert("class_names".to_string(), serde_json::to_string(&classifier.meta.class_names)?);
        Embedder::Classifier(classifier)
    } else {
        let source =
            ModelSource::resolve(&args.model).with_context(|| format!("loading model '{}'", args.model))?;
        let model = ClipModel::load(&source, &device)?.with_compute_dtype(dtype);
        meta.insert("model".to_string(), source.spec.clone());
        Embedder::Clip(model, Box::new(source))
    };

    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let images = expand_images(&args.images)?;
    if !images.is_empty() {
        let preprocessor = embedder.preprocessor()?;
        let bar = progress(images.len(), "images");
        let (mut embeds, mut logits, mut pixels) = (Vec::new(), Vec::new(), Vec::new());
        // Each weight packed once for all the images (bf16 products).
        wise_clip::frozen_weights(|| -> anyhow::Result<()> {
            for chunk in images.chunks(args.batch_size) {
                let batch = preprocessor.eval_files(chunk, &device)?;
                let (features, batch_logits) = wise_clip::inference_mode(|| embedder.images(&batch))?;
                embeds.push(features);
                logits.extend(batch_logits);
                if args.save_pixels {
                    pixels.push(batch.to_device(&candle_core::Device::Cpu)?);
                }
                bar.inc(chunk.len() as u64);
            }
            Ok(())
        })?;
        bar.finish_and_clear();
        tensors.push(("image_embeds".into(), Tensor::cat(&embeds, 0)?));
        if !logits.is_empty() {
            tensors.push(("logits".into(), Tensor::cat(&logits, 0)?));
        }
        if args.save_pixels {
            tensors.push(("pixel_values".into(), Tensor::cat(&pixels, 0)?));
        }
    }
    let mut texts = Vec::new();
    if let (Some(path), Embedder::Clip(model, source)) = (&args.texts, &embedder) {
        let content = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        texts = content.lines().map(str::to_string).collect();
        anyhow::ensure!(!texts.is_empty(), "{}: no texts (one per line)", path.display());
        let tokenizer = source.tokenizer()?;
        let ids = tokenizer.encode_batch(&texts)?;
        let bar = progress(texts.len(), "texts");
        let mut embeds = Vec::new();
        wise_clip::frozen_weights(|| -> anyhow::Result<()> {
            for chunk in ids.chunks(args.batch_size) {
                let ids = model.ids_tensor(chunk)?;
                embeds.push(wise_clip::inference_mode(|| model.text_features(&ids))?);
                bar.inc(chunk.len() as u64);
            }
            Ok(())
        })?;
        bar.finish_and_clear();
        tensors.push(("text_embeds".into(), Tensor::cat(&embeds, 0)?));
        tensors.push(("input_ids".into(), model.ids_tensor(&ids)?.to_dtype(DType::I64)?));
    }
    if let Embedder::Clip(model, _) = &embedder {
        tensors.push(("logit_scale".into(), model.logit_scale.as_tensor().clone()));
    }
    let tensors = tensors
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_device(&candle_core::Device::Cpu)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let names: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
    meta.insert("images".to_string(), serde_json::to_string(&names)?);
    meta.insert("texts".to_string(), serde_json::to_string(&texts)?);
    save_safetensors_atomic(&args.out, &tensors, Some(meta))?;
    eprintln!("wrote {} ({} images, {} texts)", args.out.display(), images.len(), texts.len());
    Ok(())
}

/// Files as given; folders expanded recursively to their image files, sorted by path.
fn expand_images(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found = Vec::new();
            collect_images(input, &mut found)?;
            found.sort();
            anyhow::ensure!(!found.is_empty(), "{}: no image files in this folder", input.display());
            out.extend(found);
        } else {
            anyhow::ensure!(input.exists(), "{}: no such file", input.display());
            out.push(input.clone());
        }
    }
    Ok(out)
}

fn collect_images(dir: &Path, found: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading folder {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_images(&path, found)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            found.push(path);
        }
    }
    Ok(())
}

fn progress(total: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!("{{bar:30}} {{pos}}/{{len}} {what} {{per_sec}} eta {{eta}}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if total <= 64 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}
