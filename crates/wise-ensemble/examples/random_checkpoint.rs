//! Writes a random CLIP checkpoint of a named architecture (HF `CLIPModel` tensor names and
//! shapes), for benchmarking merges at real model sizes without real weights:
//!
//! ```sh
//! cargo run --release -p wise-ensemble --example random_checkpoint -- \
//!     --preset ViT-L/14 --seed 1 --out /var/tmp/a.safetensors [--dtype f32|f16|bf16]
//! ```
//!
//! ViT-L/14 in f32 is 1.71 GB (427.6 M parameters). Values come from a seeded SplitMix64
//! stream (uniform in ±0.05): every byte differs between seeds, and the file is streamed
//! with wise-ensemble's `StreamingWriter`, so the generator itself needs a few MB of memory.

use std::collections::BTreeMap;
use std::path::PathBuf;

use safetensors::Dtype;
use wise_clip::ClipConfig;
use wise_ensemble::mix::encode;
use wise_ensemble::writer::{StreamingWriter, TensorSpec};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let preset = get("--preset").unwrap_or_else(|| "ViT-L/14".into());
    let seed: u64 =
        get("--seed").unwrap_or_else(|| "0".into()).parse().map_err(|e| format!("--seed: {e}"))?;
    let out = PathBuf::from(get("--out").ok_or("--out PATH is required")?);
    let dtype = match get("--dtype").as_deref().unwrap_or("f32") {
        "f32" => Dtype::F32,
        "f16" => Dtype::F16,
        "bf16" => Dtype::BF16,
        other => return Err(format!("--dtype {other}: expected f32, f16 or bf16")),
    };
    let config = ClipConfig::preset(&preset).ok_or(format!("unknown preset '{preset}'"))?;
    let tensors = clip_tensors(&config, dtype);
    let params: usize = tensors.iter().map(|(_, _, s)| s.iter().product::<usize>()).sum();
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let mut writer = StreamingWriter::create(&out, tensors.clone(), &meta).map_err(|e| e.to_string())?;
    let mut rng = SplitMix64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5151);
    let (mut values, mut bytes) = (Vec::new(), Vec::new());
    for (_, _, shape) in &tensors {
        let mut left: usize = shape.iter().product();
        while left > 0 {
            let n = left.min(1 << 20);
            values.clear();
            values.extend((0..n).map(|_| rng.uniform() * 0.1 - 0.05));
            encode(dtype, &values, &mut bytes);
            writer.write(&bytes).map_err(|e| e.to_string())?;
            left -= n;
        }
    }
    writer.finish(None).map_err(|e| e.to_string())?;
    eprintln!(
        "wrote {}: {preset}, {} tensors, {:.1} M parameters, {dtype:?}",
        out.display(),
        tensors.len(),
        params as f64 / 1e6
    );
    Ok(())
}

/// HF `CLIPModel` parameter names and shapes (what `save_pretrained` writes).
fn clip_tensors(c: &ClipConfig, dtype: Dtype) -> Vec<TensorSpec> {
    let mut t: Vec<TensorSpec> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>| t.push((name, dtype, shape));
    let v = &c.vision_config;
    let (h, tx) = (v.hidden_size, &c.text_config);
    let patches = (v.image_size / v.patch_size).pow(2);
    add("vision_model.embeddings.class_embedding".into(), vec![h]);
    add(
        "vision_model.embeddings.patch_embedding.weight".into(),
        vec![h, v.num_channels, v.patch_size, v.patch_size],
    );
    add("vision_model.embeddings.position_embedding.weight".into(), vec![patches + 1, h]);
    add("text_model.embeddings.token_embedding.weight".into(), vec![tx.vocab_size, tx.hidden_size]);
    add(
        "text_model.embeddings.position_embedding.weight".into(),
        vec![tx.max_position_embeddings, tx.hidden_size],
    );
    for (tower, width, inter, layers) in [
        ("vision_model", h, v.intermediate_size, v.num_hidden_layers),
        ("text_model", tx.hidden_size, tx.intermediate_size, tx.num_hidden_layers),
    ] {
        for l in 0..layers {
            let p = format!("{tower}.encoder.layers.{l}");
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                add(format!("{p}.self_attn.{proj}.weight"), vec![width, width]);
                add(format!("{p}.self_attn.{proj}.bias"), vec![width]);
            }
            for norm in ["layer_norm1", "layer_norm2"] {
                add(format!("{p}.{norm}.weight"), vec![width]);
                add(format!("{p}.{norm}.bias"), vec![width]);
            }
            add(format!("{p}.mlp.fc1.weight"), vec![inter, width]);
            add(format!("{p}.mlp.fc1.bias"), vec![inter]);
            add(format!("{p}.mlp.fc2.weight"), vec![width, inter]);
            add(format!("{p}.mlp.fc2.bias"), vec![width]);
        }
    }
    for norm in ["vision_model.pre_layrnorm", "vision_model.post_layernorm", "text_model.final_layer_norm"] {
        let width = if norm.starts_with("vision") { h } else { tx.hidden_size };
        add(format!("{norm}.weight"), vec![width]);
        add(format!("{norm}.bias"), vec![width]);
    }
    add("visual_projection.weight".into(), vec![c.projection_dim, h]);
    add("text_projection.weight".into(), vec![c.projection_dim, tx.hidden_size]);
    add("logit_scale".into(), vec![]);
    t
}

/// SplitMix64: a tiny, fast, well-mixed generator (Steele et al., 2014).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 bits.
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}
