//! FLYP (`loss = contrastive`) against PyTorch (`tests/fixtures/flyp/expected.safetensors`):
//! three full-batch steps of CLIP's contrastive loss through [`wise_train::train`] on an
//! ImageFolder of five images (two of one class), both towers and the temperature trained
//! with AdamW, clipping and the cosine schedule, give transformers' losses, gradient norms
//! and weights, and the head rebuilt from the fine-tuned text tower equals the zero-shot
//! head PyTorch computes from it. Then: a contrastive run interrupted mid-epoch resumes bit
//! for bit (text tower included), and bad set-ups are refused with the cause.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use wise_clip::ModelSource;
use wise_data::Dataset;
use wise_train::{train, train_with_clip, Loss, Observer, Run, StepInfo, TrainConfig, FINETUNED_FILE};
use wise_zeroshot::{zeroshot_classifier, ImageClassifier, Templates};

#[path = "../../wise-clip/tests/support/mod.rs"]
mod support;
use support::{fixture, load, max_abs_diff, raw};

/// Records every step and head-building report; panics after step `panic_at` (a run
/// killed there).
#[derive(Default)]
struct Record {
    steps: Vec<StepInfo>,
    heads: Vec<(usize, usize)>,
    panic_at: Option<usize>,
}

impl Observer for Record {
    fn step(&mut self, info: &StepInfo) {
        self.steps.push(info.clone());
        if Some(info.step) == self.panic_at {
            panic!("killed at step {}", info.step);
        }
    }

    fn head_progress(&mut self, done: usize, total: usize) {
        self.heads.push((done, total));
    }
}

fn data() -> Dataset {
    Dataset::open(&fixture("flyp/data"), None).unwrap()
}

/// The zero-shot classifier of the tiny CLIP for the fixture's classes, one template.
fn zero_shot(data: &Dataset) -> ImageClassifier {
    let source = ModelSource::local(&fixture("clip-tiny-quickgelu")).unwrap();
    let templates = Templates::resolve("simple").unwrap();
    zeroshot_classifier(&source, &data.class_names, &templates, &Device::Cpu).unwrap()
}

/// The fixture's recipe: full batches of 5, no augmentation, lr 1e-4, no warmup, 3 steps.
fn recipe() -> TrainConfig {
    TrainConfig {
        loss: Loss::Contrastive,
        epochs: 3,
        batch_size: 5,
        lr: 1e-4,
        wd: 0.1,
        warmup: 0,
        clip_grad_norm: Some(1.0),
        augment: false,
        ..TrainConfig::default()
    }
}

fn run<'a>(
    classifier: ImageClassifier,
    data: &'a Dataset,
    config: TrainConfig,
    out: &Path,
    resume: bool,
) -> Run<'a> {
    Run {
        classifier,
        train: data,
        evals: &[],
        config,
        out_dir: out.to_path_buf(),
        resume,
        feature_cache: out.join("cache"),
    }
}

fn relative(got: &Tensor, want: &Tensor) -> f32 {
    let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
    norm(&(got - want).unwrap()) / norm(want).max(1e-12)
}

#[test]
fn three_contrastive_steps_match_pytorch() {
    let exp = load(&fixture("flyp/expected.safetensors"));
    let data = data();
    assert_eq!(data.class_names, ["four", "one", "seven", "three"]);
    let labels: Vec<i64> = exp["labels"].to_vec1().unwrap();
    assert_eq!(labels, data.samples.iter().map(|s| s.label as i64).collect::<Vec<_>>());

    let tmp = tempfile::tempdir().unwrap();
    let mut record = Record::default();
    let summary = train(run(zero_shot(&data), &data, recipe(), tmp.path(), false), &mut record).unwrap();
    assert_eq!(summary.steps, 3);

    let (want_losses, want_lrs, want_norms): (Vec<f64>, Vec<f64>, Vec<f64>) = (
        exp["losses"].to_vec1().unwrap(),
        exp["lrs"].to_vec1().unwrap(),
        exp["grad_norms"].to_vec1().unwrap(),
    );
    assert_eq!(record.steps.len(), 3);
    // The head rebuilt after each of the 3 epochs: 4 classes × 1 template, one batch.
    assert_eq!(record.heads, [(4, 4); 3]);
    for (i, s) in record.steps.iter().enumerate() {
        assert!((0.0..=1.0).contains(&s.data_wait), "data wait at step {i}: {}", s.data_wait);
        assert_eq!(s.lr, want_lrs[i], "lr at step {i}");
        let dl = (s.loss - want_losses[i]).abs();
        assert!(dl <= 1e-5, "loss at step {i}: {} vs {} ({dl:.1e})", s.loss, want_losses[i]);
        let dn = (s.grad_norm - want_norms[i]).abs() / want_norms[i];
        assert!(
            dn <= 1e-4,
            "grad norm at step {i}: {} vs {} ({dn:.1e} relative)",
            s.grad_norm,
            want_norms[i]
        );
        eprintln!("step {i}: loss off by {dl:.1e}, grad norm by {dn:.1e} (relative)");
    }

    // The image tower is in the classifier, the text tower and temperature in the state.
    let finetuned = load(&tmp.path().join(FINETUNED_FILE));
    let state = load(&tmp.path().join("resume.safetensors"));
    let mut worst = (0f32, String::new());
    let mut compared = 0;
    for (key, want) in exp.iter().filter(|(k, _)| k.starts_with("after.")) {
        let name = &key["after.".len()..];
        let got =
            finetuned.get(name).or_else(|| state.get(name)).unwrap_or_else(|| panic!("{name} not saved"));
        compared += 1;
        if name.ends_with("self_attn.k_proj.bias") {
            // Zero gradient in exact arithmetic (softmax ignores a per-row shift): both sides
            // feed rounding noise to Adam, which turns it into steps of up to lr each.
            let budget = want_lrs.iter().sum::<f64>() * 2.0;
            let d = max_abs_diff(got, want);
            assert!(d as f64 <= budget, "{name}: {d} > {budget}");
            continue;
        }
        let rel = relative(got, want);
        if rel > worst.0 {
            worst = (rel, name.to_string());
        }
    }
    eprintln!("weights after 3 steps: worst {} at {:.2e} (relative)", worst.1, worst.0);
    assert!(worst.0 <= 1e-4, "weights after 3 steps: {} off by {} (relative)", worst.1, worst.0);
    let model = load(&fixture("clip-tiny-quickgelu/model.safetensors"));
    assert_eq!(compared, model.len(), "every CLIP parameter is compared");
    // Training moved the text tower (it is not the source model's any more).
    let name = "text_model.encoder.layers.0.mlp.fc1.weight";
    assert!(max_abs_diff(&state[name], &model[name]) > 1e-5);

    // The head: the zero-shot head of the fine-tuned text tower, bias 0.
    let head = &finetuned["classification_head.weight"];
    let d = max_abs_diff(head, &exp["head"]);
    eprintln!(
        "rebuilt head: max abs diff {d:.2e} (entries up to {:.2})",
        max_abs_diff(&exp["head"], &exp["head"].zeros_like().unwrap())
    );
    assert!(d <= 1e-5, "rebuilt head differs from PyTorch's by {d}");
    let bias = &finetuned["classification_head.bias"];
    assert_eq!(max_abs_diff(bias, &bias.zeros_like().unwrap()), 0.0);
    // The epoch checkpoints are classifiers with the head of their epoch.
    let last = ImageClassifier::load(&tmp.path().join("epoch_3.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(max_abs_diff(last.head.weight.as_tensor(), head), 0.0);
    assert!(last.meta.extra["train"].contains("\"loss\":\"contrastive\""));
}

#[test]
fn interrupted_contrastive_run_resumes_bit_identically() {
    let data = data();
    // 2 full batches of 2 per epoch (the fifth image waits), augmentation on, 2 epochs.
    let config =
        TrainConfig { batch_size: 2, epochs: 2, augment: true, seed: 3, save_every: Some(1), ..recipe() };
    let tmp = tempfile::tempdir().unwrap();
    let straight = tmp.path().join("straight");
    train(run(zero_shot(&data), &data, config.clone(), &straight, false), &mut Record::default()).unwrap();

    // Killed after step 4's update, before its save: the state is step 3's, mid-epoch 2.
    let killed = tmp.path().join("killed");
    let mut record = Record { panic_at: Some(4), ..Record::default() };
    let result = catch_unwind(AssertUnwindSafe(|| {
        train(run(zero_shot(&data), &data, config.clone(), &killed, false), &mut record)
    }));
    assert!(result.is_err());
    assert!(!killed.join(FINETUNED_FILE).exists());

    // Resuming as a cross-entropy run is refused, naming the difference.
    let ce = TrainConfig { loss: Loss::CrossEntropy, ..config.clone() };
    let err = train(run(zero_shot(&data), &data, ce, &killed, true), &mut Record::default()).unwrap_err();
    assert!(err.to_string().contains("loss: \"cross_entropy\" (saved: \"contrastive\")"), "{err}");

    let mut record = Record::default();
    train(run(zero_shot(&data), &data, config, &killed, true), &mut record).unwrap();
    assert_eq!(record.steps.iter().map(|s| s.step).collect::<Vec<_>>(), [4]);
    let files = |dir: &PathBuf, name: &str| raw(&dir.join(name));
    for name in [FINETUNED_FILE, "epoch_2.safetensors", "resume.safetensors"] {
        let (a, b) = (files(&straight, name), files(&killed, name));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{name}");
        for (tensor, bytes) in &a {
            assert!(bytes == &b[tensor], "{name}: {tensor} differs after resuming");
        }
    }
    let state = files(&straight, "resume.safetensors");
    assert!(state.contains_key("text_model.final_layer_norm.weight") && state.contains_key("logit_scale"));
    assert!(state.contains_key("adamw.v.text_projection.weight"));
}

#[test]
fn bad_contrastive_set_ups_are_refused_with_the_cause() {
    let data = data();
    let tmp = tempfile::tempdir().unwrap();
    let fails = |classifier: ImageClassifier, config: TrainConfig, clip: Option<&str>, want: &[&str]| {
        let out = tmp.path().join("out");
        let _ = std::fs::remove_dir_all(&out);
        let r = train_with_clip(run(classifier, &data, config, &out, false), clip, &mut Record::default());
        let err = r.expect_err("refused").to_string();
        for w in want {
            assert!(err.contains(w), "'{w}' not in: {err}");
        }
    };
    let frozen = TrainConfig { freeze_encoder: true, ..recipe() };
    fails(zero_shot(&data), frozen, None, &["freeze-encoder"]);
    let smoothed = TrainConfig { label_smoothing: 0.1, ..recipe() };
    fails(zero_shot(&data), smoothed, None, &["label smoothing"]);
    fails(zero_shot(&data), TrainConfig { batch_size: 1, ..recipe() }, None, &["batch size of at least 2"]);
    fails(
        zero_shot(&data),
        TrainConfig { batch_size: 6, ..recipe() },
        None,
        &["5 training images", "batch of 6"],
    );

    // The source model has gone: the error names it and says how to point at it.
    let mut moved = zero_shot(&data);
    moved.meta.source_model = "/nowhere/clip-tiny-quickgelu".into();
    fails(moved, recipe(), None, &["/nowhere/clip-tiny-quickgelu", "source_model", "--clip"]);
    // A CLIP whose image tower has other shapes.
    let gelu = fixture("clip-tiny-gelu");
    fails(
        zero_shot(&data),
        recipe(),
        Some(gelu.to_str().unwrap()),
        &["does not match", "clip-tiny-gelu", "the CLIP has"],
    );
    // A classifier without templates (nothing to caption with).
    let mut bare = zero_shot(&data);
    bare.meta.templates.clear();
    fails(bare, recipe(), None, &["no prompt templates"]);

    // --clip finds a moved source model, and a resumed run finds it again by itself.
    let moved = || {
        let mut c = zero_shot(&data);
        c.meta.source_model = "/nowhere/clip-tiny-quickgelu".into();
        c
    };
    let out = tmp.path().join("found");
    let config = TrainConfig { epochs: 2, ..recipe() };
    let clip = fixture("clip-tiny-quickgelu");
    let mut killed = Record { panic_at: Some(2), ..Record::default() };
    let result = catch_unwind(AssertUnwindSafe(|| {
        train_with_clip(run(moved(), &data, config.clone(), &out, false), clip.to_str(), &mut killed)
    }));
    assert!(result.is_err() && !out.join(FINETUNED_FILE).exists());
    let mut record = Record::default();
    train_with_clip(run(moved(), &data, config, &out, true), None, &mut record).unwrap();
    assert_eq!(record.steps.iter().map(|s| s.step).collect::<Vec<_>>(), [2]);
    let finetuned = ImageClassifier::load(&out.join(FINETUNED_FILE), &Device::Cpu).unwrap();
    assert!(finetuned.meta.extra["train"].contains("clip-tiny-quickgelu"));
}
