//! wise-experiment: a whole WiSE-FT experiment from one TOML file (`wise run`).
//!
//! The stages are the paper's method end to end: import data → (corrupt test sets with
//! wise-shift, for synthetic shifts) → (pretrain a CLIP) →
//! zero-shot classifier → fine-tune → evaluate the weight-space interpolations
//! θ(α) = (1−α)·θ_zero-shot + α·θ_fine-tuned for every α on the reference and shifted test
//! sets → plot and report. Finished stages are skipped on a re-run (see [`stages`]), so an
//! interrupted run continues where it stopped.

pub mod config;
pub mod stages;

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde_json::json;
use wise_clip::ModelSource;
use wise_data::import::ImportOptions;
use wise_data::{Dataset, Source};
use wise_eval::{evaluate_many, EvalOptions, ResultsFile};
use wise_shift::{shift_dataset, ShiftOptions};
use wise_train::pretrain::{load_captioned, pretrain};
use wise_train::{train, Observer, Run};
use wise_zeroshot::{zeroshot_classifier_with_progress, ImageClassifier, Templates};

pub use config::Experiment;
pub use stages::Stage;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {msg}", path.display())]
    Config { path: PathBuf, msg: String },
    #[error("stage '{stage}': {source}")]
    Stage {
        stage: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

fn stage_err<E: std::error::Error + Send + Sync + 'static>(stage: &str) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error::Stage { stage: stage.to_string(), source: Box::new(e) }
}

/// Where each stage writes.
pub struct Layout {
    pub model: PathBuf,
    pub zeroshot: PathBuf,
    pub finetune: PathBuf,
    pub results: PathBuf,
    pub plot: PathBuf,
    pub report: PathBuf,
}

impl Layout {
    pub fn new(out: &Path) -> Self {
        Self {
            model: out.join("model"),
            zeroshot: out.join("zeroshot.safetensors"),
            finetune: out.join("finetune"),
            results: out.join("results.jsonl"),
            plot: out.join("plot.png"),
            report: out.join("report.md"),
        }
    }
}

/// The stages of `exp`, in order, with their keys.
pub fn plan(exp: &Experiment) -> Vec<Stage> {
    let out = exp.out();
    let layout = Layout::new(&out);
    let mut stages: Vec<Stage> = Vec::new();
    // The settings of a stage that runs the model: with the CPU's products in bf16
    // (`WISE_CPU_BF16=1`) its outputs differ, so switching it redoes these stages.
    let bf16 = wise_clip::in_bf16_mode();
    let model_settings = |mut settings: serde_json::Value| {
        if let (true, Some(m)) = (bf16, settings.as_object_mut()) {
            m.insert("cpu_products".into(), "bf16".into());
        }
        settings
    };
    // Adds a stage to the plan and hands back its key (what later stages depend on).
    let push = |stages: &mut Vec<Stage>, stage: Stage| {
        let key = stage.key.clone();
        stages.push(stage);
        key
    };
    let mut data_keys: Vec<String> = Vec::new();
    for imp in &exp.import {
        let limit = imp.limit_per_class.map(|n| format!(" (first {n} per class)")).unwrap_or_default();
        let key = push(
            &mut stages,
            Stage::new(
                format!("import:{}", imp.to),
                format!(
                    "import {} from {} into {}{limit}",
                    imp.source,
                    imp.from,
                    exp.path(&imp.to).display()
                ),
                vec![exp.path(&imp.to)],
                &json!(imp),
                Vec::new(),
            ),
        );
        data_keys.push(key);
    }
    // Shifted sets read the imports (and an earlier shift whose folder holds their data).
    // The stages after them depend on the shifts whose folders hold what they read, so
    // shifting a test set anew redoes the sweep, not the pretraining.
    let mut shifts: Vec<(PathBuf, String)> = Vec::new();
    let reading = |shifts: &[(PathBuf, String)], base: &[String], paths: &[PathBuf]| -> Vec<String> {
        let deps = shifts.iter().filter(|(to, _)| paths.iter().any(|p| p.starts_with(to)));
        base.iter().cloned().chain(deps.map(|(_, key)| key.clone())).collect()
    };
    for sh in &exp.shift {
        let to = exp.path(&sh.to);
        let count = sh.corruption_list().map(|c| c.len()).unwrap_or_default();
        let severities = sh.severity_list().unwrap_or_default();
        let key = push(
            &mut stages,
            Stage::new(
                format!("shift:{}", sh.to),
                format!(
                    "corrupt {} ({count} corruption(s), severity {}) into {}",
                    exp.path(&sh.data).display(),
                    severities.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","),
                    to.display()
                ),
                vec![to.join(wise_shift::SHIFT_MANIFEST)],
                &json!(sh),
                reading(&shifts, &data_keys, &[exp.path(&sh.data)]),
            ),
        );
        shifts.push((to, key));
    }
    let model_key = match &exp.model.pretrain {
        Some(p) => {
            let paths: Vec<PathBuf> = p.data.iter().map(|d| exp.path(d)).collect();
            push(
                &mut stages,
                Stage::new(
                    "pretrain".into(),
                    format!("pretrain a CLIP on {} into {}", p.data.join(", "), layout.model.display()),
                    vec![layout.model.join("model.safetensors")],
                    &model_settings(json!(p)),
                    reading(&shifts, &data_keys, &paths),
                ),
            )
        }
        None => stages::stage_key(&json!(exp.model.path), &[]),
    };
    let mut upstream = data_keys.clone();
    upstream.push(model_key);
    let zs_key = push(
        &mut stages,
        Stage::new(
            "zeroshot".into(),
            format!(
                "zero-shot classifier ({} templates) → {}",
                exp.zeroshot.templates,
                layout.zeroshot.display()
            ),
            vec![layout.zeroshot.clone()],
            &model_settings(json!(exp.zeroshot)),
            reading(&shifts, &upstream, &[exp.path(&exp.zeroshot.classes)]),
        ),
    );
    let ft_key = push(
        &mut stages,
        Stage::new(
            "finetune".into(),
            format!("fine-tune on {} → {}", exp.data.train, layout.finetune.display()),
            vec![layout.finetune.join(wise_train::FINETUNED_FILE)],
            &model_settings(json!({ "train": exp.train, "data": exp.data.train })),
            reading(&shifts, std::slice::from_ref(&zs_key), &[exp.path(&exp.data.train)]),
        ),
    );
    let eval_paths: Vec<PathBuf> = exp.data.eval.values().map(|p| exp.path(p)).collect();
    let sweep_key = push(
        &mut stages,
        Stage::new(
            "sweep".into(),
            format!(
                "evaluate θ(α) for α in {:?} on {} → {}",
                exp.ensemble.alphas,
                exp.data.eval.keys().cloned().collect::<Vec<_>>().join(", "),
                layout.results.display()
            ),
            vec![layout.results.clone()],
            &model_settings(json!({ "alphas": exp.ensemble.alphas, "eval": exp.data.eval })),
            reading(&shifts, &[zs_key, ft_key], &eval_paths),
        ),
    );
    stages.push(Stage::new(
        "report".into(),
        format!("plot and report → {}, {}", layout.plot.display(), layout.report.display()),
        vec![layout.plot.clone(), layout.report.clone()],
        &json!({ "reference": exp.data.reference }),
        vec![sweep_key],
    ));
    stages
}

/// What happened to a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Skipped,
    Ran,
}

/// Runs the experiment: every stage that is not already done, is forced, or reads what a
/// stage run by this call wrote. `force` names stages (`import`, `shift`, `pretrain`,
/// `zeroshot`, `finetune`, `sweep`, `report`): `--force finetune` fine-tunes again and
/// then redoes the sweep and the report.
pub fn run(
    exp: &Experiment,
    force: &[String],
    device: &Device,
    observer: &mut dyn Observer,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<(String, Outcome)>> {
    let out = exp.out();
    let layout = Layout::new(&out);
    let known = ["import", "shift", "pretrain", "zeroshot", "finetune", "sweep", "report"];
    if let Some(bad) = force.iter().find(|f| !known.contains(&f.as_str())) {
        return Err(Error::Invalid(format!("--force {bad}: stages are {}", known.join(", "))));
    }
    let mut outcomes = Vec::new();
    // Stages run by this call: what reads their outputs runs again too.
    let mut ran: Vec<String> = Vec::new();
    for stage in plan(exp) {
        let family = stage.name.split(':').next().unwrap_or_default().to_string();
        if force.contains(&family) || stage.reads.iter().any(|k| ran.contains(k)) {
            stage.forget(&out);
        }
        if stage.is_done(&out) {
            log(&format!("skip  {} (done)", stage.name));
            outcomes.push((stage.name.clone(), Outcome::Skipped));
            continue;
        }
        log(&format!("run   {}: {}", stage.name, stage.description));
        let started = std::time::Instant::now();
        let resume = stage.was_started(&out);
        stage.mark_started(&out)?;
        match family.as_str() {
            "import" => {
                let imp =
                    exp.import.iter().find(|i| stage.name == format!("import:{}", i.to)).expect("planned");
                let source: Source = imp.source.parse().map_err(stage_err(&stage.name))?;
                let opts = ImportOptions { overwrite: true, limit_per_class: imp.limit_per_class };
                wise_data::import::import_with(source, &exp.path(&imp.from), &exp.path(&imp.to), &opts)
                    .map_err(stage_err(&stage.name))?;
            }
            "shift" => {
                let sh =
                    exp.shift.iter().find(|s| stage.name == format!("shift:{}", s.to)).ok_or_else(|| {
                        Error::Invalid(format!("no [[shift]] entry for stage {}", stage.name))
                    })?;
                let opts = ShiftOptions {
                    corruptions: sh.corruption_list().map_err(Error::Invalid)?,
                    severities: sh.severity_list().map_err(Error::Invalid)?,
                    seed: sh.seed,
                    overwrite: true,
                };
                let summary = shift_dataset(&exp.path(&sh.data), &exp.path(&sh.to), &opts, &|_| {})
                    .map_err(stage_err(&stage.name))?;
                log(&format!(
                    "      {} images × {} corrupted set(s) → {}",
                    summary.images,
                    summary.sets.len(),
                    summary.out.display()
                ));
            }
            "pretrain" => {
                let p = exp
                    .model
                    .pretrain
                    .as_ref()
                    .ok_or_else(|| Error::Invalid("no [model.pretrain]".into()))?;
                let paths: Vec<PathBuf> = p.data.iter().map(|d| exp.path(d)).collect();
                let (data, captions) = load_captioned(&paths, &p.captions).map_err(stage_err("pretrain"))?;
                let config = p.config();
                stages::clear(&layout.model)?;
                pretrain(&config, &data, &captions, &layout.model, device, observer)
                    .map_err(stage_err("pretrain"))?;
            }
            "zeroshot" => {
                let spec = match &exp.model.path {
                    Some(p) => exp.path(p).display().to_string(),
                    None => layout.model.display().to_string(),
                };
                let source = ModelSource::resolve(&spec).map_err(stage_err("zeroshot"))?;
                let classes = Dataset::class_names_of(&exp.path(&exp.zeroshot.classes))
                    .map_err(stage_err("zeroshot"))?;
                let templates = Templates::resolve(&exp.path(&exp.zeroshot.templates).display().to_string())
                    .map_err(stage_err("zeroshot"))?;
                let progress = |done, total| observer.head_progress(done, total);
                let classifier =
                    zeroshot_classifier_with_progress(&source, &classes, &templates, device, progress)
                        .map_err(stage_err("zeroshot"))?;
                classifier.save(&layout.zeroshot).map_err(stage_err("zeroshot"))?;
            }
            "finetune" => {
                let resume = resume && layout.finetune.join(wise_train::state::RESUME_FILE).exists();
                if resume {
                    log("      resuming the interrupted fine-tuning run");
                } else {
                    stages::clear(&layout.finetune)?;
                }
                let classifier = load_classifier(&layout.zeroshot, device, "finetune")?;
                let train_set =
                    Dataset::open(&exp.path(&exp.data.train), None).map_err(stage_err("finetune"))?;
                let run = Run {
                    classifier,
                    train: &train_set,
                    evals: &[],
                    config: exp.train.clone(),
                    out_dir: layout.finetune.clone(),
                    resume,
                    feature_cache: wise_train::features::default_cache_dir(),
                };
                train(run, observer).map_err(stage_err("finetune"))?;
            }
            "sweep" => sweep(exp, &layout, device, log)?,
            "report" => {
                let results = wise_report::read_results(&layout.results).map_err(stage_err("report"))?;
                wise_report::plot(&results, &exp.data.reference, None, &layout.plot)
                    .map_err(stage_err("report"))?;
                let md = wise_report::report_markdown(&results, &exp.data.reference, None)
                    .map_err(stage_err("report"))?;
                wise_report::write_atomic(&layout.report, md.as_bytes()).map_err(stage_err("report"))?;
            }
            other => return Err(Error::Invalid(format!("unknown stage {other}"))),
        }
        stage.mark_done(&out)?;
        log(&format!("      done in {:.1} s", started.elapsed().as_secs_f64()));
        ran.push(stage.key.clone());
        outcomes.push((stage.name.clone(), Outcome::Ran));
    }
    Ok(outcomes)
}

fn load_classifier(path: &Path, device: &Device, stage: &str) -> Result<ImageClassifier> {
    Ok(ImageClassifier::load(path, device)
        .map_err(stage_err(stage))?
        .with_compute_dtype(wise_clip::compute_dtype(device)))
}

/// Every α of the sweep, evaluated on every test set without writing a checkpoint;
/// one results line per α (written to a temp file, then renamed).
fn sweep(exp: &Experiment, layout: &Layout, device: &Device, log: &mut dyn FnMut(&str)) -> Result<()> {
    let zs = load_classifier(&layout.zeroshot, device, "sweep")?;
    let ft = load_classifier(&layout.finetune.join(wise_train::FINETUNED_FILE), device, "sweep")?;
    let models = exp
        .ensemble
        .alphas
        .iter()
        .map(|&a| {
            wise_ensemble::interpolate_in_memory(&[&zs, &ft], &[1.0 - a, a]).map_err(stage_err("sweep"))
        })
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<&ImageClassifier> = models.iter().collect();
    let options = EvalOptions { batch_size: exp.eval.batch_size, ..EvalOptions::default() };
    let mut per_model: Vec<Vec<wise_eval::Evaluation>> = vec![Vec::new(); models.len()];
    for (name, path) in &exp.data.eval {
        let dataset = Dataset::open(&exp.path(path), None).map_err(stage_err("sweep"))?;
        let evals = evaluate_many(&refs, name, &dataset, &options, |_| {}).map_err(stage_err("sweep"))?;
        for (slot, e) in per_model.iter_mut().zip(evals) {
            slot.push(e);
        }
        log(&format!("      evaluated {} α values on {name} ({} images)", models.len(), dataset.len()));
    }
    let tmp = layout.results.with_extension("jsonl.tmp");
    stages::clear(&tmp)?;
    let file = ResultsFile::new(&tmp);
    for (&alpha, evals) in exp.ensemble.alphas.iter().zip(&per_model) {
        let record = ResultsFile::record(&format!("wise_ft_alpha={alpha:.3}"), Some(alpha), evals);
        file.append(&record).map_err(|e| Error::Io { path: tmp.clone(), source: e })?;
    }
    std::fs::rename(&tmp, &layout.results).map_err(|e| Error::Io { path: layout.results.clone(), source: e })
}
