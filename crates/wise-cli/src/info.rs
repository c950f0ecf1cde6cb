//! `wise info`: what a model is, without running it: a CLIP, or a classifier checkpoint of
//! `wise zeroshot`, `train` or `ensemble`.

use std::path::Path;

use anyhow::Context;
use candle_core::Device;
use clap::Args;
use wise_clip::{ClipModel, ModelSource, VisionConfig};
use wise_zeroshot::ImageClassifier;

#[derive(Args)]
pub struct InfoArgs {
    /// HF model directory, open_clip .safetensors file, hub id, or classifier checkpoint.
    #[arg(long)]
    model: String,
}

pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    let path = Path::new(&args.model);
    if ImageClassifier::is_checkpoint(path) {
        return classifier_info(path);
    }
    let source =
        ModelSource::resolve(&args.model).with_context(|| format!("loading model '{}'", args.model))?;
    let model = ClipModel::load(&source, &Device::Cpu)?;
    let (c, v, t) = (&source.config, &source.config.vision_config, &source.config.text_config);
    let (nv, nt, other) = model.parameter_counts();
    println!("model       {}", source.spec);
    println!("layout      {:?} ({})", source.layout, source.weights_path.display());
    println!("vision      {}", describe_tower(v));
    println!(
        "text        {} tokens, vocab {}, width {}, {} layers, {} heads, mlp {}, {:?}, eos id {}",
        t.max_position_embeddings,
        t.vocab_size,
        t.hidden_size,
        t.num_hidden_layers,
        t.num_attention_heads,
        t.intermediate_size,
        t.hidden_act,
        t.eos_token_id
    );
    println!(
        "embedding   {} dims, logit scale {:.4}",
        c.projection_dim,
        model.logit_scale.to_scalar::<f32>()?.exp()
    );
    println!(
        "parameters  vision {} | text {} | other {} | total {}",
        human(nv),
        human(nt),
        other,
        human(nv + nt + other)
    );
    Ok(())
}

/// A classifier checkpoint: its classes, where it came from, its tower, head and
/// preprocessing, and the `wise.*` entries its making left (α, training run, inputs).
fn classifier_info(path: &Path) -> anyhow::Result<()> {
    let classifier = ImageClassifier::load(path, &Device::Cpu)?;
    let meta = &classifier.meta;
    let names = &meta.class_names;
    let shown: Vec<&str> = names.iter().take(10).map(String::as_str).collect();
    let more = if names.len() > shown.len() {
        format!(", … ({} more)", names.len() - shown.len())
    } else {
        String::new()
    };
    let head: usize = classifier
        .params
        .iter()
        .filter(|(n, _)| n.starts_with("classification_head."))
        .map(|(_, v)| v.elem_count())
        .sum();
    let all: usize = classifier.params.values().map(|v| v.elem_count()).sum();
    let p = &meta.preprocessing;
    println!("model       {} (wise classifier)", path.display());
    println!("source      {}", meta.source_model);
    println!("classes     {}: {}{more}", names.len(), shown.join(", "));
    println!("templates   {}", meta.templates.len());
    println!("vision      {}", describe_tower(&meta.vision_config));
    println!(
        "head        [{}, {}] on the L2-normalised {}-dim embedding",
        names.len(),
        meta.projection_dim,
        meta.projection_dim
    );
    println!("preprocess  {0}x{0} px, mean {1:?}, std {2:?}", p.image_size, p.mean, p.std);
    println!("parameters  vision {} | head {} | total {}", human(all - head), human(head), human(all));
    for (key, value) in &meta.extra {
        let value: String = value.chars().take(160).collect();
        println!("{key:<11} {value}");
    }
    Ok(())
}

fn describe_tower(v: &VisionConfig) -> String {
    format!(
        "ViT {}x{} px, patch {}, width {}, {} layers, {} heads, mlp {}, {:?}, eps {}",
        v.image_size,
        v.image_size,
        v.patch_size,
        v.hidden_size,
        v.num_hidden_layers,
        v.num_attention_heads,
        v.intermediate_size,
        v.hidden_act,
        v.layer_norm_eps
    )
}

fn human(n: usize) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}
