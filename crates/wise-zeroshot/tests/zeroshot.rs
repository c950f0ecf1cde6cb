//! The zero-shot head against wise-ft's recipe computed with HF transformers
//! (`tests/fixtures/zeroshot/expected.safetensors`), and the classifier checkpoint.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use wise_clip::weights::{save_safetensors_atomic, SafetensorsFile};
use wise_clip::{ClipModel, ModelSource};
use wise_zeroshot::{zeroshot_classifier, zeroshot_head, ImageClassifier, Templates};

#[path = "../../wise-clip/tests/support/mod.rs"]
mod support;
use support::{fixture, max_abs_diff, DIGITS};

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("zeroshot/expected.safetensors"), &Device::Cpu).unwrap()
}

fn digits() -> Vec<String> {
    DIGITS.iter().map(|s| s.to_string()).collect()
}

#[test]
fn heads_match_wise_ft_recipe_in_transformers() {
    let source = ModelSource::local(&fixture("clip-tiny-quickgelu")).unwrap();
    let model = ClipModel::load(&source, &Device::Cpu).unwrap();
    let tokenizer = source.tokenizer().unwrap();
    let exp = expected();
    for set in ["simple", "openai_imagenet"] {
        let templates = Templates::resolve(set).unwrap();
        // A small batch size so the per-class batching is exercised too.
        let mut reports = Vec::new();
        let head = zeroshot_head(&model, &tokenizer, &digits(), &templates, 7, |done, total| {
            reports.push((done, total))
        })
        .unwrap();
        // One report a batch of 7, the last with every prompt.
        let total = 10 * templates.items.len();
        assert_eq!(reports.len(), total.div_ceil(7));
        assert_eq!(reports.last(), Some(&(total, total)));
        let d = max_abs_diff(&head, &exp[&format!("head.{set}")]);
        assert!(d <= 1e-5, "{set}: head differs by {d}");
    }
}

fn classifier() -> ImageClassifier {
    let source = ModelSource::local(&fixture("clip-tiny-quickgelu")).unwrap();
    let templates = Templates::resolve("openai_imagenet").unwrap();
    zeroshot_classifier(&source, &digits(), &templates, &Device::Cpu).unwrap()
}

#[test]
fn classifier_logits_are_clip_zero_shot_logits() {
    let c = classifier();
    let exp = expected();
    // Features of the reference images, normalised, times the reference head.
    let pixels =
        candle_core::safetensors::load(fixture("clip-tiny-quickgelu/expected.safetensors"), &Device::Cpu)
            .unwrap()["pixel_values"]
            .clone();
    let logits = c.logits(&pixels).unwrap();
    let feats = c.encoder.forward(&pixels).unwrap();
    let feats = wise_clip::model::l2_normalize(&feats).unwrap();
    let want = feats.matmul(&exp["head.openai_imagenet"].t().unwrap()).unwrap();
    assert!(max_abs_diff(&logits, &want) <= 1e-4);
}

#[test]
fn checkpoint_round_trips_without_the_text_tower() {
    let c = classifier();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zs.safetensors");
    c.save(&path).unwrap();
    let file = SafetensorsFile::open(&path).unwrap();
    let names = file.names();
    assert!(names.iter().all(|n| !n.starts_with("text_model.") && n != "logit_scale"), "{names:?}");
    assert_eq!(file.shape("classification_head.weight").unwrap(), [10, 12]);
    assert_eq!(file.shape("classification_head.bias").unwrap(), [10]);
    let meta = file.user_metadata().unwrap();
    assert_eq!(meta["wise.kind"], "image_classifier");
    assert!(meta["wise.source_model"].ends_with("clip-tiny-quickgelu"));

    let back = ImageClassifier::load(&path, &Device::Cpu).unwrap();
    assert_eq!(back.meta, c.meta);
    assert_eq!(back.meta.templates.len(), 80);
    assert_eq!(back.preprocessor().image_size, 32);
    for (name, v) in &c.params {
        assert_eq!(max_abs_diff(v, &back.params[name]), 0.0, "{name}");
    }
}

/// The fixture classifier saved in `dir` and read back: its tensors and its metadata.
fn saved_classifier(dir: &Path) -> (Vec<(String, Tensor)>, HashMap<String, String>) {
    let good = dir.join("good.safetensors");
    classifier().save(&good).unwrap();
    let file = SafetensorsFile::open(&good).unwrap();
    let tensors =
        file.names().into_iter().map(|n| (n.clone(), file.load(&n, &Device::Cpu).unwrap())).collect();
    (tensors, file.user_metadata().unwrap().clone())
}

#[test]
fn head_that_does_not_fit_the_tower_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (mut tensors, meta) = saved_classifier(dir.path());
    for (n, t) in tensors.iter_mut() {
        if n == "classification_head.weight" {
            *t = Tensor::zeros((10, 7), DType::F32, &Device::Cpu).unwrap();
        }
    }
    let bad = dir.path().join("bad.safetensors");
    save_safetensors_atomic(&bad, &tensors, Some(meta.into_iter().collect())).unwrap();
    let err = ImageClassifier::load(&bad, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("bad.safetensors"), "{err}");
    assert!(
        err.contains("classification_head.weight: model expects [10, 12], checkpoint has [10, 7]"),
        "{err}"
    );

    // A plain CLIP checkpoint is not a classifier.
    let err = ImageClassifier::load(&fixture("clip-tiny-quickgelu/model.safetensors"), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a wise classifier") && err.contains("model.safetensors"), "{err}");
}

/// Metadata that would make every prediction wrong without a word — a preprocessing for
/// another image size (the tower saw a corner of each image), a zero std (every pixel
/// infinite), a tower config of a trillion-wide MLP — is an error naming the file and key.
#[test]
fn metadata_that_cannot_be_right_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (tensors, meta) = saved_classifier(dir.path());
    let pre = &meta["wise.preprocessing"];
    let tower = &meta["wise.vision_config"];
    for (key, value, said) in [
        (
            "wise.preprocessing",
            pre.replace("\"image_size\":32", "\"image_size\":64"),
            "for 64×64 images but the tower takes 32×32",
        ),
        ("wise.preprocessing", pre.replace("\"std\":[", "\"std\":[0,0,0],\"_\":["), "std positive"),
        (
            "wise.vision_config",
            tower.replace("\"intermediate_size\":48", "\"intermediate_size\":1000000000000"),
            "intermediate_size 1000000000000 is outside",
        ),
    ] {
        assert_ne!(&value, &meta[key], "the edit of {key} must apply");
        let mut edited = meta.clone();
        edited.insert(key.to_string(), value);
        let bad = dir.path().join("bad.safetensors");
        save_safetensors_atomic(&bad, &tensors, Some(edited.into_iter().collect())).unwrap();
        let err = ImageClassifier::load(&bad, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("bad.safetensors") && err.contains(key) && err.contains(said), "{err}");
    }
}
