//! wise-ft's fine-tuning recipe against PyTorch (`tests/fixtures/train/expected.safetensors`):
//! three full-batch steps of label-smoothed cross-entropy, AdamW, gradient clipping and the
//! cosine schedule on the tiny classifier give the same losses, gradient norms and weights.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use wise_clip::{ClipModel, ModelSource};
use wise_train::loss::cross_entropy;
use wise_train::optim::{clip_scale, grad_norm, AdamW, AdamWConfig};
use wise_train::schedule::cosine_lr;
use wise_zeroshot::{ClassifierMeta, ImageClassifier};

#[path = "../../wise-clip/tests/support/mod.rs"]
mod support;
use support::{fixture, DIGITS};

fn load(rel: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(rel), &Device::Cpu).unwrap()
}

/// The tiny classifier the fixture trained: clip-tiny-quickgelu's tower + its
/// openai_imagenet zero-shot head (bias 0), as the Python side built it.
pub fn reference_classifier() -> ImageClassifier {
    let source = ModelSource::local(&fixture("clip-tiny-quickgelu")).unwrap();
    let model = ClipModel::load(&source, &Device::Cpu).unwrap();
    let head = load("zeroshot/expected.safetensors")["head.openai_imagenet"].clone();
    let meta = ClassifierMeta {
        class_names: DIGITS.iter().map(|s| s.to_string()).collect(),
        templates: vec![],
        source_model: source.spec.clone(),
        vision_config: source.config.vision_config.clone(),
        projection_dim: source.config.projection_dim,
        preprocessing: (&source.preprocessor().unwrap()).into(),
        extra: Default::default(),
    };
    ImageClassifier::from_clip(&model, &head, meta).unwrap()
}

#[test]
fn three_adamw_steps_match_pytorch() {
    let exp = load("train/expected.safetensors");
    let pixels = load("clip-tiny-quickgelu/expected.safetensors")["pixel_values"].clone();
    let labels = exp["labels"].to_dtype(DType::U32).unwrap();
    let (want_losses, want_lrs, want_norms): (Vec<f64>, Vec<f64>, Vec<f64>) = (
        exp["losses"].to_vec1().unwrap(),
        exp["lrs"].to_vec1().unwrap(),
        exp["grad_norms"].to_vec1().unwrap(),
    );

    let classifier = reference_classifier();
    let params = classifier.params.clone();
    let mut optimizer =
        AdamW::new(AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() }, &params).unwrap();
    for step in 0..3 {
        let lr = cosine_lr(1e-4, 0, 3, step);
        assert_eq!(lr, want_lrs[step], "lr at step {step}");
        let logits = classifier.logits(&pixels).unwrap();
        let loss = cross_entropy(&logits, &labels, 0.1).unwrap();
        let value = loss.to_scalar::<f32>().unwrap() as f64;
        assert!(
            (value - want_losses[step]).abs() <= 1e-5,
            "loss at step {step}: {value} vs {}",
            want_losses[step]
        );
        let grads = wise_clip::backward(&loss).unwrap();
        let norm = grad_norm(&params, &grads).unwrap();
        assert!(
            (norm - want_norms[step]).abs() <= 1e-4 * want_norms[step],
            "grad norm at step {step}: {norm}"
        );
        optimizer.step(&params, &grads, lr, clip_scale(norm, 1.0)).unwrap();
    }
    let mut worst = (0f32, String::new());
    for (name, var) in &params {
        let want = &exp[&format!("after.{name}")];
        if name.ends_with("self_attn.k_proj.bias") {
            // Its gradient is zero in exact arithmetic (softmax ignores a per-row shift), so
            // both sides feed rounding noise to Adam, which normalises it into steps of up to
            // lr. Only the weight decay is determined: allow each side its noise steps.
            let budget: f64 = want_lrs.iter().sum::<f64>() * 2.0;
            let d = (var.as_tensor() - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!((d as f64) <= budget, "{name}: {d} > {budget}");
            continue;
        }
        let diff = (var.as_tensor() - want).unwrap().sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
        let norm = want.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
        let rel = (diff.to_scalar::<f32>().unwrap()) / norm.to_scalar::<f32>().unwrap().max(1e-12);
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
    }
    assert!(worst.0 <= 1e-4, "weights after 3 steps: {} off by {} (relative)", worst.1, worst.0);
    assert_eq!(params.len(), exp.keys().filter(|k| k.starts_with("after.")).count());
}

#[test]
fn schedule_equals_wise_ft_cosine_lr() {
    let want: Vec<f64> = load("train/expected.safetensors")["schedule.3e-5.5.20"].to_vec1().unwrap();
    for (step, w) in want.iter().enumerate() {
        let got = cosine_lr(3e-5, 5, 20, step);
        assert!((got - w).abs() <= 1e-20 + 1e-15 * w.abs(), "step {step}: {got} vs {w}");
    }
}
