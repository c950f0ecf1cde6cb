//! The diagonal Fisher against PyTorch (fixed labels, since the two label samplers draw
//! different random numbers), and the end-to-end estimate on images with sampled labels.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use wise_clip::ModelSource;
use wise_data::Dataset;
use wise_ensemble::fisher::{diagonal_fisher, FisherAccumulator, FisherOptions};
use wise_zeroshot::{zeroshot_classifier, ImageClassifier, Templates};

#[path = "../../wise-clip/tests/support/mod.rs"]
mod support;
use support::{fixture, max_abs_diff, DIGITS};

/// The tiny quickgelu tower with the fixture's random head (weight and bias).
fn fixture_classifier(expected: &HashMap<String, Tensor>) -> ImageClassifier {
    let source = ModelSource::resolve(fixture("clip-tiny-quickgelu").to_str().unwrap()).unwrap();
    let classes: Vec<String> = DIGITS.iter().map(|s| s.to_string()).collect();
    let classifier =
        zeroshot_classifier(&source, &classes, &Templates::resolve("simple").unwrap(), &Device::Cpu).unwrap();
    classifier.params["classification_head.weight"].set(&expected["head.weight"]).unwrap();
    classifier.params["classification_head.bias"].set(&expected["head.bias"]).unwrap();
    classifier
}

#[test]
fn fisher_with_fixed_labels_matches_pytorch() {
    let expected =
        candle_core::safetensors::load(fixture("ensemble/fisher_expected.safetensors"), &Device::Cpu)
            .unwrap();
    let classifier = fixture_classifier(&expected);
    let pixels = &expected["pixel_values"];
    let labels = expected["labels"].to_vec1::<i64>().unwrap();
    let mut acc = FisherAccumulator::new();
    for (i, &label) in labels.iter().enumerate() {
        let got = acc.add(&classifier, &pixels.narrow(0, i, 1).unwrap(), |p| {
            assert_eq!(p.len(), 10);
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            label as usize
        });
        assert_eq!(got.unwrap(), label as usize);
    }
    let fisher = acc.finish(&classifier).unwrap();
    assert_eq!(fisher.examples, 4);
    assert!(fisher.without_gradient.is_empty(), "{:?}", fisher.without_gradient);
    assert_eq!(fisher.tensors.len(), classifier.params.len());
    let largest =
        |t: &Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let overall =
        fisher.tensors.keys().map(|n| largest(&expected[&format!("fisher.{n}")])).fold(0f32, f32::max);
    let mut worst = 0f32;
    for (name, f) in &fisher.tensors {
        let e = &expected[&format!("fisher.{name}")];
        // The attention key biases have a gradient of exactly 0 in exact arithmetic (a
        // constant added to every key leaves the softmax unchanged): PyTorch's Fisher there
        // is rounding noise (~1e-14), so those are compared against 1e-6 of the largest.
        let scale = largest(e).max(1e-6 * overall);
        let rel = max_abs_diff(f, e) / scale;
        assert!(rel <= 1e-4, "{name}: Fisher differs from PyTorch by {rel} relative to its largest entry");
        worst = worst.max(rel);
    }
    eprintln!(
        "Fisher: max |wise - PyTorch| / max |PyTorch| over {} parameters = {worst:e}",
        fisher.tensors.len()
    );
}

#[test]
fn fisher_on_a_dataset_samples_labels_from_the_model() {
    // An ImageFolder of the fixture images (its classes do not matter: labels are sampled).
    let dir = tempfile::tempdir().unwrap();
    for class in ["a", "b"] {
        std::fs::create_dir_all(dir.path().join(class)).unwrap();
        for image in ["rgb.jpg", "wide.png", "tall.png"] {
            std::fs::copy(fixture(&format!("images/{image}")), dir.path().join(class).join(image)).unwrap();
        }
    }
    let dataset = Dataset::open(dir.path(), None).unwrap();
    assert_eq!(dataset.samples.len(), 6);
    let expected =
        candle_core::safetensors::load(fixture("ensemble/fisher_expected.safetensors"), &Device::Cpu)
            .unwrap();
    let classifier = fixture_classifier(&expected);
    let options = FisherOptions { samples: Some(4), seed: 3, batch_size: 3, ..Default::default() };
    let mut seen = Vec::new();
    let a = diagonal_fisher(&classifier, &dataset, &options, |done, total| seen.push((done, total))).unwrap();
    assert_eq!(seen.last(), Some(&(4, 4)));
    assert_eq!(a.examples, 4);
    for (name, f) in &a.tensors {
        let v = f.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| x.is_finite() && *x >= 0.0), "{name}");
        assert!(v.iter().any(|x| *x > 0.0), "{name} is all zero");
    }
    // Same seed, same Fisher; another seed, another subset and other labels.
    let b = diagonal_fisher(&classifier, &dataset, &options, |_, _| {}).unwrap();
    let w = "classification_head.weight";
    assert_eq!(max_abs_diff(&a.tensors[w], &b.tensors[w]), 0.0);
    let c = diagonal_fisher(&classifier, &dataset, &FisherOptions { seed: 4, ..options.clone() }, |_, _| {})
        .unwrap();
    assert!(max_abs_diff(&a.tensors[w], &c.tensors[w]) > 0.0);
    // The head bias's Fisher is E[(p - onehot(y))²] per class: each entry below 1.
    let bias = a.tensors["classification_head.bias"].to_vec1::<f32>().unwrap();
    assert!(bias.iter().all(|&x| x < 1.0), "{bias:?}");

    let err =
        diagonal_fisher(&classifier, &dataset, &FisherOptions { samples: Some(7), ..options }, |_, _| {})
            .unwrap_err()
            .to_string();
    assert!(err.contains("7") && err.contains("has 6"), "{err}");
}
