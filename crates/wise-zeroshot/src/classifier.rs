//! `ImageClassifier`: CLIP's image tower plus a linear head, and its checkpoint.
//!
//! This is the model every later wise command reads and writes (`eval`, `train`,
//! `ensemble`). The checkpoint is one safetensors file:
//!
//! | key | shape |
//! |---|---|
//! | `vision_model.*`, `visual_projection.weight` | HF `CLIPVisionModelWithProjection` names |
//! | `classification_head.weight` | `[C, D]` |
//! | `classification_head.bias` | `[C]` |
//!
//! and in `__metadata__` the class names, templates, source model, vision config and
//! preprocessing (`wise.*` keys), so it is self-contained: no text tower, no config file.
//! transformers loads the tower from it with `CLIPVisionModelWithProjection`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, Var};
use serde::{Deserialize, Serialize};
use wise_clip::model::l2_normalize;
use wise_clip::nn::Linear;
use wise_clip::params::ParamBuilder;
use wise_clip::preprocess::ImagePreprocessor;
use wise_clip::vision::ImageEncoder;
use wise_clip::weights::{save_safetensors_atomic, Checkpoint, InMemory, WeightSource};
use wise_clip::{ClipModel, Error, Result, VisionConfig};

/// Marks a safetensors file as a wise image classifier.
const KIND: &str = "image_classifier";

/// What a classifier checkpoint says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierMeta {
    pub class_names: Vec<String>,
    /// Prompt templates of the zero-shot head it started from.
    pub templates: Vec<String>,
    /// The CLIP it came from (path or hub id).
    pub source_model: String,
    pub vision_config: VisionConfig,
    pub projection_dim: usize,
    pub preprocessing: Preprocessing,
    /// Other `wise.*` entries (training run, ensemble inputs, alpha, ...), kept as they are.
    pub extra: BTreeMap<String, String>,
}

/// The eval preprocessing, as stored in the checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    pub image_size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocessing {
    /// For the tower of `vision`: its image size, and a std that divides (a zero would
    /// make every pixel infinite, and every prediction the same).
    fn validate(&self, vision: &VisionConfig) -> std::result::Result<(), String> {
        if self.image_size != vision.image_size {
            return Err(format!(
                "preprocessing is for {0}×{0} images but the tower takes {1}×{1}",
                self.image_size, vision.image_size
            ));
        }
        if !self.std.iter().all(|&x| x > 0.0 && x.is_finite()) || !self.mean.iter().all(|x| x.is_finite()) {
            return Err(format!("mean {:?} and std {:?} must be finite, std positive", self.mean, self.std));
        }
        Ok(())
    }
}

impl From<&ImagePreprocessor> for Preprocessing {
    fn from(p: &ImagePreprocessor) -> Self {
        Self { image_size: p.image_size, mean: p.mean, std: p.std }
    }
}

impl ClassifierMeta {
    /// The `__metadata__` entries of a classifier checkpoint.
    pub fn to_metadata(&self) -> Result<HashMap<String, String>> {
        let mut m: HashMap<String, String> =
            self.extra.iter().map(|(k, v)| (format!("wise.{k}"), v.clone())).collect();
        m.insert("format".into(), "pt".into());
        m.insert("wise.kind".into(), KIND.into());
        m.insert("wise.class_names".into(), to_json(&self.class_names)?);
        m.insert("wise.templates".into(), to_json(&self.templates)?);
        m.insert("wise.source_model".into(), self.source_model.clone());
        m.insert("wise.vision_config".into(), to_json(&self.vision_config)?);
        m.insert("wise.projection_dim".into(), self.projection_dim.to_string());
        m.insert("wise.preprocessing".into(), to_json(&self.preprocessing)?);
        Ok(m)
    }

    /// Reads them back; `path` names the file in errors.
    pub fn from_metadata(path: &Path, m: Option<&HashMap<String, String>>) -> Result<Self> {
        let bad = |msg: String| Error::Config { path: path.to_path_buf(), msg };
        let m =
            m.ok_or_else(
                || bad("no metadata: not a wise classifier (make one with `wise zeroshot`)".into()),
            )?;
        if m.get("wise.kind").map(String::as_str) != Some(KIND) {
            return Err(bad("not a wise classifier checkpoint (make one with `wise zeroshot`)".into()));
        }
        let get = |k: &str| m.get(k).ok_or_else(|| bad(format!("metadata has no '{k}'")));
        fn parse<T: for<'de> Deserialize<'de>>(key: &str, v: &str) -> std::result::Result<T, String> {
            serde_json::from_str(v).map_err(|e| format!("metadata '{key}': {e}"))
        }
        let known = [
            "kind",
            "class_names",
            "templates",
            "source_model",
            "vision_config",
            "projection_dim",
            "preprocessing",
        ];
        let extra = m
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("wise.")?.to_string(), v.clone())))
            .filter(|(k, _)| !known.contains(&k.as_str()))
            .collect();
        let vision_config: VisionConfig =
            parse("wise.vision_config", get("wise.vision_config")?).map_err(bad)?;
        vision_config.validate().map_err(|e| bad(format!("metadata 'wise.vision_config': {e}")))?;
        let preprocessing: Preprocessing =
            parse("wise.preprocessing", get("wise.preprocessing")?).map_err(bad)?;
        preprocessing
            .validate(&vision_config)
            .map_err(|e| bad(format!("metadata 'wise.preprocessing': {e}")))?;
        Ok(Self {
            class_names: parse("wise.class_names", get("wise.class_names")?).map_err(bad)?,
            templates: parse("wise.templates", get("wise.templates")?).map_err(bad)?,
            source_model: get("wise.source_model")?.clone(),
            vision_config,
            projection_dim: parse("wise.projection_dim", get("wise.projection_dim")?).map_err(bad)?,
            preprocessing,
            extra,
        })
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Invalid(e.to_string()))
}

#[derive(Debug, Clone)]
pub struct ImageClassifier {
    pub encoder: ImageEncoder,
    pub head: Linear,
    pub meta: ClassifierMeta,
    /// Every parameter by checkpoint name (tower under HF names, then the head).
    pub params: BTreeMap<String, Var>,
    pub compute_dtype: DType,
}

impl ImageClassifier {
    /// Builds the classifier from tensors under checkpoint names, checking every name and shape.
    pub fn from_weights(meta: ClassifierMeta, weights: &dyn WeightSource, device: &Device) -> Result<Self> {
        Self::build(meta, ParamBuilder::from_checkpoint(weights, device))
    }

    /// A randomly initialised classifier (seeded): CLIP's fresh-init tower and a head with
    /// std `D^-½`. For benchmarks and tests that need the shapes, not the weights.
    pub fn fresh(meta: ClassifierMeta, seed: u64, device: &Device) -> Result<Self> {
        Self::build(meta, ParamBuilder::fresh(seed, device))
    }

    fn build(meta: ClassifierMeta, mut pb: ParamBuilder) -> Result<Self> {
        let encoder = ImageEncoder::new(&mut pb, &meta.vision_config, meta.projection_dim)?;
        let head = Linear::new(
            &mut pb,
            "classification_head",
            (meta.projection_dim, meta.class_names.len()),
            true,
            (meta.projection_dim as f64).powf(-0.5),
        )?;
        let params = pb.finish()?;
        Ok(Self { encoder, head, meta, params, compute_dtype: DType::F32 })
    }

    /// CLIP's image tower (copied) with `head` `[C, D]` and a zero bias.
    pub fn from_clip(model: &ClipModel, head: &Tensor, meta: ClassifierMeta) -> Result<Self> {
        let mut tensors: BTreeMap<String, Tensor> = model
            .params
            .iter()
            .filter(|(n, _)| n.starts_with("vision_model.") || n.starts_with("visual_projection."))
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        let classes = head.dim(0)?;
        tensors.insert("classification_head.weight".into(), head.clone());
        tensors.insert("classification_head.bias".into(), Tensor::zeros(classes, DType::F32, head.device())?);
        let source = InMemory { label: format!("zero-shot head on {}", meta.source_model), tensors };
        Self::from_weights(meta, &source, model.device())
    }

    /// Whether `path` is a classifier checkpoint (its metadata says so), without loading it;
    /// false for anything else, readable or not.
    pub fn is_checkpoint(path: &Path) -> bool {
        path.is_file()
            && Checkpoint::open(path).is_ok_and(|c| {
                c.user_metadata().and_then(|m| m.get("wise.kind")).map(String::as_str) == Some(KIND)
            })
    }

    /// Reads a checkpoint written by [`Self::save`]. A head whose width does not match the
    /// tower, or a class count that differs from the metadata, is an error naming the key.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let checkpoint = Checkpoint::open(path)?;
        let meta = ClassifierMeta::from_metadata(path, checkpoint.user_metadata())?;
        Self::from_weights(meta, &checkpoint, device)
    }

    /// Writes the checkpoint atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors: Vec<(String, Tensor)> =
            self.params.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
        save_safetensors_atomic(path, &tensors, Some(self.meta.to_metadata()?))
    }

    pub fn device(&self) -> &Device {
        self.head.weight.device()
    }

    pub fn with_compute_dtype(mut self, dtype: DType) -> Self {
        self.compute_dtype = dtype;
        self
    }

    /// `[B, 3, S, S]` pixels → `[B, C]` f32 logits: the head on normalised image features.
    pub fn logits(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.features_and_logits(pixels)?.1)
    }

    /// The image features (`[B, D]` f32, projected, not normalised: HF
    /// `get_image_features`) and the logits of one forward.
    pub fn features_and_logits(&self, pixels: &Tensor) -> Result<(Tensor, Tensor)> {
        let features = self.encoder.forward(&pixels.to_dtype(self.compute_dtype)?)?;
        let logits = self.head.forward(&l2_normalize(&features)?)?;
        Ok((features.to_dtype(DType::F32)?, logits.to_dtype(DType::F32)?))
    }

    /// The eval transform the checkpoint was made with.
    pub fn preprocessor(&self) -> ImagePreprocessor {
        let p = &self.meta.preprocessing;
        ImagePreprocessor { image_size: p.image_size, mean: p.mean, std: p.std }
    }
}
