//! `wise ensemble`, `wise fisher` and `wise soup` end to end: the merges against wise-ft's
//! `_merge` run by PyTorch (fixtures in `tests/fixtures/ensemble`), the end points bit for
//! bit, merged classifiers read by `wise eval` with their α, the in-memory sweep, Fisher
//! merging, soups, bad input, and a merge killed midway.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use wise_ensemble::safetensors::SafeTensors;
use wise_zeroshot::ImageClassifier;

#[path = "../../wise-clip/tests/support/mod.rs"]
mod support;
use support::{fixture, load, max_abs_diff, raw};

fn wise(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wise")).args(args).output().expect("wise runs")
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "wise failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn fails_with(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure");
    for n in needles {
        assert!(stderr.contains(n), "'{n}' not in:\n{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ens(name: &str) -> String {
    fixture(&format!("ensemble/{name}")).to_str().unwrap().to_string()
}

fn metadata(path: &Path) -> HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    SafeTensors::read_metadata(&bytes).unwrap().1.metadata().clone().unwrap()
}

/// Every float tensor of `got` equals `expected[prefix + name]` within 1e-6, same dtype.
fn check_against(got: &Path, prefix: &str) {
    let expected = load(&fixture("ensemble/expected.safetensors"));
    let mut n = 0;
    for (name, t) in load(got) {
        if t.dtype() == DType::I64 {
            continue;
        }
        let e = &expected[&format!("{prefix}{name}")];
        assert_eq!(t.dtype(), e.dtype(), "{name}");
        let d = max_abs_diff(&t, e);
        assert!(d <= 1e-6, "{}: {prefix}{name} differs from PyTorch by {d}", got.display());
        n += 1;
    }
    assert_eq!(n, 42);
}

#[test]
fn wise_ft_per_alpha_and_fisher_match_pytorch() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain");
    let (t0, t1) = (ens("theta_0.safetensors"), ens("theta_1.safetensors"));
    let base = ["ensemble", "--zeroshot", &t0, "--finetuned", &t1, "--alpha", "0,0.25,0.5,0.75,1"];
    ok(&wise(&[&base[..], &["--out-dir", s(&plain)]].concat()));
    let names: Vec<String> = {
        let mut v: Vec<String> = std::fs::read_dir(&plain)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names,
        ["0.000", "0.250", "0.500", "0.750", "1.000"].map(|a| format!("wise_ft_alpha={a}.safetensors"))
    );
    let fisher = tmp.path().join("fisher");
    let fishers = format!("{},{}", ens("fisher_0.safetensors"), ens("fisher_1.safetensors"));
    ok(&wise(&[&base[..], &["--out-dir", s(&fisher), "--fisher", &fishers]].concat()));
    for alpha in ["0.000", "0.250", "0.500", "0.750", "1.000"] {
        let file = format!("wise_ft_alpha={alpha}.safetensors");
        check_against(&plain.join(&file), &format!("plain.{alpha}."));
        check_against(&fisher.join(&file), &format!("fisher.{alpha}."));
        let m = metadata(&plain.join(&file));
        assert_eq!(m["wise.alpha"].parse::<f64>().unwrap(), alpha.parse::<f64>().unwrap());
        assert!(metadata(&fisher.join(&file))["wise.ensemble"].contains("\"method\":\"wise-ft+fisher\""));
    }
    // The end points are the inputs, bit for bit (plain and Fisher).
    for dir in [&plain, &fisher] {
        assert_eq!(raw(&dir.join("wise_ft_alpha=0.000.safetensors")), raw(Path::new(&t0)));
        assert_eq!(raw(&dir.join("wise_ft_alpha=1.000.safetensors")), raw(Path::new(&t1)));
    }

    // N-way with weights, and a single α to --out.
    let nway = tmp.path().join("nway.safetensors");
    let models = format!("{t0},{t1},{}", ens("theta_2.safetensors"));
    ok(&wise(&["ensemble", "--models", &models, "--weights", "0.2,0.3,0.5", "--out", s(&nway)]));
    check_against(&nway, "nway.");
    let single = tmp.path().join("single.safetensors");
    ok(&wise(&["ensemble", "--zeroshot", &t0, "--finetuned", &t1, "--alpha", "0.25", "--out", s(&single)]));
    assert_eq!(raw(&single), raw(&plain.join("wise_ft_alpha=0.250.safetensors")));
}

/// The tiny fixture tower as a zero-shot classifier (via `wise zeroshot`), and stand-ins
/// for fine-tuned ones: every parameter moved by a fixed pattern.
fn classifiers(dir: &Path, fine_tuned: usize) -> (PathBuf, Vec<PathBuf>) {
    let zs = dir.join("zs.safetensors");
    ok(&wise(&[
        "zeroshot",
        "--model",
        s(&fixture("clip-tiny-quickgelu")),
        "--classes",
        s(&fixture("zeroshot/classnames.txt")),
        "--templates",
        "simple",
        "--out",
        s(&zs),
    ]));
    let base = ImageClassifier::load(&zs, &Device::Cpu).unwrap();
    let fts = (0..fine_tuned)
        .map(|i| {
            let c = base.clone();
            let mut moved = BTreeMap::new();
            for (name, v) in &c.params {
                let t = v.as_tensor();
                let wave = (Tensor::arange(0f32, t.elem_count() as f32, &Device::Cpu).unwrap() + i as f64)
                    .unwrap()
                    .sin()
                    .unwrap();
                moved.insert(name.clone(), (t + (wave * 0.2).unwrap().reshape(t.shape()).unwrap()).unwrap());
            }
            let src = wise_clip::weights::InMemory { label: "moved".into(), tensors: moved };
            let ft = ImageClassifier::from_weights(c.meta.clone(), &src, &Device::Cpu).unwrap();
            let path = dir.join(format!("ft{i}.safetensors"));
            ft.save(&path).unwrap();
            path
        })
        .collect();
    (zs, fts)
}

/// Fixture images as an ImageFolder of two digit classes.
fn small_dataset(dir: &Path) -> PathBuf {
    for (class, images) in [("one", ["rgb.jpg", "wide.png"]), ("seven", ["tall.png", "grey.png"])] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for image in images {
            std::fs::copy(fixture(&format!("images/{image}")), dir.join(class).join(image)).unwrap();
        }
    }
    dir.to_path_buf()
}

#[test]
fn merged_classifiers_load_in_eval_and_the_sweep_matches_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (zs, fts) = classifiers(tmp.path(), 1);
    let data = small_dataset(&tmp.path().join("data"));
    let spec = format!("Small={}", s(&data));
    let out = tmp.path().join("merged");
    ok(&wise(&[
        "ensemble",
        "--zeroshot",
        s(&zs),
        "--finetuned",
        s(&fts[0]),
        "--alpha",
        "0.5",
        "--out-dir",
        s(&out),
    ]));
    let merged = out.join("wise_ft_alpha=0.500.safetensors");
    let classifier = ImageClassifier::load(&merged, &Device::Cpu).unwrap();
    assert_eq!(classifier.meta.class_names.len(), 10);
    let m = metadata(&merged);
    let e: serde_json::Value = serde_json::from_str(&m["wise.ensemble"]).unwrap();
    assert_eq!(e["inputs"][0]["path"], s(&zs));
    assert_eq!(e["inputs"][1]["weight"], 0.5);
    assert_eq!(e["inputs"][1]["sha256"].as_str().unwrap().len(), 64);

    let results = tmp.path().join("results.jsonl");
    ok(&wise(&["eval", "--model", s(&merged), "--data", &spec, "--results", s(&results)]));
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&results).unwrap().trim()).unwrap();
    assert_eq!(line["alpha"], 0.5);

    // The in-memory sweep: one line per α, no checkpoint written; at α = 0.5 it evaluates
    // the same weights as the merged file (f32 inputs: bit-identical), so the same accuracy.
    let sweep = tmp.path().join("sweep.jsonl");
    let before: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    let stdout = ok(&wise(&[
        "ensemble",
        "--zeroshot",
        s(&zs),
        "--finetuned",
        s(&fts[0]),
        "--alpha",
        "0:1:0.5",
        "--data",
        &spec,
        "--results",
        s(&sweep),
    ]));
    assert!(stdout.contains("Small:top1") && stdout.contains("0.500"), "{stdout}");
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&sweep).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().map(|l| l["alpha"].as_f64().unwrap()).collect::<Vec<_>>(), [0.0, 0.5, 1.0]);
    assert_eq!(lines[1]["Small:top1"], line["Small:top1"]);
    assert_eq!(lines[1]["Small:per_class"], line["Small:per_class"]);
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        before.len() + 1,
        "only the results file is new"
    );
    // `wise eval` runs the same sweep.
    let via_eval = tmp.path().join("via_eval.jsonl");
    let alphas =
        ["--finetuned", s(&fts[0]), "--alphas", "0:1:0.5", "--data", &spec, "--results", s(&via_eval)];
    ok(&wise(&[&["eval", "--zeroshot", s(&zs)], &alphas[..]].concat()));
    let again: Vec<serde_json::Value> = std::fs::read_to_string(&via_eval)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(again.len(), 3);
    for (a, b) in lines.iter().zip(&again) {
        assert_eq!(
            (&a["alpha"], &a["Small:top1"], &a["model"]),
            (&b["alpha"], &b["Small:top1"], &b["model"])
        );
    }
    fails_with(
        &wise(&[
            "ensemble",
            "--zeroshot",
            s(&zs),
            "--finetuned",
            s(&fts[0]),
            "--alpha",
            "2",
            "--data",
            &spec,
        ]),
        &["alpha 2", "--extrapolate"],
    );
}

#[test]
fn fisher_then_fisher_merge() {
    let tmp = tempfile::tempdir().unwrap();
    let (zs, fts) = classifiers(tmp.path(), 1);
    let data = small_dataset(&tmp.path().join("data"));
    let (f0, f1) = (tmp.path().join("f0.safetensors"), tmp.path().join("f1.safetensors"));
    for (model, out) in [(&zs, &f0), (&fts[0], &f1)] {
        ok(&wise(&["fisher", "--model", s(model), "--data", s(&data), "--samples", "3", "--out", s(out)]));
    }
    let fisher = load(&f0);
    let model = ImageClassifier::load(&zs, &Device::Cpu).unwrap();
    assert_eq!(fisher.len(), model.params.len());
    for (name, f) in &fisher {
        assert_eq!(f.dims(), model.params[name].dims(), "{name}");
        let v = f.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| x.is_finite() && *x >= 0.0), "{name}");
    }
    let m = metadata(&f0);
    assert_eq!(m["wise.kind"], "fisher");
    assert_eq!(m["wise.fisher_examples"], "3");

    let out = tmp.path().join("merged.safetensors");
    let fishers = format!("{},{}", s(&f0), s(&f1));
    let args = ["ensemble", "--zeroshot", s(&zs), "--finetuned", s(&fts[0]), "--alpha", "0.5"];
    ok(&wise(&[&args[..], &["--fisher", &fishers, "--out", s(&out)]].concat()));
    ImageClassifier::load(&out, &Device::Cpu).unwrap();
    let e: serde_json::Value = serde_json::from_str(&metadata(&out)["wise.ensemble"]).unwrap();
    assert_eq!(e["fisher"][1]["path"], s(&f1));

    // With the same Fisher for both models, Fisher merging is plain interpolation.
    let same = tmp.path().join("same.safetensors");
    let plain = tmp.path().join("plain.safetensors");
    ok(&wise(&[&args[..], &["--fisher", &format!("{},{}", s(&f0), s(&f0)), "--out", s(&same)]].concat()));
    ok(&wise(&[&args[..], &["--out", s(&plain)]].concat()));
    let (a, b) = (load(&same), load(&plain));
    for (name, t) in &a {
        let scale = b[name].abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(max_abs_diff(t, &b[name]) <= 1e-6 * scale.max(1.0), "{name}");
    }
    fails_with(
        &wise(&[&args[..], &["--fisher", s(&f0), "--out", s(&same)]].concat()),
        &["1 Fisher files for 2 models"],
    );
}

#[test]
fn uniform_and_greedy_soups() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, fts) = classifiers(tmp.path(), 3);
    let data = small_dataset(&tmp.path().join("data"));
    let models = fts.iter().map(|p| s(p).to_string()).collect::<Vec<_>>().join(",");
    let uniform = tmp.path().join("uniform.safetensors");
    ok(&wise(&["soup", "--models", &models, "--mode", "uniform", "--out", s(&uniform)]));
    let third = 1.0 / 3.0;
    let weights = format!("{third},{third},{third}");
    let nway = tmp.path().join("nway.safetensors");
    ok(&wise(&["ensemble", "--models", &models, "--weights", &weights, "--out", s(&nway)]));
    assert_eq!(raw(&uniform), raw(&nway));
    assert_eq!(metadata(&uniform)["wise.soup"], r#"{"mode":"uniform"}"#);

    let greedy = tmp.path().join("greedy.safetensors");
    let held_out = format!("Held={}", s(&data));
    ok(&wise(&[
        "soup",
        "--models",
        &models,
        "--mode",
        "greedy",
        "--held-out",
        &held_out,
        "--out",
        s(&greedy),
    ]));
    let soup: serde_json::Value = serde_json::from_str(&metadata(&greedy)["wise.soup"]).unwrap();
    assert_eq!(soup["mode"], "greedy");
    assert_eq!(soup["ingredients"].as_array().unwrap().len(), 3);
    let selected = soup["selected"].as_array().unwrap();
    assert!(!selected.is_empty());
    let best = soup["ingredients"].as_array().unwrap().iter().map(|i| i["held_out_top1"].as_f64().unwrap());
    assert!(soup["held_out_top1"].as_f64().unwrap() >= best.fold(0.0, f64::max));
    let e: serde_json::Value = serde_json::from_str(&metadata(&greedy)["wise.ensemble"]).unwrap();
    assert_eq!(e["inputs"].as_array().unwrap().len(), selected.len());
    ImageClassifier::load(&greedy, &Device::Cpu).unwrap();
    fails_with(
        &wise(&["soup", "--models", &models, "--mode", "greedy", "--out", s(&greedy)]),
        &["--held-out"],
    );
}

#[test]
fn bad_input_is_reported_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (zs, _) = classifiers(tmp.path(), 0);
    let out = tmp.path().join("out");
    let (t0, t1) = (ens("theta_0.safetensors"), ens("theta_1.safetensors"));
    let o = s(&out);
    fails_with(
        &wise(&["ensemble", "--zeroshot", &t0, "--finetuned", &t1, "--alpha", "1.5", "--out-dir", o]),
        &["alpha 1.5", "--extrapolate"],
    );
    ok(&wise(&[
        "ensemble",
        "--zeroshot",
        &t0,
        "--finetuned",
        &t1,
        "--alpha=-0.5",
        "--extrapolate",
        "--out-dir",
        o,
    ]));
    assert!(out.join("wise_ft_alpha=-0.500.safetensors").exists());
    std::fs::remove_dir_all(&out).unwrap();
    fails_with(
        &wise(&["ensemble", "--models", &format!("{t0},{t1}"), "--weights", "0.5,0.6", "--out", o]),
        &["sum to"],
    );
    fails_with(
        &wise(&["ensemble", "--zeroshot", &t0, "--finetuned", &t1, "--alpha", "0,1", "--out", o]),
        &["--out-dir"],
    );
    fails_with(
        &wise(&["ensemble", "--zeroshot", &t0, "--finetuned", &t1, "--alpha", "0:1", "--out-dir", o]),
        &["START:STOP:STEP"],
    );
    // A classifier and the fixture checkpoints: every difference is listed.
    fails_with(
        &wise(&["ensemble", "--zeroshot", s(&zs), "--finetuned", &t1, "--alpha", "0.5", "--out-dir", o]),
        &[
            "cannot be merged",
            "zs.safetensors",
            "theta_1.safetensors",
            "position_ids",
            "dtypes differ",
            "is a wise classifier",
        ],
    );
    let missing = tmp.path().join("missing.safetensors");
    fails_with(
        &wise(&["ensemble", "--zeroshot", &t0, "--finetuned", s(&missing), "--alpha", "0.5", "--out-dir", o]),
        &["missing.safetensors"],
    );
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().count() == 0, "nothing written");
}

/// A safetensors file of one f32 tensor of `n` elements, all zero, written sparse (the
/// header, then a hole), so the test makes a large input without writing it.
fn sparse_checkpoint(path: &Path, n: usize) {
    use std::io::Write;
    let tensors = vec![("w".to_string(), wise_ensemble::safetensors::Dtype::F32, vec![n])];
    let (header, data_len) = wise_ensemble::writer::header_bytes(&tensors, &BTreeMap::new()).unwrap();
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&header).unwrap();
    f.set_len((8 + header.len() + data_len) as u64).unwrap();
}

#[test]
fn a_killed_merge_leaves_nothing_at_the_output_path() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a.safetensors"), tmp.path().join("b.safetensors"));
    for p in [&a, &b] {
        sparse_checkpoint(p, 128 << 20); // 512 MB each
    }
    let dir = tmp.path().join("out");
    let args =
        ["ensemble", "--zeroshot", s(&a), "--finetuned", s(&b), "--alpha", "0.5", "--out-dir", s(&dir)];
    let mut child = Command::new(env!("CARGO_BIN_EXE_wise"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it as soon as its temporary file exists, i.e. while it is writing.
    let start = Instant::now();
    let mut saw_temporary = false;
    while start.elapsed() < Duration::from_secs(60) {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            if entries.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".tmp")) {
                saw_temporary = true;
                break;
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(saw_temporary, "the merge ended ({status}) before it could be killed: make the inputs larger");
    assert!(!status.success());
    let output = dir.join("wise_ft_alpha=0.500.safetensors");
    assert!(!output.exists(), "a killed merge left {}", output.display());
    // Only its hidden temporary file is left (SIGKILL cannot be caught to remove it).
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        assert!(name.starts_with(".wise_ft_alpha=0.500.safetensors.") && name.ends_with(".tmp"), "{name}");
    }

    // Run to completion, the same merge gives a complete file.
    ok(&wise(&args));
    let bytes = std::fs::read(&output).unwrap();
    assert_eq!(SafeTensors::deserialize(&bytes).unwrap().tensor("w").unwrap().shape(), [128 << 20]);
}
