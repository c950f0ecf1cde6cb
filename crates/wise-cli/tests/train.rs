//! `wise train` end to end on real digits with the tiny fixture CLIP: a run killed with
//! SIGKILL mid-epoch and resumed ends bit-identical to an uninterrupted one; non-finite
//! losses, mismatched classes and configs are refused with the cause; the frozen-tower
//! mode trains only the head, from cached features; `--loss contrastive` (FLYP) writes a
//! classifier that `wise eval` reads and interpolates, and refuses what it cannot do.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use candle_core::Device;
use wise_clip::weights::SafetensorsFile;

#[path = "../../wise-clip/tests/support/mod.rs"]
mod support;
use support::{fixture, shared_datasets};
mod common;
use common::{fails_with, ok, s};

fn wise(args: &[String], cache: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wise"));
    cmd.args(args).env("WISE_CACHE", cache);
    cmd
}

fn run(args: &[String], cache: &Path) -> Output {
    wise(args, cache).output().unwrap()
}

/// A zero-shot classifier of the tiny CLIP and a small USPS training set (6 per class).
struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    classifier: PathBuf,
    train: PathBuf,
}

fn setup() -> Option<Setup> {
    let data = shared_datasets()?;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let usps = root.join("usps");
    wise_data::import(wise_data::Source::Usps, &data.join("digits/usps"), &usps, false).unwrap();
    let train = root.join("train");
    for digit in 0..10 {
        let from = usps.join("train").join(digit.to_string());
        let to = train.join(digit.to_string());
        std::fs::create_dir_all(&to).unwrap();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&from).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files.iter().take(6) {
            std::fs::copy(f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(usps.join("classnames.txt"), train.join("classnames.txt")).unwrap();
    let classifier = root.join("zs.safetensors");
    let status = Command::new(env!("CARGO_BIN_EXE_wise"))
        .args(["zeroshot", "--model", s(&fixture("clip-tiny-quickgelu")), "--classes"])
        .arg(fixture("zeroshot/classnames.txt"))
        .args(["--templates", "simple", "--out", s(&classifier)])
        .status()
        .unwrap();
    assert!(status.success());
    Some(Setup { _tmp: tmp, root, classifier, train })
}

fn train_args(setup: &Setup, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "--model",
        s(&setup.classifier),
        "--data",
        s(&setup.train),
        "--out",
        s(out),
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--warmup",
        "3",
        "--seed",
        "7",
        "--save-every",
        "1",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn saved_step(out: &Path) -> Option<u64> {
    let file = SafetensorsFile::open(&out.join("resume.safetensors")).ok()?;
    let state: serde_json::Value = serde_json::from_str(&file.user_metadata()?["wise.train_state"]).ok()?;
    state["progress"]["step"].as_u64()
}

fn assert_same_weights(a: &Path, b: &Path) {
    let (fa, fb) = (SafetensorsFile::open(a).unwrap(), SafetensorsFile::open(b).unwrap());
    assert_eq!(fa.names(), fb.names());
    for name in fa.names() {
        let (ta, tb) = (fa.view(&name).unwrap(), fb.view(&name).unwrap());
        assert!(ta.data() == tb.data(), "{name} differs between {} and {}", a.display(), b.display());
    }
}

#[test]
fn killed_run_resumes_bit_identically() {
    let Some(setup) = setup() else { return };
    let cache = setup.root.join("cache");
    let straight = setup.root.join("straight");
    let out = ok(&run(&train_args(&setup, &straight, &[]), &cache));
    assert!(out.contains("trained 45 steps"), "{out}");
    // The run's peak RSS, to size the next batch by: a fixture's run holds tens of MB.
    let peak = out.split(", peak memory ").nth(1).and_then(|r| r.split(" MB").next()?.parse::<f64>().ok());
    assert!(peak.is_some_and(|mb| (5.0..1000.0).contains(&mb)), "{out}");

    // 15 batches per epoch, 45 steps: kill somewhere inside epoch 2.
    let killed = setup.root.join("killed");
    let mut child = wise(&train_args(&setup, &killed, &[]), &cache)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if saved_step(&killed).is_some_and(|s| s >= 20) {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let at = saved_step(&killed).unwrap();
    assert!(at < 45 && !at.is_multiple_of(15), "killed at step {at}, not mid-epoch");
    assert!(!killed.join("finetuned.safetensors").exists());

    // Resuming with another config is refused, naming what differs.
    fails_with(&run(&train_args(&setup, &killed, &["--resume", "--lr", "2e-3"]), &cache), &["lr: 0.002"]);
    // Starting over in a folder with a run is refused too.
    fails_with(&run(&train_args(&setup, &killed, &[]), &cache), &["--resume"]);

    ok(&run(&train_args(&setup, &killed, &["--resume"]), &cache));
    assert_same_weights(&straight.join("finetuned.safetensors"), &killed.join("finetuned.safetensors"));
    assert_same_weights(&straight.join("epoch_3.safetensors"), &killed.join("epoch_3.safetensors"));

    // The fine-tuned classifier is a classifier: it loads, and training changed it.
    let before = wise_zeroshot::ImageClassifier::load(&setup.classifier, &Device::Cpu).unwrap();
    let after =
        wise_zeroshot::ImageClassifier::load(&straight.join("finetuned.safetensors"), &Device::Cpu).unwrap();
    let name = "vision_model.encoder.layers.0.mlp.fc1.weight";
    let d = (before.params[name].as_tensor() - after.params[name].as_tensor()).unwrap().abs().unwrap();
    assert!(d.max_all().unwrap().to_scalar::<f32>().unwrap() > 1e-4);
    assert!(after.meta.extra["train"].contains("\"step\":45"));
}

#[test]
fn training_fits_the_training_set_and_evaluates_each_epoch() {
    let Some(setup) = setup() else { return };
    let cache = setup.root.join("cache");
    let out = setup.root.join("fit");
    let eval = format!("Train={}", s(&setup.train));
    let args = train_args(&setup, &out, &["--epochs", "6", "--no-augment", "--eval", &eval]);
    ok(&run(&args, &cache));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    let first = lines[0]["Train:top1"].as_f64().unwrap();
    let last = lines[5]["Train:top1"].as_f64().unwrap();
    assert!(last > first && last >= 0.5, "training-set accuracy {first} -> {last}");
}

#[test]
fn frozen_encoder_trains_only_the_head_from_cached_features() {
    let Some(setup) = setup() else { return };
    let cache = setup.root.join("cache");
    let out = setup.root.join("probe");
    ok(&run(&train_args(&setup, &out, &["--freeze-encoder"]), &cache));
    let before = SafetensorsFile::open(&setup.classifier).unwrap();
    let after = SafetensorsFile::open(&out.join("finetuned.safetensors")).unwrap();
    for name in before.names() {
        let same = before.view(&name).unwrap().data() == after.view(&name).unwrap().data();
        assert_eq!(same, !name.starts_with("classification_head."), "{name}");
    }
    let cached = || std::fs::read_dir(cache.join("features")).unwrap().count();
    assert_eq!(cached(), 1);
    // A second run on the same tower and data reuses the features.
    ok(&run(&train_args(&setup, &setup.root.join("probe2"), &["--freeze-encoder"]), &cache));
    assert_eq!(cached(), 1);
    assert_same_weights(&out.join("finetuned.safetensors"), &setup.root.join("probe2/finetuned.safetensors"));
}

#[test]
fn bad_training_input_is_refused_with_the_cause() {
    let Some(setup) = setup() else { return };
    let cache = setup.root.join("cache");
    // An exploding learning rate: the loss goes non-finite and the step is named.
    let out = setup.root.join("nan");
    let r =
        run(&train_args(&setup, &out, &["--lr", "1e12", "--clip-grad-norm", "0", "--warmup", "0"]), &cache);
    fails_with(&r, &["loss is", "at step", "resume.safetensors"]);
    assert!(!out.join("finetuned.safetensors").exists());

    fails_with(
        &run(&train_args(&setup, &setup.root.join("x"), &["--batch-size", "0"]), &cache),
        &["batch size"],
    );
    fails_with(&run(&train_args(&setup, &setup.root.join("x"), &["--lr=-1"]), &cache), &["lr"]);

    // A step that cannot fit in the memory allowed is refused before it starts, saying what
    // it needs; a limit that is not a size is named.
    let mut cmd = wise(&train_args(&setup, &setup.root.join("m"), &[]), &cache);
    let r = cmd.env("WISE_MEMORY_LIMIT", "1M").output().unwrap();
    fails_with(&r, &["a training step of 4 images needs", "1 MB is available under WISE_MEMORY_LIMIT"]);
    fails_with(&r, &["not even one image a batch fits", "WISE_MEMORY_CHECK=off"]);
    assert!(!setup.root.join("m/resume.safetensors").exists());
    let mut cmd = wise(&train_args(&setup, &setup.root.join("m"), &[]), &cache);
    fails_with(
        &cmd.env("WISE_MEMORY_LIMIT", "lots").output().unwrap(),
        &["WISE_MEMORY_LIMIT: 'lots' is not a size"],
    );
    let mut cmd = wise(&train_args(&setup, &setup.root.join("m"), &["--max-steps", "1"]), &cache);
    ok(&cmd.env("WISE_MEMORY_LIMIT", "1M").env("WISE_MEMORY_CHECK", "off").output().unwrap());

    // Training data whose classes are not the head's.
    let other = setup.root.join("other");
    std::fs::create_dir_all(other.join("cat")).unwrap();
    std::fs::copy(fixture("images/grey.png"), other.join("cat/a.png")).unwrap();
    let mut args = train_args(&setup, &setup.root.join("y"), &[]);
    let data = args.iter().position(|a| a == "--data").unwrap();
    args[data + 1] = s(&other).to_string();
    fails_with(&run(&args, &cache), &["not in the head: cat"]);
}

#[test]
fn contrastive_training_writes_a_classifier_that_eval_reads() {
    let Some(setup) = setup() else { return };
    let cache = setup.root.join("cache");
    let out = setup.root.join("flyp");
    let args = train_args(&setup, &out, &["--loss", "contrastive", "--max-steps", "3", "--no-augment"]);
    let said = ok(&run(&args, &cache));
    assert!(said.contains("trained 3 steps"), "{said}");

    // Both towers trained: the image tower moved, the head was rebuilt from the moved text
    // tower (bias 0), and the text tower is kept in the resume state.
    let before = wise_zeroshot::ImageClassifier::load(&setup.classifier, &Device::Cpu).unwrap();
    let after =
        wise_zeroshot::ImageClassifier::load(&out.join("finetuned.safetensors"), &Device::Cpu).unwrap();
    let moved = |name: &str| {
        let d = (before.params[name].as_tensor() - after.params[name].as_tensor()).unwrap().abs().unwrap();
        d.max_all().unwrap().to_scalar::<f32>().unwrap()
    };
    assert!(moved("vision_model.encoder.layers.0.mlp.fc1.weight") > 1e-5);
    assert!(moved("classification_head.weight") > 1e-5);
    assert_eq!(moved("classification_head.bias"), 0.0);
    assert!(after.meta.extra["train"].contains("\"loss\":\"contrastive\""));
    let state = SafetensorsFile::open(&out.join("resume.safetensors")).unwrap();
    assert!(state.names().contains(&"text_model.final_layer_norm.weight".to_string()));
    assert!(state.names().contains(&"logit_scale".to_string()));

    // wise eval reads it, alone and interpolated with the zero-shot classifier (WiSE-FT).
    let data = format!("Train={}", s(&setup.train));
    let results = setup.root.join("results.jsonl");
    let ft = out.join("finetuned.safetensors");
    ok(&run(&s_args(&["eval", "--model", s(&ft), "--data", &data, "--results", s(&results)]), &cache));
    let sweep = [
        "eval",
        "--zeroshot",
        s(&setup.classifier),
        "--finetuned",
        s(&ft),
        "--alphas",
        "0:1:0.5",
        "--data",
        &data,
        "--results",
        s(&results),
    ];
    ok(&run(&s_args(&sweep), &cache));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&results)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines.iter().all(|l| l["Train:top1"].as_f64().is_some()), "{lines:?}");
    // The sweep's α = 1 end is the fine-tuned classifier.
    assert_eq!(lines[0]["Train:top1"], lines[3]["Train:top1"]);
}

#[test]
fn contrastive_training_refuses_what_it_cannot_do() {
    let Some(setup) = setup() else { return };
    let cache = setup.root.join("cache");
    let x = setup.root.join("x");
    let flyp = |extra: &[&str]| {
        let mut e = vec!["--loss", "contrastive"];
        e.extend_from_slice(extra);
        train_args(&setup, &x, &e)
    };
    fails_with(&run(&flyp(&["--freeze-encoder"]), &cache), &["freeze-encoder", "contrastive"]);
    fails_with(&run(&flyp(&["--label-smoothing", "0.1"]), &cache), &["label smoothing"]);
    fails_with(&run(&train_args(&setup, &x, &["--loss", "mse"]), &cache), &["unknown loss 'mse'"]);
    fails_with(&run(&train_args(&setup, &x, &["--clip", "somewhere"]), &cache), &["--clip", "contrastive"]);

    // A classifier whose source model has gone: named, with the way out.
    let gone = setup.root.join("gone-clip");
    std::fs::create_dir_all(&gone).unwrap();
    for f in std::fs::read_dir(fixture("clip-tiny-quickgelu")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, gone.join(f.file_name().unwrap())).unwrap();
    }
    let orphan = setup.root.join("orphan.safetensors");
    let made = run(
        &s_args(&[
            "zeroshot",
            "--model",
            s(&gone),
            "--classes",
            s(&fixture("zeroshot/classnames.txt")),
            "--templates",
            "simple",
            "--out",
            s(&orphan),
        ]),
        &cache,
    );
    ok(&made);
    std::fs::remove_dir_all(&gone).unwrap();
    let mut args = flyp(&["--max-steps", "1"]);
    let model = args.iter().position(|a| a == "--model").unwrap();
    args[model + 1] = s(&orphan).to_string();
    fails_with(&run(&args, &cache), &[s(&gone), "source_model", "--clip", s(&orphan)]);
    assert!(!x.join("finetuned.safetensors").exists());
    // --clip points at it; an image tower of other shapes is refused.
    let gelu = fixture("clip-tiny-gelu");
    let mut wrong = args.clone();
    wrong.extend(["--clip".to_string(), s(&gelu).to_string()]);
    fails_with(&run(&wrong, &cache), &["does not match", "clip-tiny-gelu"]);
    args.extend(["--clip".to_string(), s(&fixture("clip-tiny-quickgelu")).to_string()]);
    ok(&run(&args, &cache));
    assert!(x.join("finetuned.safetensors").exists());
}

fn s_args(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}
