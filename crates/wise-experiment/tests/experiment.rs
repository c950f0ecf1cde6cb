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

    // --force redoes that stage and the stages reading what it rewrote.
    let forced = run(&exp, &["zeroshot".into()], &Device::Cpu, &mut Quiet, &mut |_| {}).unwrap();
    assert_eq!(ran(&forced), ["zeroshot", "finetune", "sweep", "report"]);
    let forced = run(&exp, &["sweep".into()], &Device::Cpu, &mut Quiet, &mut |_| {}).unwrap();
    assert_eq!(ran(&forced), ["sweep", "report"]);

    // The model's stages with the CPU's products in bf16 are other stages (where the CPU
    // has them); the data's are the same.
    let keys = |plan: Vec<wise_experiment::Stage>| -> Vec<(String, String)> {
        plan.into_iter().map(|s| (s.name, s.key)).collect()
    };
    let (f32_keys, bf16_keys) = (keys(plan(&exp)), keys(wise_clip::bf16_mode(|| plan(&exp))));
    let bf16_here = wise_clip::bf16_mode(wise_clip::in_bf16_mode);
    for ((name, f32_key), (_, bf16_key)) in f32_keys.iter().zip(&bf16_keys) {
        let model = ["pretrain", "zeroshot", "finetune", "sweep", "report"].contains(&name.as_str());
        let differs = model && bf16_here;
        assert_eq!(f32_key != bf16_key, differs, "{name}");
    }
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

/// The pretraining stage's architecture and options are checked when the file is read, not
/// after the imports before it have run (a trillion-wide tower was accepted until pretraining
/// allocated it).
#[test]
fn pretraining_settings_are_checked_when_the_file_is_read() {
    let digits =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/digits.toml"))
            .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("exp.toml");
    for (from, to, said) in [
        (
            "width = 64\n",
            "width = 1000000000000\n",
            "[model.pretrain]: vision_config: hidden_size 1000000000000 is outside",
        ),
        (
            "heads = 4\n",
            "heads = 0\n",
            "[model.pretrain]: vision_config: hidden_size 64 is not a multiple of num_attention_heads 0",
        ),
        ("lr = 2e-3", "lr = 0", "[model.pretrain]: pretraining needs lr > 0"),
        (
            "batch_size = 128",
            "batch_size = 1",
            "[model.pretrain]: contrastive pretraining needs a batch size of at least 2",
        ),
        ("wd = 0.1\nwarmup = 50", "wd = -1\nwarmup = 50", "[model.pretrain]: weight decay -1"),
    ] {
        assert!(digits.contains(from), "{from}");
        std::fs::write(&file, digits.replacen(from, to, 1)).unwrap();
        let err = Experiment::from_file(&file).unwrap_err().to_string();
        assert!(err.contains("exp.toml") && err.contains(said), "{to}: {err}");
    }
}

/// A three-class ImageFolder of the fixture images, two per class.
fn small_image_folder(root: &Path) {
    let classes = [
        ("zero", ["rgb.jpg", "grey.png"]),
        ("one", ["palette.png", "rgba.png"]),
        ("two", ["tall.png", "wide.png"]),
    ];
    for (class, files) in classes {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for f in files {
            std::fs::copy(fixture("images").join(f), root.join(class).join(f)).unwrap();
        }
    }
}

fn shift_config(out: &Path, data: &Path, seed: u64) -> String {
    format!(
        r#"
[output]
dir = "{out}"

[[shift]]
data = "{data}"
corruptions = ["fog", "pixelate"]
severity = 3
seed = {seed}
to = "{{out}}/shifted"

[[shift]]
data = "{data}"
corruptions = "gaussian_noise"
severity = "2"
to = "{{out}}/noisy"

[model]
path = "{model}"

[zeroshot]
classes = "{data}"
templates = "simple"

[data]
train = "{data}"
reference = "clean"

[data.eval]
clean = "{data}"
fog = "{{out}}/shifted/fog/3"
pixelate = "{{out}}/shifted/pixelate/3"
noise = "{{out}}/noisy"

[train]
batch_size = 3
max_steps = 2
lr = 1e-4
warmup = 1

[ensemble]
alphas = [0.0, 1.0]
"#,
        out = out.display(),
        data = data.display(),
        model = fixture("clip-tiny-quickgelu").display(),
    )
}

/// Every file below `root` (relative path → bytes).
fn tree(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().unwrap() != wise_shift::SHIFT_MANIFEST {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                files.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

#[test]
fn shift_stages_make_the_corrupted_sets_and_rerun_only_what_reads_them() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    small_image_folder(&data);
    let out = tmp.path().join("run");
    let file = tmp.path().join("exp.toml");
    std::fs::write(&file, shift_config(&out, &data, 1)).unwrap();
    let exp = Experiment::from_file(&file).unwrap();
    let stages = plan(&exp);
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names[..2], ["shift:{out}/shifted", "shift:{out}/noisy"]);
    assert!(stages[0].description.contains("2 corruption(s), severity 3"), "{}", stages[0].description);
    assert!(!stages[0].is_done(&out));

    let first = outcomes(&exp);
    assert_eq!(
        ran(&first),
        ["shift:{out}/shifted", "shift:{out}/noisy", "zeroshot", "finetune", "sweep", "report"]
    );
    assert!(plan(&exp).iter().all(|s| s.is_done(&out)));

    // The sets are wise-shift's, image for image: several pairs nest as <corruption>/<severity>,
    // a single pair is the folder itself.
    let opts = wise_shift::ShiftOptions {
        corruptions: vec![wise_shift::Corruption::Fog, wise_shift::Corruption::Pixelate],
        severities: vec![wise_shift::Severity::new(3).unwrap()],
        seed: 1,
        overwrite: false,
    };
    let direct = tmp.path().join("direct");
    wise_shift::shift_dataset(&data, &direct, &opts, &|_| {}).unwrap();
    assert_eq!(tree(&out.join("shifted")), tree(&direct));
    assert!(out.join("noisy/one/palette.png").is_file());
    let results = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(results.lines().next().unwrap()).unwrap();
    for set in ["clean", "fog", "pixelate", "noise"] {
        assert_eq!(line[format!("{set}:n")], 6, "{set}");
    }

    // Nothing changed: nothing runs.
    assert!(ran(&outcomes(&exp)).is_empty());

    // A new seed redoes that shift and the sweep that reads it, not the model stages.
    std::fs::write(&file, shift_config(&out, &data, 2)).unwrap();
    let exp = Experiment::from_file(&file).unwrap();
    assert_eq!(ran(&outcomes(&exp)), ["shift:{out}/shifted", "sweep", "report"]);

    // --force shift redoes both, and the sweep that reads them.
    let forced = run(&exp, &["shift".into()], &Device::Cpu, &mut Quiet, &mut |_| {}).unwrap();
    assert_eq!(ran(&forced), ["shift:{out}/shifted", "shift:{out}/noisy", "sweep", "report"]);
}

#[test]
fn shift_settings_are_checked_when_the_file_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("exp.toml");
    let base = shift_config(&tmp.path().join("o"), &tmp.path().join("d"), 0);
    let error = |text: String| {
        std::fs::write(&file, text).unwrap();
        Experiment::from_file(&file).unwrap_err().to_string()
    };
    let err = error(base.replace("severity = 3", "severities = 3"));
    assert!(err.contains("severities") && err.contains("line 8"), "{err}");
    let err = error(base.replace("\"pixelate\"]", "\"rain\"]"));
    assert!(err.contains("unknown corruption 'rain'") && err.contains("{out}/shifted"), "{err}");
    let err = error(base.replace("severity = 3", "severity = 6"));
    assert!(err.contains("severity 6 is outside 1..5"), "{err}");
    let err = error(base.replace("severity = 3", "severity = 3.5"));
    assert!(err.contains("severity 1..5"), "{err}");
    let err = error(base.replace("to = \"{out}/noisy\"", "to = \"{out}/shifted\""));
    assert!(err.contains("two [[import]]/[[shift]] stages write to \"{out}/shifted\""), "{err}");
    // "all" and ranges are accepted.
    std::fs::write(
        &file,
        base.replace("[\"fog\", \"pixelate\"]", "\"all\"").replace("severity = 3", "severity = \"1..5\""),
    )
    .unwrap();
    let exp = Experiment::from_file(&file).unwrap();
    assert_eq!(exp.shift[0].corruption_list().unwrap().len(), 15);
    assert_eq!(exp.shift[0].severity_list().unwrap().len(), 5);
}

#[test]
fn import_limit_per_class_subsets_every_split_and_feeds_a_shift() {
    let Some(datasets) = shared_datasets() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let file = tmp.path().join("exp.toml");
    let text = config(&out, &datasets, "1e-4")
        .replace("to = \"{out}/data/usps\"", "to = \"{out}/data/usps\"\nlimit_per_class = 5")
        .replace(
            "[model]",
            "[[shift]]\ndata = \"{out}/data/usps/test\"\ncorruptions = \"contrast\"\nseverity = 5\nto = \"{out}/data/usps-c\"\n\n[model]",
        )
        .replace("USPS-train = \"{out}/data/usps/train\"", "USPS-C = \"{out}/data/usps-c\"");
    std::fs::write(&file, text).unwrap();
    let exp = Experiment::from_file(&file).unwrap();
    assert!(plan(&exp)[0].description.ends_with("(first 5 per class)"), "{}", plan(&exp)[0].description);
    let done = outcomes(&exp);
    assert_eq!(ran(&done)[..2], ["import:{out}/data/usps", "shift:{out}/data/usps-c"]);
    for split in ["train", "test"] {
        let ds = wise_data::Dataset::open(&out.join("data/usps").join(split), None).unwrap();
        assert_eq!(ds.class_counts(), [5; 10], "{split}");
    }
    let results = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(results.lines().next().unwrap()).unwrap();
    assert_eq!(line["USPS:n"], 50);
    assert_eq!(line["USPS-C:n"], 50);
}
