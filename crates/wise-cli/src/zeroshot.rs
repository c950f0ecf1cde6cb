//! `wise zeroshot`: a CLIP and class names in, the zero-shot image classifier out.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use wise_clip::ModelSource;
use wise_data::Dataset;
use wise_train::Observer;
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
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(args: ZeroshotArgs) -> anyhow::Result<()> {
    let device = wise_clip::parse_device(&args.device)?;
    let class_names = Dataset::class_names_of(&args.classes)?;
    let templates = Templates::resolve(&args.templates)?;
    let source =
        ModelSource::resolve(&args.model).with_context(|| format!("loading model '{}'", args.model))?;
    let mut bars = crate::train::Bars::default();
    let progress = |done, total| bars.head_progress(done, total);
    let classifier = zeroshot_classifier_with_progress(&source, &class_names, &templates, &device, progress)?;
    bars.finish();
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
