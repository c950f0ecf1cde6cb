//! `wise pretrain`: a CLIP trained from scratch on captioned images, written as an HF
//! model directory that every other command takes as `--model`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use wise_train::pretrain::{load_captioned, pretrain, ArchSpec, PretrainConfig};

#[derive(Args)]
pub struct PretrainArgs {
    /// Captioned images: ImageFolders (captions from --captions templates and the class
    /// names) or `path,caption` CSV manifests. Repeat to combine sources.
    #[arg(long, required = true)]
    data: Vec<PathBuf>,
    /// Caption templates for ImageFolder data: a named set or a file, one `{}` each.
    #[arg(long, default_value = "simple")]
    captions: String,
    /// Output model directory (config.json, model.safetensors, tokenizer, preprocessing).
    #[arg(long)]
    out: PathBuf,
    /// Start from a named architecture (ViT-B/32, ViT-B/16, ViT-L/14, ViT-L/14-336) instead
    /// of the small one the flags below describe.
    #[arg(long)]
    preset: Option<String>,
    #[arg(long, default_value_t = ArchSpec::default().image_size)]
    image_size: usize,
    #[arg(long, default_value_t = ArchSpec::default().patch_size)]
    patch_size: usize,
    #[arg(long, default_value_t = ArchSpec::default().width)]
    width: usize,
    #[arg(long, default_value_t = ArchSpec::default().layers)]
    layers: usize,
    #[arg(long, default_value_t = ArchSpec::default().heads)]
    heads: usize,
    #[arg(long, default_value_t = ArchSpec::default().text_width)]
    text_width: usize,
    #[arg(long, default_value_t = ArchSpec::default().text_layers)]
    text_layers: usize,
    #[arg(long, default_value_t = ArchSpec::default().text_heads)]
    text_heads: usize,
    #[arg(long, default_value_t = ArchSpec::default().embed_dim)]
    embed_dim: usize,
    #[arg(long, default_value_t = ArchSpec::default().context_length)]
    context_length: usize,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 0.1)]
    wd: f64,
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Eval preprocessing instead of RandomResizedCrop.
    #[arg(long)]
    no_augment: bool,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(args: PretrainArgs) -> anyhow::Result<()> {
    let device = wise_clip::parse_device(&args.device)?;
    let architecture = match &args.preset {
        Some(name) => wise_clip::ClipConfig::preset(name).with_context(|| {
            format!("--preset '{name}': known presets are {}", wise_clip::ClipConfig::PRESETS.join(", "))
        })?,
        None => ArchSpec {
            image_size: args.image_size,
            patch_size: args.patch_size,
            width: args.width,
            layers: args.layers,
            heads: args.heads,
            text_width: args.text_width,
            text_layers: args.text_layers,
            text_heads: args.text_heads,
            embed_dim: args.embed_dim,
            context_length: args.context_length,
        }
        .to_config(),
    };
    let (data, captions) = load_captioned(&args.data, &args.captions)?;
    let config = PretrainConfig {
        architecture,
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        wd: args.wd,
        warmup: args.warmup,
        seed: args.seed,
        augment: !args.no_augment,
    };
    let mut bars = crate::train::Bars::default();
    let summary = pretrain(&config, &data, &captions, &args.out, &device, &mut bars)
        .with_context(|| format!("pretraining into {}", args.out.display()))?;
    bars.finish();
    println!(
        "pretrained {} steps on {} images in {:.1}s, last loss {:.4}: {}",
        summary.steps,
        data.len(),
        summary.seconds,
        summary.last_loss,
        summary.out.display()
    );
    Ok(())
}
