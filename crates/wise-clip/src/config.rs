//! CLIP hyper-parameters, read from (and written as) a Hugging Face `config.json`.
//!
//! Field names and defaults are HF's `CLIPTextConfig` / `CLIPVisionConfig`, so a hub
//! `config.json` deserialises as it is (unknown keys are ignored: HF configs carry many
//! fields that do not change the network) and a config we write loads in transformers.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The MLP non-linearity (`hidden_act`). OpenAI checkpoints use QuickGELU; most
/// open_clip/LAION ones use exact GELU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// Exact GELU, `x·Φ(x)` with erf (PyTorch `nn.GELU()`).
    #[serde(rename = "gelu")]
    Gelu,
    /// GELU's tanh approximation.
    #[serde(rename = "gelu_pytorch_tanh", alias = "gelu_new")]
    GeluTanh,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Context length: token sequences are padded/truncated to this.
    pub max_position_embeddings: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub bos_token_id: u32,
    /// HF's legacy configs say 2 here; the text tower then pools at `argmax(input_ids)`,
    /// which is the end-of-text token because it has the largest id.
    pub eos_token_id: u32,
    pub pad_token_id: u32,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            bos_token_id: 49406,
            eos_token_id: 49407,
            pad_token_id: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

impl VisionConfig {
    /// Patches per side; like a strided conv, trailing pixels that do not fill a patch are dropped.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens per image: the class token plus one per patch.
    pub fn num_positions(&self) -> usize {
        self.grid_size() * self.grid_size() + 1
    }

    /// Floating-point operations (2 per multiply-add) of the image tower's matrix products
    /// for one image, projected to `projection_dim`: the patch embedding, per layer the
    /// q/k/v, attention scores, attention-weighted values, out projection and MLP, and the
    /// projection. Every token of every layer counts, as PyTorch computes them (wise's
    /// pooled last block skips most of the last layer); elementwise work is left out.
    /// A training step costs three times this (the backward's two products per forward one).
    pub fn forward_flops(&self, projection_dim: usize) -> f64 {
        let (t, c, i) = (self.num_positions() as f64, self.hidden_size as f64, self.intermediate_size as f64);
        let patch = self.num_channels * self.patch_size * self.patch_size;
        let embed = (t - 1.0) * patch as f64 * c;
        // q, k, v and out: 4 c × c; scores and values: 2 t × c; fc1 and fc2: 2 c × i.
        let layer = t * (4.0 * c * c + 2.0 * t * c + 2.0 * c * i);
        2.0 * (embed + self.num_hidden_layers as f64 * layer + c * projection_dim as f64)
    }
}

/// Bounds on a config's sizes, far above any published CLIP (the largest, ViT-bigG/14:
/// width 1,664, MLP 8,192, 48 layers; images of 224 to 448 pixels; 49,408 tokens), so that
/// a corrupt or mistyped `config.json` is an error naming the field here, not an allocation
/// of terabytes or a loop of a trillion layers later.
const MAX_WIDTH: usize = 1 << 16;
const MAX_LAYERS: usize = 1 << 10;
const MAX_IMAGE_SIZE: usize = 1 << 13;
const MAX_CHANNELS: usize = 64;
const MAX_TOKENS: usize = 1 << 16;
const MAX_VOCAB: usize = 1 << 24;

/// `name`'s `value` within `min..=max`, or the message saying it is not.
fn in_range(name: &str, value: usize, min: usize, max: usize) -> std::result::Result<(), String> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!("{name} {value} is outside {min}..={max}"))
    }
}

/// A transformer's widths, depth, head count and LayerNorm epsilon, as both towers have them.
fn validate_encoder(
    (hidden, intermediate, layers, heads): (usize, usize, usize, usize),
    eps: f64,
) -> std::result::Result<(), String> {
    in_range("hidden_size", hidden, 1, MAX_WIDTH)?;
    in_range("intermediate_size", intermediate, 1, MAX_WIDTH)?;
    in_range("num_hidden_layers", layers, 0, MAX_LAYERS)?;
    if heads == 0 || hidden % heads != 0 {
        return Err(format!("hidden_size {hidden} is not a multiple of num_attention_heads {heads}"));
    }
    // A negative epsilon would give NaN for rows of constant activations, silently.
    if !(eps.is_finite() && eps > 0.0) {
        return Err(format!("layer_norm_eps {eps} is not a positive number"));
    }
    Ok(())
}

impl VisionConfig {
    /// The image tower's shape rules (see [`ClipConfig::validate`]).
    pub fn validate(&self) -> std::result::Result<(), String> {
        validate_encoder(
            (self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.num_attention_heads),
            self.layer_norm_eps,
        )?;
        in_range("num_channels", self.num_channels, 1, MAX_CHANNELS)?;
        in_range("image_size", self.image_size, 1, MAX_IMAGE_SIZE)?;
        if self.patch_size == 0 || self.patch_size > self.image_size {
            return Err(format!(
                "patch_size {} does not fit image_size {}",
                self.patch_size, self.image_size
            ));
        }
        Ok(())
    }
}

impl TextConfig {
    /// The text tower's shape rules (see [`ClipConfig::validate`]).
    pub fn validate(&self) -> std::result::Result<(), String> {
        validate_encoder(
            (self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.num_attention_heads),
            self.layer_norm_eps,
        )?;
        in_range("max_position_embeddings", self.max_position_embeddings, 1, MAX_TOKENS)?;
        in_range("vocab_size", self.vocab_size, 1, MAX_VOCAB)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    pub text_config: TextConfig,
    pub vision_config: VisionConfig,
    #[serde(default = "default_projection_dim")]
    pub projection_dim: usize,
    #[serde(default = "default_logit_scale")]
    pub logit_scale_init_value: f64,
}

fn default_projection_dim() -> usize {
    512
}

fn default_logit_scale() -> f64 {
    // ln(1/0.07), CLIP's initial temperature.
    2.6592
}

/// The file as HF writes it: the two tower configs plus bookkeeping fields we keep so
/// a written config loads in transformers (`model_type`, `architectures`).
#[derive(Deserialize)]
struct HfConfigFile {
    text_config: Option<TextConfig>,
    vision_config: Option<VisionConfig>,
    // Configs saved by transformers < 4.20 used these names.
    text_config_dict: Option<TextConfig>,
    vision_config_dict: Option<VisionConfig>,
    #[serde(default = "default_projection_dim")]
    projection_dim: usize,
    #[serde(default = "default_logit_scale")]
    logit_scale_init_value: f64,
}

impl ClipConfig {
    pub fn from_json_str(json: &str) -> std::result::Result<Self, String> {
        let file: HfConfigFile = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let text_config = file.text_config.or(file.text_config_dict).ok_or("no `text_config`")?;
        let vision_config = file.vision_config.or(file.vision_config_dict).ok_or("no `vision_config`")?;
        let config = ClipConfig {
            text_config,
            vision_config,
            projection_dim: file.projection_dim,
            logit_scale_init_value: file.logit_scale_init_value,
        };
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let json = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&json).map_err(|msg| Error::Config { path: path.to_path_buf(), msg })
    }

    /// The `config.json` a transformers `CLIPModel` loads.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("config serialises");
        let obj = value.as_object_mut().expect("config is an object");
        obj.insert("model_type".into(), "clip".into());
        obj.insert("architectures".into(), serde_json::json!(["CLIPModel"]));
        for (tower, model_type) in
            [("text_config", "clip_text_model"), ("vision_config", "clip_vision_model")]
        {
            if let Some(t) = obj.get_mut(tower).and_then(|t| t.as_object_mut()) {
                t.insert("model_type".into(), model_type.into());
                t.insert("projection_dim".into(), self.projection_dim.into());
            }
        }
        value
    }

    /// Shape rules a forward pass relies on, checked once with a readable message:
    /// [`VisionConfig::validate`], [`TextConfig::validate`] and the projection's width.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.vision_config.validate().map_err(|e| format!("vision_config: {e}"))?;
        self.text_config.validate().map_err(|e| format!("text_config: {e}"))?;
        in_range("projection_dim", self.projection_dim, 1, MAX_WIDTH)
    }

    /// Named architectures, for benchmarks and for building models from scratch.
    pub fn preset(name: &str) -> Option<Self> {
        let (vision, text_width, projection_dim) = match name {
            "ViT-B/32" => (vit(768, 12, 12, 224, 32), 512, 512),
            "ViT-B/16" => (vit(768, 12, 12, 224, 16), 512, 512),
            "ViT-L/14" => (vit(1024, 24, 16, 224, 14), 768, 768),
            "ViT-L/14-336" => (vit(1024, 24, 16, 336, 14), 768, 768),
            _ => return None,
        };
        let text_config = TextConfig {
            hidden_size: text_width,
            intermediate_size: 4 * text_width,
            num_attention_heads: text_width / 64,
            ..TextConfig::default()
        };
        Some(ClipConfig {
            text_config,
            vision_config: vision,
            projection_dim,
            logit_scale_init_value: default_logit_scale(),
        })
    }

    /// From an open_clip model config (`{"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"}`,
    /// the format of open_clip's `model_configs/*.json`).
    pub fn from_open_clip_json(json: &str) -> std::result::Result<Self, String> {
        #[derive(Deserialize)]
        struct OcVision {
            image_size: usize,
            layers: usize,
            width: usize,
            patch_size: usize,
            #[serde(default = "head_width")]
            head_width: usize,
            #[serde(default = "mlp_ratio")]
            mlp_ratio: f64,
        }
        #[derive(Deserialize)]
        struct OcText {
            #[serde(default = "context_length")]
            context_length: usize,
            #[serde(default = "vocab_size")]
            vocab_size: usize,
            width: usize,
            #[serde(default = "text_heads")]
            heads: usize,
            layers: usize,
            #[serde(default = "mlp_ratio")]
            mlp_ratio: f64,
        }
        #[derive(Deserialize)]
        struct Oc {
            embed_dim: usize,
            #[serde(default)]
            quick_gelu: bool,
            vision_cfg: OcVision,
            text_cfg: OcText,
        }
        fn head_width() -> usize {
            64
        }
        fn mlp_ratio() -> f64 {
            4.0
        }
        fn context_length() -> usize {
            77
        }
        fn vocab_size() -> usize {
            49408
        }
        fn text_heads() -> usize {
            8
        }
        let oc: Oc = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let act = if oc.quick_gelu { Activation::QuickGelu } else { Activation::Gelu };
        let (v, t) = (&oc.vision_cfg, &oc.text_cfg);
        let config = ClipConfig {
            vision_config: VisionConfig {
                hidden_size: v.width,
                intermediate_size: (v.width as f64 * v.mlp_ratio) as usize,
                num_hidden_layers: v.layers,
                num_attention_heads: v.width / v.head_width.max(1),
                image_size: v.image_size,
                patch_size: v.patch_size,
                hidden_act: act,
                ..VisionConfig::default()
            },
            text_config: open_clip_text(
                t.vocab_size,
                t.width,
                t.layers,
                t.heads,
                t.context_length,
                act,
                t.mlp_ratio,
            ),
            projection_dim: oc.embed_dim,
            logit_scale_init_value: default_logit_scale(),
        };
        config.validate()?;
        Ok(config)
    }

    /// Infers the architecture of an OpenAI/open_clip state dict from its tensor shapes,
    /// as OpenAI's `build_model` does: widths and depths are in the shapes, head counts are
    /// not (the convention is 64 channels per head), and the activation is QuickGELU as in
    /// every OpenAI checkpoint. Give an open_clip config for anything else.
    pub fn infer_open_clip(
        shape: impl Fn(&str) -> Option<Vec<usize>>,
        names: &[String],
    ) -> std::result::Result<Self, String> {
        // Dim `i` of tensor `k`: a file may hold any shapes, so none is indexed unchecked.
        let dim = |k: &str, i: usize| {
            let found = shape(k).ok_or_else(|| format!("no '{k}' to infer the architecture from"))?;
            found.get(i).copied().ok_or_else(|| format!("'{k}' has shape {found:?}, no dim {i}"))
        };
        let count_layers = |prefix: &str| {
            names
                .iter()
                .filter_map(|n| n.strip_prefix(prefix)?.split('.').next()?.parse::<usize>().ok())
                .max()
                .map_or(0, |m| m.saturating_add(1))
        };
        let (v_width, patch) = (dim("visual.conv1.weight", 0)?, dim("visual.conv1.weight", 2)?);
        let positions = dim("visual.positional_embedding", 0)?;
        let grid = (positions.saturating_sub(1) as f64).sqrt().round() as usize;
        let t_width = dim("ln_final.weight", 0)?;
        let config = ClipConfig {
            vision_config: VisionConfig {
                hidden_size: v_width,
                intermediate_size: dim("visual.transformer.resblocks.0.mlp.c_fc.weight", 0)?,
                num_hidden_layers: count_layers("visual.transformer.resblocks."),
                num_attention_heads: (v_width / 64).max(1),
                image_size: patch.saturating_mul(grid),
                patch_size: patch,
                ..VisionConfig::default()
            },
            text_config: TextConfig {
                intermediate_size: dim("transformer.resblocks.0.mlp.c_fc.weight", 0)?,
                ..open_clip_text(
                    dim("token_embedding.weight", 0)?,
                    t_width,
                    count_layers("transformer.resblocks."),
                    (t_width / 64).max(1),
                    dim("positional_embedding", 0)?,
                    Activation::QuickGelu,
                    4.0,
                )
            },
            projection_dim: dim("text_projection", 1)?,
            logit_scale_init_value: default_logit_scale(),
        };
        config.validate()?;
        Ok(config)
    }

    pub const PRESETS: [&'static str; 4] = ["ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14-336"];
}

/// open_clip's text tower: pooled at `argmax(ids)`, which is the end-of-text token because
/// it is the last (largest) id of the vocabulary.
fn open_clip_text(
    vocab: usize,
    width: usize,
    layers: usize,
    heads: usize,
    context: usize,
    act: Activation,
    mlp_ratio: f64,
) -> TextConfig {
    TextConfig {
        vocab_size: vocab,
        hidden_size: width,
        intermediate_size: (width as f64 * mlp_ratio) as usize,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        max_position_embeddings: context,
        hidden_act: act,
        layer_norm_eps: 1e-5,
        bos_token_id: vocab.saturating_sub(2) as u32,
        eos_token_id: vocab.saturating_sub(1) as u32,
        pad_token_id: 0,
    }
}

fn vit(width: usize, layers: usize, heads: usize, image_size: usize, patch: usize) -> VisionConfig {
    VisionConfig {
        hidden_size: width,
        intermediate_size: 4 * width,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        image_size,
        patch_size: patch,
        ..VisionConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the image towers' multiply-accumulate counts open_clip publishes (its model
    /// profile: ViT-B-32 4.4 GMACs, ViT-B-16 17.6, ViT-L-14 81.1 at 224 pixels).
    #[test]
    fn forward_flops_match_the_published_counts() {
        for (preset, gmacs) in [("ViT-B/32", 4.4), ("ViT-B/16", 17.6), ("ViT-L/14", 81.1)] {
            let config = ClipConfig::preset(preset).unwrap();
            let flops = config.vision_config.forward_flops(config.projection_dim);
            let rel = (flops / 2e9 - gmacs).abs() / gmacs;
            assert!(rel < 0.01, "{preset}: {:.2} GMACs, published {gmacs}", flops / 2e9);
        }
    }

    #[test]
    fn hub_style_config_with_defaults_and_unknown_keys() {
        let json = r#"{"projection_dim": 768, "architectures": ["CLIPModel"],
            "text_config": {"hidden_size": 768, "num_attention_heads": 12, "eos_token_id": 2,
                            "torch_dtype": "float32", "hidden_act": "gelu"},
            "vision_config": {"hidden_size": 1024, "num_hidden_layers": 24,
                              "num_attention_heads": 16, "patch_size": 14}}"#;
        let c = ClipConfig::from_json_str(json).unwrap();
        assert_eq!(c.text_config.hidden_size, 768);
        assert_eq!(c.text_config.intermediate_size, 2048);
        assert_eq!(c.text_config.hidden_act, Activation::Gelu);
        assert_eq!(c.text_config.eos_token_id, 2);
        assert_eq!(c.vision_config.grid_size(), 16);
        assert_eq!(c.vision_config.num_positions(), 257);
        assert_eq!(c.projection_dim, 768);
    }

    #[test]
    fn unknown_activation_is_named() {
        let json = r#"{"text_config": {"hidden_act": "swish"}, "vision_config": {}}"#;
        let err = ClipConfig::from_json_str(json).unwrap_err();
        assert!(err.contains("swish"), "{err}");
    }

    #[test]
    fn heads_must_divide_width() {
        let json = r#"{"text_config": {"hidden_size": 100, "num_attention_heads": 8}, "vision_config": {}}"#;
        let err = ClipConfig::from_json_str(json).unwrap_err();
        assert!(err.contains("num_attention_heads 8"), "{err}");
    }

    /// A corrupt or mistyped size is an error naming its tower and field before anything
    /// is allocated (these ran out of memory, or overflowed, as placeholders for the load).
    #[test]
    fn absurd_sizes_are_named() {
        for (tower, field, value, said) in [
            ("vision_config", "intermediate_size", "1000000000000", "vision_config: intermediate_size"),
            ("vision_config", "image_size", "1000000000000", "vision_config: image_size"),
            ("vision_config", "num_channels", "0", "vision_config: num_channels"),
            ("text_config", "num_hidden_layers", "1000000000000", "text_config: num_hidden_layers"),
            ("text_config", "max_position_embeddings", "0", "text_config: max_position_embeddings"),
            ("text_config", "vocab_size", "1000000000000", "text_config: vocab_size"),
            ("text_config", "layer_norm_eps", "-1e-5", "text_config: layer_norm_eps"),
        ] {
            let json = format!(
                r#"{{"{tower}": {{"{field}": {value}}}, "{}": {{}}}}"#,
                if tower == "text_config" { "vision_config" } else { "text_config" }
            );
            let err = ClipConfig::from_json_str(&json).unwrap_err();
            assert!(err.starts_with(said), "{field} = {value}: {err}");
        }
        let err =
            ClipConfig::from_json_str(r#"{"projection_dim": 0, "text_config": {}, "vision_config": {}}"#);
        assert!(err.unwrap_err().starts_with("projection_dim 0"));
    }

    /// An open_clip state dict's shapes are read, not indexed: a tensor of too few dims, or
    /// a layer numbered 2^64 − 1, is an error, not a panic.
    #[test]
    fn inferring_from_hostile_shapes_is_an_error() {
        let base = ClipConfig::preset("ViT-B/32").unwrap();
        let shapes = |scalar: &'static str| {
            move |k: &str| -> Option<Vec<usize>> {
                if k == scalar {
                    return Some(vec![]);
                }
                Some(match k {
                    "visual.conv1.weight" => vec![768, 3, 32, 32],
                    "visual.positional_embedding" => vec![50, 768],
                    "text_projection" => vec![512, 512],
                    "positional_embedding" => vec![77, 512],
                    "token_embedding.weight" => vec![49408, 512],
                    k if k.contains("c_fc") => vec![if k.starts_with("visual") { 3072 } else { 2048 }, 0],
                    _ => vec![512],
                })
            }
        };
        let layers = |n: &str| (0..12).map(|i| format!("{n}.{i}.ln_1.weight")).collect::<Vec<_>>();
        let names = [layers("visual.transformer.resblocks"), layers("transformer.resblocks")].concat();
        let inferred = ClipConfig::infer_open_clip(shapes("none"), &names).unwrap();
        assert_eq!(inferred.vision_config, base.vision_config);
        let err = ClipConfig::infer_open_clip(shapes("text_projection"), &names).unwrap_err();
        assert_eq!(err, "'text_projection' has shape [], no dim 1");
        let huge =
            [names.clone(), vec![format!("transformer.resblocks.{}.ln_1.weight", usize::MAX)]].concat();
        let err = ClipConfig::infer_open_clip(shapes("none"), &huge).unwrap_err();
        assert!(err.contains("num_hidden_layers 18446744073709551615 is outside"), "{err}");
    }

    #[test]
    fn written_config_reads_back() {
        for name in ClipConfig::PRESETS {
            let c = ClipConfig::preset(name).unwrap();
            let back = ClipConfig::from_json_str(&c.to_hf_json().to_string()).unwrap();
            assert_eq!(back, c, "{name}");
        }
        let l14 = ClipConfig::preset("ViT-L/14-336").unwrap();
        assert_eq!(l14.vision_config.num_positions(), 577);
        assert_eq!(l14.text_config.num_attention_heads, 12);
    }
}
