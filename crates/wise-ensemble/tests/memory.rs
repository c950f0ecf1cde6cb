//! In-memory interpolation, the α sweep and the greedy soup on real classifiers (the tiny
//! fixture tower): the in-memory mix equals the merged checkpoint bit for bit, the sweep's
//! end points equal the inputs' evaluations, and a greedy soup is never worse on the
//! held-out set than its best ingredient.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use wise_clip::ModelSource;
use wise_data::Dataset;
use wise_ensemble::{greedy_soup, interpolate_in_memory, merge, sweep, MergeSpec, Output};
use wise_eval::{evaluate, EvalOptions};
use wise_zeroshot::{zeroshot_classifier, ImageClassifier, Templates};

#[path = "../../wise-clip/tests/support/mod.rs"]
mod support;
use support::{fixture, max_abs_diff, DIGITS};

fn zeroshot() -> ImageClassifier {
    let source = ModelSource::resolve(fixture("clip-tiny-quickgelu").to_str().unwrap()).unwrap();
    let classes: Vec<String> = DIGITS.iter().map(|s| s.to_string()).collect();
    zeroshot_classifier(&source, &classes, &Templates::resolve("simple").unwrap(), &Device::Cpu).unwrap()
}

/// A stand-in for a fine-tuned model: every parameter moved by a fixed pattern.
fn perturbed(base: &ImageClassifier, phase: f64) -> ImageClassifier {
    let tensors = base
        .params
        .iter()
        .map(|(name, v)| {
            let t = v.as_tensor();
            let n = t.elem_count();
            let wave =
                (Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap() + phase).unwrap().sin().unwrap();
            let moved = (t + (wave * 0.2).unwrap().reshape(t.shape()).unwrap()).unwrap();
            (name.clone(), moved)
        })
        .collect();
    let source = wise_clip::weights::InMemory { label: "perturbed".into(), tensors };
    ImageClassifier::from_weights(base.meta.clone(), &source, &Device::Cpu).unwrap()
}

/// An ImageFolder of the fixture images under digit class names.
fn small_dataset(dir: &Path) -> Dataset {
    for (class, images) in [("one", ["rgb.jpg", "wide.png"]), ("seven", ["tall.png", "grey.png"])] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for image in images {
            std::fs::copy(fixture(&format!("images/{image}")), dir.join(class).join(image)).unwrap();
        }
    }
    Dataset::open(dir, None).unwrap()
}

fn save(c: &ImageClassifier, path: PathBuf) -> PathBuf {
    c.save(&path).unwrap();
    path
}

#[test]
fn in_memory_mix_equals_the_merged_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let zs = zeroshot();
    let ft = perturbed(&zs, 0.0);
    let (a, b) = (save(&zs, dir.path().join("zs.safetensors")), save(&ft, dir.path().join("ft.safetensors")));
    let out = dir.path().join("mixed.safetensors");
    let spec = MergeSpec::new(
        vec![a, b],
        "wise-ft",
        vec![Output {
            path: out.clone(),
            weights: vec![0.7, 0.3],
            metadata: BTreeMap::from([("wise.alpha".to_string(), "0.3".to_string())]),
        }],
    );
    merge(&spec, |_, _| {}).unwrap();
    let from_file = ImageClassifier::load(&out, &Device::Cpu).unwrap();
    assert_eq!(from_file.meta.extra.get("alpha").map(String::as_str), Some("0.3"));
    assert_eq!(from_file.meta.class_names, zs.meta.class_names);
    let in_memory = interpolate_in_memory(&[&zs, &ft], &[0.7, 0.3]).unwrap();
    assert_eq!(in_memory.meta.extra.get("alpha").map(String::as_str), Some("0.3"));
    for (name, v) in &in_memory.params {
        let f = from_file.params[name].as_tensor();
        assert_eq!(max_abs_diff(v.as_tensor(), f), 0.0, "{name}");
        // and it is a real mix, not one of the inputs
        if v.elem_count() > 4 {
            assert!(max_abs_diff(v.as_tensor(), zs.params[name].as_tensor()) > 0.0, "{name}");
        }
    }
    // The ends are the inputs.
    let at_one = interpolate_in_memory(&[&zs, &ft], &[0.0, 1.0]).unwrap();
    for (name, v) in &at_one.params {
        assert_eq!(max_abs_diff(v.as_tensor(), ft.params[name].as_tensor()), 0.0, "{name}");
    }
}

#[test]
fn in_memory_inputs_must_agree() {
    let zs = zeroshot();
    let mut other = zs.clone();
    other.meta.class_names.swap(0, 1);
    let err = interpolate_in_memory(&[&zs, &other], &[0.5, 0.5]).err().unwrap().to_string();
    assert!(err.contains("classes") && err.contains("one, zero"), "{err}");
    let err = interpolate_in_memory(&[&zs, &zs], &[0.5, 0.6]).err().unwrap().to_string();
    assert!(err.contains("sum to"), "{err}");
}

#[test]
fn sweep_evaluates_every_alpha_and_its_ends_are_the_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset(dir.path());
    let zs = zeroshot();
    let ft = perturbed(&zs, 1.0);
    let datasets = vec![("Small".to_string(), data.clone())];
    let options = EvalOptions::default();
    let mut seen = Vec::new();
    let points = sweep(&zs, &ft, &[0.0, 0.5, 1.0], false, &datasets, &options, |p| {
        seen.push(p.alpha);
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, [0.0, 0.5, 1.0]);
    let logits = |c: &ImageClassifier| evaluate(c, "Small", &data, &options, |_| {}).unwrap().metrics;
    for (point, model) in [(&points[0], &zs), (&points[2], &ft)] {
        let m = &point.evaluations[0].metrics;
        let r = logits(model);
        assert_eq!((m.n, m.top1(), m.top5()), (r.n, r.top1(), r.top5()));
    }
    assert_eq!(points[1].evaluations[0].metrics.n, 4);
    let err = sweep(&zs, &ft, &[0.5, 1.5], false, &datasets, &options, |_| Ok(())).err().unwrap().to_string();
    assert!(err.contains("1.5") && err.contains("--extrapolate"), "{err}");
    assert_eq!(sweep(&zs, &ft, &[1.5], true, &datasets, &options, |_| Ok(())).unwrap().len(), 1);
}

#[test]
fn greedy_soup_is_never_worse_than_its_best_ingredient() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset(&dir.path().join("data"));
    let zs = zeroshot();
    let paths: Vec<PathBuf> = (0..3)
        .map(|i| save(&perturbed(&zs, i as f64), dir.path().join(format!("ft{i}.safetensors"))))
        .collect();
    let mut log = Vec::new();
    let plan = greedy_soup(&paths, ("Held", &data), &EvalOptions::default(), &Device::Cpu, |l| {
        log.push(l.to_string())
    })
    .unwrap();
    assert_eq!(plan.ingredients.len(), 3);
    let best = plan.ingredients.iter().map(|(_, a)| *a).fold(f64::MIN, f64::max);
    assert!(plan.held_out_top1 >= best);
    assert!(!plan.selected.is_empty());
    // The first ingredient of the soup is (one of) the best.
    let first = plan.ingredients.iter().find(|(p, _)| *p == plan.selected[0]).unwrap();
    assert_eq!(first.1, best);
    assert_eq!(log.len(), 3 + 1 + 2, "{log:?}");
}
