//! The whole zero-shot evaluation path on real data against PyTorch: our importer, decoding,
//! preprocessing, zero-shot head and evaluator on the first 200 MNIST test digits give the
//! logits, predictions and accuracies that transformers gives
//! (`tests/fixtures/zeroshot/expected.safetensors`, made by `scripts/make_fixtures.py`).

use candle_core::{DType, Device, Tensor};
use wise_clip::ModelSource;
use wise_data::{import, Dataset, Loader, Source};
use wise_eval::{evaluate, EvalOptions};
use wise_zeroshot::{zeroshot_classifier, Templates};

#[path = "../../wise-clip/tests/support/mod.rs"]
mod support;
use support::{fixture, max_abs_diff, shared_datasets, DIGITS};

const N: usize = 200;

#[test]
fn zero_shot_mnist_matches_pytorch() {
    let Some(data) = shared_datasets() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mnist");
    import(Source::Mnist, &data.join("digits/mnist"), &out, false).unwrap();
    // The first N rows of the test split, in row order (files are named by row).
    let full = Dataset::open(&out.join("test"), None).unwrap();
    let row =
        |s: &wise_data::Sample| -> usize { s.path.file_stem().unwrap().to_str().unwrap().parse().unwrap() };
    let mut samples: Vec<_> = full.samples.iter().filter(|s| row(s) < N).cloned().collect();
    samples.sort_by_key(row);
    assert_eq!(samples.len(), N);
    let dataset = Dataset { samples, ..full };
    assert_eq!(dataset.class_names, DIGITS);

    let reference =
        candle_core::safetensors::load(fixture("zeroshot/expected.safetensors"), &Device::Cpu).unwrap();
    let labels: Vec<i64> = reference["eval.labels"].to_vec1().unwrap();
    let ours: Vec<i64> = dataset.samples.iter().map(|s| s.label as i64).collect();
    assert_eq!(ours, labels, "labels of the first {N} MNIST test images");

    let source = ModelSource::local(&fixture("clip-tiny-quickgelu")).unwrap();
    let names: Vec<String> = DIGITS.iter().map(|s| s.to_string()).collect();
    let classifier =
        zeroshot_classifier(&source, &names, &Templates::resolve("openai_imagenet").unwrap(), &Device::Cpu)
            .unwrap();

    // Logits, image by image: the reference's top-1/top-5 margins are ≥ 9.5e-4, so within
    // 4e-4 every prediction is the same.
    let mut logits = Vec::new();
    for batch in
        Loader::new(&dataset, classifier.preprocessor(), &Device::Cpu).with_batch_size(64).eval().unwrap()
    {
        logits.push(classifier.logits(&batch.unwrap().pixels).unwrap());
    }
    let logits = Tensor::cat(&logits, 0).unwrap();
    let d = max_abs_diff(&logits, &reference["eval.logits"]);
    assert!(d <= 4e-4, "logits differ by {d}");
    let argmax = |t: &Tensor| t.argmax(1).unwrap().to_dtype(DType::I64).unwrap().to_vec1::<i64>().unwrap();
    assert_eq!(argmax(&logits), argmax(&reference["eval.logits"]));

    // The evaluator's accuracies are PyTorch's: 24/200 top-1, 108/200 top-5.
    let eval = evaluate(&classifier, "MNIST", &dataset, &EvalOptions::default(), |_| {}).unwrap();
    assert_eq!(eval.metrics.n, N);
    assert_eq!((eval.metrics.top1_correct, eval.metrics.top5_correct), (24, 108));
    let per_class: usize = eval.metrics.per_class.iter().map(|&(_, t)| t).sum();
    assert_eq!(per_class, N);
}
