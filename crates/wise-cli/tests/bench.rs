//! `wise bench`: the JSON line it prints, and its argument checks. (Timings themselves are
//! benchmarks, not tests: see BENCHMARKS.md.)

#[path = "../../wise-clip/tests/support/mod.rs"]
mod support;
use support::fixture;
mod common;
use common::{fails_with, ok, s, wise};

/// Five fixture images in two class folders (`even`: 3, `odd`: 2).
fn two_class_images() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let images = fixture("images");
    let names = ["rgb.jpg", "wide.png", "tall.png", "grey.png", "palette.png"];
    for (i, name) in names.iter().enumerate() {
        let class = dir.path().join(if i % 2 == 0 { "even" } else { "odd" });
        std::fs::create_dir_all(&class).unwrap();
        std::fs::copy(images.join(name), class.join(name)).unwrap();
    }
    dir
}

#[test]
fn preprocess_mode_reports_every_image_of_the_dataset() {
    let dir = two_class_images();
    let out = ok(&wise(&[
        "bench",
        "--mode",
        "preprocess",
        "--data",
        s(dir.path()),
        "--limit",
        "4",
        "--iters",
        "2",
        "--warmup",
        "0",
    ]));
    let line: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(line["mode"], "preprocess");
    assert_eq!(line["impl"], "wise");
    assert_eq!(line["images"], 4, "--limit 4 of 5");
    assert_eq!(line["iter_s"].as_array().unwrap().len(), 2);
    assert!(line["img_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(line["transform"], "eval");

    let augmented = ["bench", "--mode", "preprocess", "--augment", "--data", s(dir.path()), "--iters", "1"];
    let line: serde_json::Value = serde_json::from_str(ok(&wise(&augmented)).trim()).unwrap();
    assert_eq!((line["transform"].as_str(), line["images"].as_u64()), (Some("train"), Some(5)));
}

/// `--mode train --data`: each step takes the next batch `wise train` makes of the data (full
/// batches, shuffled, augmented), across epochs; the head has the data's classes.
#[test]
fn train_mode_feeds_steps_from_the_data() {
    let dir = two_class_images();
    let args = ["bench", "--mode", "train", "--batch-size", "2", "--iters", "3", "--warmup", "0"];
    // 5 images make 2 full batches an epoch: the third step starts the second epoch.
    let out = ok(&wise(&[&args[..], &["--data", s(dir.path())]].concat()));
    let line: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!((line["mode"].as_str(), line["images"].as_u64()), (Some("train"), Some(2)));
    assert_eq!(line["data_images"], 5);
    assert_eq!(line["iter_s"].as_array().unwrap().len(), 3);
    // The steps' phases include the wait for each batch, within the steps' time.
    let phases = line["phase_s"].as_object().expect("phase_s");
    let per_step: f64 = phases.values().map(|v| v.as_f64().unwrap()).sum();
    let iterations: Vec<f64> =
        line["iter_s"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect();
    let mean = iterations.iter().sum::<f64>() / 3.0;
    assert!(phases.contains_key("data") && per_step <= mean + 0.01, "{phases:?} vs {mean} s a step");
    // Three times the tower's forward and a head of the data's 2 classes (not `--classes`).
    let infer =
        ok(&wise(&["bench", "--mode", "infer", "--batch-size", "1", "--iters", "1", "--warmup", "0"]));
    let infer: serde_json::Value = serde_json::from_str(infer.trim()).unwrap();
    let forward = infer["model_gflop_per_img"].as_f64().unwrap();
    let flops = line["model_gflop_per_img"].as_f64().unwrap();
    let expected = 3.0 * (forward + 2.0 * 512.0 * 2.0 / 1e9);
    assert!((flops - expected).abs() < 0.003, "{flops} GFLOP, expected {expected}");

    let too_big = ["bench", "--mode", "train", "--batch-size", "6", "--data", s(dir.path())];
    fails_with(&wise(&too_big), &["5 images, less than one batch of 6"]);
}

#[test]
fn bad_arguments_are_named() {
    fails_with(&wise(&["bench", "--preset", "ViT-X/99"]), &["unknown --preset ViT-X/99", "ViT-B/32"]);
    fails_with(&wise(&["bench", "--mode", "eval"]), &["need --data"]);
    fails_with(&wise(&["bench", "--mode", "infer", "--data", "x"]), &["--data is for"]);
    fails_with(&wise(&["bench", "--mode", "eval", "--augment", "--data", "x"]), &["--augment is for"]);
    fails_with(&wise(&["bench", "--batch-size", "0"]), &["--batch-size"]);
    fails_with(&wise(&["bench", "--device", "tpu"]), &["tpu"]);
}

/// `WISE_PROFILE=1` adds the time of each part of the forward; the parts are timed inside
/// the iterations, so together they take no longer than the iteration itself.
#[test]
fn profile_splits_the_forward_into_parts() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wise"))
        .args(["bench", "--mode", "infer", "--batch-size", "1", "--iters", "1", "--warmup", "0"])
        .env("WISE_PROFILE", "1")
        .output()
        .unwrap();
    let line: serde_json::Value = serde_json::from_str(ok(&out).trim()).expect("one JSON line");
    let parts = line["profile_s"].as_object().expect("profile_s");
    for part in ["embeddings", "pooling and projection"] {
        assert!(parts.contains_key(part), "{part} missing from {parts:?}");
    }
    let blocks = ["transformer block (fused)", "mlp fc1", "layer norm"];
    assert!(blocks.iter().any(|b| parts.contains_key(*b)), "no block part in {parts:?}");
    let sum: f64 = parts.values().map(|v| v.as_f64().unwrap()).sum();
    let iteration = line["iter_s"][0].as_f64().unwrap();
    assert!(sum > 0.0 && sum <= iteration + 0.01, "parts {sum} s, iteration {iteration} s");
    // Without the variable there is no profile.
    let plain =
        ok(&wise(&["bench", "--mode", "infer", "--batch-size", "1", "--iters", "1", "--warmup", "0"]));
    let plain: serde_json::Value = serde_json::from_str(plain.trim()).unwrap();
    assert!(plain.get("profile_s").is_none());
}

/// `--mode sgemm` rates the model's product shapes (batch × tokens rows) and 2048³, and
/// `gflops_best` is the best of them; infer and train lines carry the model's FLOPs per
/// image (train: three times the tower's forward plus the head's).
#[test]
fn sgemm_mode_and_model_flops() {
    let out = ok(&wise(&["bench", "--mode", "sgemm", "--batch-size", "2", "--iters", "1", "--warmup", "0"]));
    let line: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(line["mode"], "sgemm");
    let rates = line["gflops"].as_object().expect("gflops");
    let shapes: Vec<&str> = rates.keys().map(String::as_str).collect();
    for shape in ["100x768x2304", "100x768x768", "100x768x3072", "100x3072x768", "2048x2048x2048"] {
        assert!(shapes.contains(&shape), "{shape} missing from {shapes:?}");
    }
    let best = rates.values().map(|v| v.as_f64().unwrap()).fold(0.0, f64::max);
    assert!(best > 0.0 && (line["gflops_best"].as_f64().unwrap() - best).abs() < 1e-9);

    let flops = |mode: &str| {
        let args = [
            "bench",
            "--mode",
            mode,
            "--batch-size",
            "1",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--classes",
            "10",
        ];
        let line: serde_json::Value = serde_json::from_str(ok(&wise(&args)).trim()).unwrap();
        line["model_gflop_per_img"].as_f64().expect("model_gflop_per_img")
    };
    let (infer, train) = (flops("infer"), flops("train"));
    // ViT-B/32: open_clip's profile counts 4.41 GMACs for the image tower.
    assert!((infer - 8.82).abs() < 0.01, "{infer} GFLOP");
    let head = 3.0 * 2.0 * 512.0 * 10.0 / 1e9;
    assert!((train - 3.0 * infer - head).abs() < 0.002, "{train} vs 3 × {infer} + head");
}

/// `--mode zeroshot` builds the head from every class × template prompt and reports
/// prompts, not images; a missing class-name file is named.
#[test]
fn zeroshot_mode_counts_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let names = dir.path().join("classes.txt");
    std::fs::write(&names, "cat\ndog\n\nhot dog\n").unwrap();
    let args = ["bench", "--mode", "zeroshot", "--templates", "simple", "--iters", "2", "--warmup", "0"];
    let out = ok(&wise(&[&args[..], &["--classnames", s(&names)]].concat()));
    let line: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(line["mode"], "zeroshot");
    assert_eq!((line["classes"].as_u64(), line["templates"].as_u64()), (Some(3), Some(1)));
    assert_eq!(line["prompts"], 3);
    assert_eq!(line["batch_size"], 256, "zeroshot batches as `wise zeroshot` does");
    assert_eq!(line["iter_s"].as_array().unwrap().len(), 2);
    assert!(line["prompts_per_s"].as_f64().unwrap() > 0.0);
    assert!(line.get("img_per_s").is_none());
    let missing = dir.path().join("nope.txt");
    fails_with(&wise(&[&args[..], &["--classnames", s(&missing)]].concat()), &["nope.txt"]);
}
