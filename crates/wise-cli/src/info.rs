//! `wise info`: what a model is, without running it.

use anyhow::Context;
use candle_core::Device;
use clap::Args;
use wise_clip::{ClipModel, ModelSource};

#[derive(Args)]
pub struct InfoArgs {
    /// HF model directory, open_clip .safetensors file, or hub id.
    #[arg(long)]
    model: String,
}

pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    let source =
        ModelSource::resolve(&args.model).with_context(|| format!("loading model '{}'", args.model))?;
    let model = ClipModel::load(&source, &Device::Cpu)?;
    let (c, v, t) = (&source.config, &source.config.vision_config, &source.config.text_config);
    let (nv, nt, other) = model.parameter_counts();
    println!("model       {}", source.spec);
    println!("layout      {:?} ({})", source.layout, source.weights_path.display());
    println!(
        "vision      ViT {}x{} px, patch {}, width {}, {} layers, {} heads, mlp {}, {:?}, eps {}",
        v.image_size,
        v.image_size,
        v.patch_size,
        v.hidden_size,
        v.num_hidden_layers,
        v.num_attention_heads,
        v.intermediate_size,
        v.hidden_act,
        v.layer_norm_eps
    );
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

fn human(n: usize) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}
