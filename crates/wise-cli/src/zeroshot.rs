//! `wise zeroshot`: a CLIP and class names in, the zero-shot image classifier out.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use wise_clip::ModelSource;
use wise_data::Dataset;
use wise_zeroshot::{zeroshot_classifier_with_progress, Templates};

#[derive(Args)]
pub struct ZeroshotArgs {
    /// HF model directory, open_clip .safetensors file, or hub id.
    #[arg(long)]
    model: String,
    /// Class names: a classnames.txt (one per line, or `key<TAB>name`), or a dataset
    /// folder whose class names to use.
    #[arg(long)]
    classes: PathBuf,
    /// `openai_imagenet` (CLIP's 80 ImageNet prompts), `simple` ("a photo of a {}."), or a
    /// file with one template per line containing `{}`.
    #[arg(long, default_value = "openai_imagenet")]
    templates: String,
    /// Output classifier checkpoint (.safetensors).
    #[arg(long)]
    out: PathBuf,
    /// cpu, cuda[:N] or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(args: ZeroshotArgs) -> anyhow::Result<()> {
    let device = wise_clip::parse_device(&args.device)?;
    let class_names = Dataset::class_names_of(&args.classes)?;
    let templates = Templates::resolve(&args.templates)?;
    let source =
        ModelSource::resolve(&args.model).with_context(|| format!("loading model '{}'", args.model))?;
    let bar = ProgressBar::new((class_names.len() * templates.items.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("zero-shot head {bar:30} {pos}/{len} prompts {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let classifier =
        zeroshot_classifier_with_progress(&source, &class_names, &templates, &device, |done, _| {
            bar.set_position(done as u64)
        })?;
    bar.finish_and_clear();
    classifier.save(&args.out)?;
    eprintln!(
        "wrote {}: {} classes × {} templates ({}), head [{}, {}]",
        args.out.display(),
        class_names.len(),
        templates.items.len(),
        templates.name,
        class_names.len(),
        source.config.projection_dim
    );
    Ok(())
}
