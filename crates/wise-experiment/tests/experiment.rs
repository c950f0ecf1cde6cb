//! A shortened version of the digits experiment (fixture CLIP, a few fine-tuning steps,
//! three α values) through every stage, then the re-run rules: nothing is redone when
//! nothing changed, and a changed stage redoes itself and what follows it only.

use std::path::Path;

use candle_core::Device;
use wise_experiment::{plan, run, Experiment, Outcome};
use wise_train::Quiet;

#[path = "../../wise-clip/tests/support/mod.rs"]
mod support;
use support::{fixture, shared_datasets};

fn config(out: &Path, data: &Path, lr: &str) -> String {
    format!(
        r#"
[output]
dir = "{out}"

[[import]]
source = "usps"
from = "{usps}"
to = "{{out}}/data/usps"

[model]
path = "{model}"

[zeroshot]
classes = "{classes}"
templates = "simple"

[data]
train = "{{out}}/data/usps/test"
reference = "USPS"

[data.eval]
USPS = "{{out}}/data/usps/test"
USPS-train = "{{out}}/data/usps/train"

[train]
batch_size = 32
max_steps = 4
lr = {lr}
warmup = 1

[ensemble]
alphas = [0.0, 0.5, 1.0]
"#,
        out = out.display(),
        usps = data.join("digits/usps").display(),
        model = fixture("clip-tiny-quickgelu").display(),
        classes = fixture("zeroshot/classnames.txt").display(),
    )
}

fn outcomes(exp: &Experiment) -> Vec<(String, Outcome)> {
    run(exp, &[], &Device::Cpu, &mut Quiet, &mut |_| {}).unwrap()
}

fn ran(o: &[(String, Outcome)]) -> Vec<&str> {
    o.iter().filter(|(_, x)| *x == Outcome::Ran).map(|(n, _)| n.as_str()).collect()
}

#[test]
fn smoke_experiment_runs_every_stage_and_reruns_only_what_changed() {
    let Some(data) = shared_datasets() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let file = tmp.path().join("exp.toml");
    std::fs::write(&file, config(&out, &data, "1e-4")).unwrap();
    let exp = Experiment::from_file(&file).unwrap();
    assert_eq!(plan(&exp).len(), 5);

    let first = outcomes(&exp);
    assert_eq!(ran(&first), ["import:{out}/data/usps", "zeroshot", "finetune", "sweep", "report"]);
    let results = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = results.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1]["alpha"], 0.5);
    assert_eq!(lines[0]["USPS:n"], 2007);
    for f in ["plot.png", "report.md", "zeroshot.safetensors", "finetune/finetuned.safetensors"] {
        assert!(out.join(f).exists(), "{f}");
    }
    // α = 0 is the zero-shot model itself.
    let zs = wise_zeroshot::ImageClassifier::load(&out.join("zeroshot.safetensors"), &Device::Cpu).unwrap();
    let usps = wise_data::Dataset::open(&out.join("data/usps/test"), None).unwrap();
    let direct = wise_eval::evaluate(&zs, "USPS", &usps, &Default::default(), |_| {}).unwrap();
    assert_eq!(lines[0]["USPS:top1"].as_f64().unwrap(), direct.metrics.top1());

    // Nothing changed: nothing runs.
    assert!(ran(&outcomes(&exp)).is_empty());

    // A new learning rate: fine-tuning and what depends on it, nothing before it.
    std::fs::write(&file, config(&out, &data, "2e-4")).unwrap();
    let exp = Experiment::from_file(&file).unwrap();
    assert_eq!(ran(&outcomes(&exp)), ["finetune", "sweep", "report"]);

    // --force redoes one stage.
    // --force redoes that stage; its output is the same, so the stages after it keep their
    // keys and are not redone.
    let forced = run(&exp, &["zeroshot".into()], &Device::Cpu, &mut Quiet, &mut |_| {}).unwrap();
    assert_eq!(ran(&forced), ["zeroshot"]);
}

#[test]
fn typos_and_inconsistencies_are_named_with_their_line() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("exp.toml");
    let base = config(&tmp.path().join("o"), Path::new("/nowhere"), "1e-4");
    std::fs::write(&file, base.replace("max_steps = 4", "max_step = 4")).unwrap();
    let err = Experiment::from_file(&file).unwrap_err().to_string();
    assert!(err.contains("exp.toml") && err.contains("max_step") && err.contains("line 27"), "{err}");

    std::fs::write(&file, base.replace("reference = \"USPS\"", "reference = \"MNIST\"")).unwrap();
    let err = Experiment::from_file(&file).unwrap_err().to_string();
    assert!(err.contains("reference 'MNIST'"), "{err}");

    std::fs::write(&file, base.replace("alphas = [0.0, 0.5, 1.0]", "alphas = [0.0, 1.5]")).unwrap();
    let err = Experiment::from_file(&file).unwrap_err().to_string();
    assert!(err.contains("1.5"), "{err}");
}

#[test]
fn a_stage_pointing_at_a_missing_dataset_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("exp.toml");
    std::fs::write(&file, config(&tmp.path().join("o"), Path::new("/nowhere"), "1e-4")).unwrap();
    let exp = Experiment::from_file(&file).unwrap();
    let err = run(&exp, &[], &Device::Cpu, &mut Quiet, &mut |_| {}).unwrap_err();
    let chain: Vec<String> = std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
        .map(|e| e.to_string())
        .collect();
    let text = chain.join(": ");
    assert!(text.contains("import") && text.contains("/nowhere"), "{text}");
}

#[test]
fn every_shipped_config_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let exp = Experiment::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!plan(&exp).is_empty());
            n += 1;
        }
    }
    assert!(n >= 4, "{n} configs");
}
