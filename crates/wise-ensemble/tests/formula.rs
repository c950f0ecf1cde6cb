//! The streaming merge against wise-ft's `_merge` run by PyTorch (`tests/fixtures/ensemble`,
//! made by `scripts/make_fixtures.py`): plain and Fisher WiSE-FT at five α, a 3-way average,
//! f32/f16/bf16 tensors and an int64 buffer; the end points bit for bit; the metadata; and
//! inputs that do not fit together.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::SafeTensors;
use wise_ensemble::hash::sha256_file;
use wise_ensemble::{alpha_file_name, merge, MergeSpec, Output};

#[path = "../../wise-clip/tests/support/mod.rs"]
mod support;
use support::{fixture, load, max_abs_diff, raw};

const ALPHAS: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];

fn theta(i: usize) -> PathBuf {
    fixture(&format!("ensemble/theta_{i}.safetensors"))
}

fn fisher(i: usize) -> PathBuf {
    fixture(&format!("ensemble/fisher_{i}.safetensors"))
}

fn wise_ft_outputs(dir: &Path, alphas: &[f64]) -> Vec<Output> {
    alphas
        .iter()
        .map(|&a| Output {
            path: dir.join(alpha_file_name(a)),
            weights: vec![1.0 - a, a],
            metadata: BTreeMap::from([("wise.alpha".to_string(), a.to_string())]),
        })
        .collect()
}

/// Every float tensor of `got` within `tol` of `expected[prefix + name]`, in the same dtype.
fn check_against(got: &Path, expected: &HashMap<String, Tensor>, prefix: &str, tol: f32) -> f32 {
    let mut worst = 0f32;
    let mut n = 0;
    for (name, t) in load(got) {
        if t.dtype() == DType::I64 {
            continue;
        }
        let e = &expected[&format!("{prefix}{name}")];
        assert_eq!(t.dtype(), e.dtype(), "{name}: dtype");
        let d = max_abs_diff(&t, e);
        assert!(d <= tol, "{}: {prefix}{name} differs from PyTorch by {d}", got.display());
        worst = worst.max(d);
        n += 1;
    }
    assert_eq!(n, 42, "float tensors checked");
    worst
}

#[test]
fn wise_ft_plain_and_fisher_match_pytorch() {
    let expected = load(&fixture("ensemble/expected.safetensors"));
    for (kind, fishers) in [("plain", vec![]), ("fisher", vec![fisher(0), fisher(1)])] {
        let dir = tempfile::tempdir().unwrap();
        let mut spec =
            MergeSpec::new(vec![theta(0), theta(1)], "wise-ft", wise_ft_outputs(dir.path(), &ALPHAS));
        spec.fishers = fishers;
        let report = merge(&spec, |_, _| {}).unwrap();
        assert_eq!(report.layout.tensors.len(), 43);
        for alpha in ALPHAS {
            let out = dir.path().join(alpha_file_name(alpha));
            let worst = check_against(&out, &expected, &format!("{kind}.{alpha:.3}."), 1e-6);
            eprintln!("{kind} alpha={alpha}: max |wise - PyTorch| = {worst:e}");
            // The int64 buffer is not averaged: it is copied.
            assert_eq!(
                raw(&out)["vision_model.embeddings.position_ids"],
                raw(&theta(0))["vision_model.embeddings.position_ids"]
            );
        }
    }
}

#[test]
fn alpha_0_and_1_reproduce_the_inputs_bit_for_bit() {
    for fishers in [vec![], vec![fisher(0), fisher(1)]] {
        let dir = tempfile::tempdir().unwrap();
        let mut spec =
            MergeSpec::new(vec![theta(0), theta(1)], "wise-ft", wise_ft_outputs(dir.path(), &[0.0, 1.0]));
        spec.fishers = fishers;
        merge(&spec, |_, _| {}).unwrap();
        assert_eq!(raw(&dir.path().join(alpha_file_name(0.0))), raw(&theta(0)));
        assert_eq!(raw(&dir.path().join(alpha_file_name(1.0))), raw(&theta(1)));
    }
    // Including the zero-shot head's -0.0, which 1·x + 0·y would turn into +0.0.
    let bias = &raw(&theta(0))["classification_head.bias"];
    assert_eq!(&bias[..4], &(-0.0f32).to_le_bytes());
}

#[test]
fn three_way_average_matches_pytorch() {
    let expected = load(&fixture("ensemble/expected.safetensors"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nway.safetensors");
    let spec = MergeSpec::new(
        vec![theta(0), theta(1), theta(2)],
        "weighted",
        vec![Output { path: out.clone(), weights: vec![0.2, 0.3, 0.5], metadata: BTreeMap::new() }],
    );
    merge(&spec, |_, _| {}).unwrap();
    let worst = check_against(&out, &expected, "nway.", 1e-6);
    eprintln!("3-way: max |wise - PyTorch| = {worst:e}");
}

#[test]
fn one_pass_equals_separate_merges() {
    let dir = tempfile::tempdir().unwrap();
    let both = dir.path().join("both");
    merge(
        &MergeSpec::new(vec![theta(0), theta(1)], "wise-ft", wise_ft_outputs(&both, &[0.25, 0.5])),
        |_, _| {},
    )
    .unwrap();
    let alone = dir.path().join("alone");
    merge(&MergeSpec::new(vec![theta(0), theta(1)], "wise-ft", wise_ft_outputs(&alone, &[0.5])), |_, _| {})
        .unwrap();
    let name = alpha_file_name(0.5);
    assert_eq!(std::fs::read(both.join(&name)).unwrap(), std::fs::read(alone.join(&name)).unwrap());
}

#[test]
fn metadata_names_inputs_digests_weights_and_alpha() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = MergeSpec::new(vec![theta(0), theta(1)], "wise-ft", wise_ft_outputs(dir.path(), &[0.25]));
    spec.fishers = vec![fisher(0), fisher(1)];
    spec.fisher_floor = 1e-6;
    let report = merge(&spec, |_, _| {}).unwrap();
    let bytes = std::fs::read(dir.path().join(alpha_file_name(0.25))).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let m = header.metadata().clone().unwrap();
    assert_eq!(m["wise.alpha"], "0.25");
    assert_eq!(m["format"], "pt");
    let e: serde_json::Value = serde_json::from_str(&m["wise.ensemble"]).unwrap();
    assert_eq!(e["method"], "wise-ft");
    assert_eq!(e["fisher_floor"], 1e-6);
    for i in 0..2 {
        let digest = sha256_file(&theta(i)).unwrap();
        assert_eq!(report.input_sha256[i], digest);
        assert_eq!(e["inputs"][i]["sha256"], digest.as_str());
        assert_eq!(e["inputs"][i]["path"], theta(i).display().to_string());
        assert_eq!(e["fisher"][i]["sha256"], sha256_file(&fisher(i)).unwrap().as_str());
    }
    assert_eq!(e["inputs"][0]["weight"], 0.75);
    assert_eq!(e["inputs"][1]["weight"], 0.25);
}

/// `theta_1` rewritten with `edit` applied to its tensors and `metadata` as its header.
fn variant(
    dir: &Path,
    name: &str,
    metadata: Option<HashMap<String, String>>,
    edit: impl FnOnce(&mut BTreeMap<String, Tensor>),
) -> PathBuf {
    let mut tensors: BTreeMap<String, Tensor> = load(&theta(1)).into_iter().collect();
    edit(&mut tensors);
    let path = dir.join(name);
    let list: Vec<(String, Tensor)> = tensors.into_iter().collect();
    wise_clip::weights::save_safetensors_atomic(&path, &list, metadata).unwrap();
    path
}

fn merge_err(inputs: Vec<PathBuf>, dir: &Path) -> String {
    let out =
        Output { path: dir.join("out.safetensors"), weights: vec![0.5, 0.5], metadata: BTreeMap::new() };
    let err = merge(&MergeSpec::new(inputs, "wise-ft", vec![out]), |_, _| {}).unwrap_err().to_string();
    assert!(!dir.join("out.safetensors").exists());
    err
}

#[test]
fn inputs_that_do_not_fit_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let bad = variant(dir.path(), "bad.safetensors", None, |t| {
        t.remove("vision_model.post_layernorm.bias");
        t.insert("extra.weight".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap());
        t.insert("classification_head.bias".into(), Tensor::zeros(11, DType::F32, &Device::Cpu).unwrap());
        let w = t["classification_head.weight"].to_dtype(DType::F16).unwrap();
        t.insert("classification_head.weight".into(), w);
    });
    let err = merge_err(vec![theta(0), bad], dir.path());
    for needle in [
        "cannot be merged",
        "but not in",
        "vision_model.post_layernorm.bias",
        "extra.weight",
        "shapes differ",
        "classification_head.bias: [10] vs [11]",
        "dtypes differ",
        "classification_head.weight: F32 vs F16",
        "bad.safetensors",
        "theta_0.safetensors",
    ] {
        assert!(err.contains(needle), "'{needle}' not in:\n{err}");
    }

    // An integer buffer that differs cannot be averaged.
    let ids = variant(dir.path(), "ids.safetensors", None, |t| {
        let p = (&t["vision_model.embeddings.position_ids"] + 1.0).unwrap();
        t.insert("vision_model.embeddings.position_ids".into(), p);
    });
    let err = merge_err(vec![theta(0), ids], dir.path());
    assert!(err.contains("position_ids") && err.contains("I64") && err.contains("differs"), "{err}");
    // That is found while writing: the temporary file is gone too.
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    assert!(left.iter().all(|n| !n.ends_with(".tmp")), "{left:?}");

    // A file that is not safetensors.
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    let err = merge_err(vec![theta(0), junk], dir.path());
    assert!(err.contains("junk.safetensors") && err.contains("invalid safetensors"), "{err}");
}

fn classifier_meta(classes: &[&str]) -> HashMap<String, String> {
    HashMap::from([
        ("wise.kind".to_string(), "image_classifier".to_string()),
        ("wise.class_names".to_string(), serde_json::to_string(classes).unwrap()),
    ])
}

#[test]
fn class_names_and_their_order_must_agree() {
    let dir = tempfile::tempdir().unwrap();
    let digits = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"];
    let a = variant(dir.path(), "a.safetensors", Some(classifier_meta(&digits)), |_| {});
    let mut swapped = digits;
    swapped.swap(3, 4);
    let b = variant(dir.path(), "b.safetensors", Some(classifier_meta(&swapped)), |_| {});
    let err = merge_err(vec![a.clone(), b], dir.path());
    assert!(
        err.contains("different order") && err.contains("class 3 is 'three'") && err.contains("'four'"),
        "{err}"
    );

    let mut renamed = digits;
    renamed[9] = "niner";
    let c = variant(dir.path(), "c.safetensors", Some(classifier_meta(&renamed)), |_| {});
    let err = merge_err(vec![a.clone(), c], dir.path());
    assert!(err.contains("classes in") && err.contains("nine") && err.contains("niner"), "{err}");

    let err = merge_err(vec![a.clone(), theta(1)], dir.path());
    assert!(err.contains("is a wise classifier") && err.contains("is not"), "{err}");

    // Same classes: the merge keeps them.
    let same = variant(dir.path(), "same.safetensors", Some(classifier_meta(&digits)), |_| {});
    let out = dir.path().join("ok.safetensors");
    let spec = MergeSpec::new(
        vec![a, same],
        "wise-ft",
        vec![Output { path: out.clone(), weights: vec![0.5, 0.5], metadata: BTreeMap::new() }],
    );
    merge(&spec, |_, _| {}).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let m = header.metadata().clone().unwrap();
    assert_eq!(m["wise.class_names"], serde_json::to_string(&digits).unwrap());
    assert_eq!(m["wise.kind"], "image_classifier");
}

#[test]
fn fisher_files_must_fit_the_models() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let run = |fishers: Vec<PathBuf>, floor: f64| {
        let mut spec = MergeSpec::new(
            vec![theta(0), theta(1)],
            "wise-ft",
            vec![Output { path: out.clone(), weights: vec![0.5, 0.5], metadata: BTreeMap::new() }],
        );
        spec.fishers = fishers;
        spec.fisher_floor = floor;
        merge(&spec, |_, _| {}).unwrap_err().to_string()
    };
    let err = run(vec![fisher(0)], 1e-8);
    assert!(err.contains("1 Fisher files for 2 models"), "{err}");
    let err = run(vec![fisher(0), fisher(1)], 0.0);
    assert!(err.contains("must be positive"), "{err}");

    let mut tensors: BTreeMap<String, Tensor> = load(&fisher(1)).into_iter().collect();
    tensors.remove("classification_head.bias");
    tensors
        .insert("classification_head.weight".into(), Tensor::ones((2, 2), DType::F32, &Device::Cpu).unwrap());
    let partial = dir.path().join("partial_fisher.safetensors");
    let list: Vec<(String, Tensor)> = tensors.into_iter().collect();
    wise_clip::weights::save_safetensors_atomic(&partial, &list, None).unwrap();
    let err = run(vec![fisher(0), partial], 1e-8);
    for needle in ["partial_fisher.safetensors", "classification_head.bias", "Fisher [2, 2], model [10, 12]"]
    {
        assert!(err.contains(needle), "'{needle}' not in:\n{err}");
    }
    assert!(!out.exists());
}

/// A weight that is not finite (a diverged fine-tune) or a Fisher value that is not finite
/// and non-negative is an error naming the file and tensor, and nothing is written: an
/// infinite Fisher value made every mixed value NaN, and a NaN one was floored silently.
#[test]
fn values_that_cannot_be_mixed_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let poisoned = |file: PathBuf, name: &str, value: f32| {
        let mut tensors: BTreeMap<String, Tensor> = load(&file).into_iter().collect();
        let t = &tensors["classification_head.weight"];
        let mut values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        values[7] = value;
        let t = Tensor::from_vec(values, t.shape(), &Device::Cpu).unwrap();
        tensors.insert("classification_head.weight".into(), t);
        let path = dir.path().join(name);
        let list: Vec<(String, Tensor)> = tensors.into_iter().collect();
        wise_clip::weights::save_safetensors_atomic(&path, &list, None).unwrap();
        path
    };
    let run = |inputs: Vec<PathBuf>, fishers: Vec<PathBuf>| {
        let mut spec = MergeSpec::new(
            inputs,
            "wise-ft",
            vec![Output { path: out.clone(), weights: vec![0.5, 0.5], metadata: BTreeMap::new() }],
        );
        spec.fishers = fishers;
        merge(&spec, |_, _| {}).unwrap_err().to_string()
    };
    let nan_model = poisoned(theta(1), "nan_model.safetensors", f32::NAN);
    let err = run(vec![theta(0), nan_model], vec![]);
    assert!(err.contains("nan_model.safetensors: tensor 'classification_head.weight' holds NaN"), "{err}");
    for (name, value, said) in [("inf_fisher", f32::INFINITY, "inf"), ("negative_fisher", -0.5, "-0.5")] {
        let bad = poisoned(fisher(1), &format!("{name}.safetensors"), value);
        let err = run(vec![theta(0), theta(1)], vec![fisher(0), bad]);
        let want =
            format!("{name}.safetensors: tensor 'classification_head.weight' holds {said}, where a Fisher");
        assert!(err.contains(&want), "{err}");
    }
    assert!(!out.exists());
}

#[test]
fn weights_and_outputs_are_checked_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let run = |weights: Vec<f64>, path: PathBuf| {
        let spec = MergeSpec::new(
            vec![theta(0), theta(1)],
            "wise-ft",
            vec![Output { path, weights, metadata: BTreeMap::new() }],
        );
        merge(&spec, |_, _| {}).unwrap_err().to_string()
    };
    assert!(run(vec![0.5, 0.6], dir.path().join("x")).contains("sum to"));
    assert!(run(vec![0.5], dir.path().join("x")).contains("1 weights for 2 models"));
    assert!(run(vec![0.5, 0.5], theta(0)).contains("is also an input"));
}
