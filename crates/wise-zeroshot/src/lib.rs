//! wise-zeroshot: CLIP as a zero-shot image classifier, the starting point of WiSE-FT.
//!
//! A zero-shot classifier is CLIP's image tower plus a linear head whose rows are text
//! embeddings of class-name prompts ([`zeroshot_head`]); [`ImageClassifier`] is that model
//! and the checkpoint format every later wise command reads and writes.
//!
//! ```no_run
//! use candle_core::Device;
//! use wise_clip::{ClipModel, ModelSource};
//! use wise_zeroshot::{ImageClassifier, Templates, zeroshot_classifier};
//! # fn main() -> wise_clip::Result<()> {
//! let source = ModelSource::resolve("openai/clip-vit-base-patch32")?;
//! let classes = vec!["cat".to_string(), "dog".to_string()];
//! let templates = Templates::resolve("openai_imagenet")?;
//! let classifier = zeroshot_classifier(&source, &classes, &templates, &Device::Cpu)?;
//! classifier.save("classifier.safetensors".as_ref())?;
//! # Ok(()) }
//! ```

pub mod classifier;
pub mod head;
pub mod templates;

use candle_core::Device;
use wise_clip::{ClipModel, ModelSource, Result};

pub use classifier::{ClassifierMeta, ImageClassifier, Preprocessing};
pub use head::{zeroshot_head, PROMPT_BATCH};
pub use templates::Templates;

/// Loads a CLIP, builds the zero-shot head for `class_names`, and returns the classifier
/// (image tower + head) with its metadata filled in.
pub fn zeroshot_classifier(
    source: &ModelSource,
    class_names: &[String],
    templates: &Templates,
    device: &Device,
) -> Result<ImageClassifier> {
    zeroshot_classifier_with_progress(source, class_names, templates, device, |_, _| {})
}

/// [`zeroshot_classifier`], calling `progress(done, total)` with the prompts encoded so far
/// (a head for ImageNet is 80,000 of them).
pub fn zeroshot_classifier_with_progress(
    source: &ModelSource,
    class_names: &[String],
    templates: &Templates,
    device: &Device,
    progress: impl FnMut(usize, usize),
) -> Result<ImageClassifier> {
    let model = ClipModel::load(source, device)?.with_compute_dtype(wise_clip::compute_dtype(device));
    let head = zeroshot_head(&model, &source.tokenizer()?, class_names, templates, PROMPT_BATCH, progress)?;
    let meta = ClassifierMeta {
        class_names: class_names.to_vec(),
        templates: templates.items.clone(),
        source_model: source.spec.clone(),
        vision_config: source.config.vision_config.clone(),
        projection_dim: source.config.projection_dim,
        preprocessing: (&source.preprocessor()?).into(),
        extra: Default::default(),
    };
    ImageClassifier::from_clip(&model, &head, meta)
}
