//! The streaming merge: checkpoints in, one or more weighted averages of them out, without
//! ever holding a whole tensor.
//!
//! Every input is memory-mapped. Tensors are visited in the order they lie in the first
//! input's file, and each tensor in chunks of [`CHUNK_ELEMENTS`]: the chunk of every
//! input is decoded to f32, mixed once per output (several α in one pass read the inputs
//! once), encoded back to the tensor's dtype and appended to each output file. After a
//! chunk its pages are given back to the kernel, so the resident set is a few chunks,
//! whatever the model size. Inputs are hashed (sha256) by one thread each, at the same
//! time, for the outputs' metadata.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde_json::json;

use crate::hash::{sha256_file_unless, PLACEHOLDER};
use crate::inputs::{check_compatible, check_fishers, Input, Layout, CLASSIFIER_KEYS};
use crate::mix::{
    apply_floor, decode, element_bytes, encode, fisher_weighted, is_mixable, one_hot, weighted_sum,
};
use crate::writer::StreamingWriter;
use crate::{Error, Result};

/// Elements per chunk: 1 MB of f32 per input, small enough to stay in cache while it is
/// decoded, mixed and encoded, large enough that per-chunk overhead does not show.
pub const CHUNK_ELEMENTS: usize = 1 << 18;

/// One output file: a weighted average of the inputs.
#[derive(Debug, Clone)]
pub struct Output {
    pub path: PathBuf,
    /// One weight per input, summing to 1: `(1 − α, α)` for WiSE-FT.
    pub weights: Vec<f64>,
    /// Extra `__metadata__` entries for this file, e.g. `wise.alpha`.
    pub metadata: BTreeMap<String, String>,
}

/// What to merge and how.
#[derive(Debug, Clone)]
pub struct MergeSpec {
    pub inputs: Vec<PathBuf>,
    /// One diagonal Fisher file per input for Fisher merging; empty for plain averaging.
    pub fishers: Vec<PathBuf>,
    /// Fishers are clamped to at least this (wise-ft's `--fisher_floor`, default 1e-8).
    pub fisher_floor: f64,
    /// Recorded in the metadata: `wise-ft`, `weighted`, `soup-uniform`, ...
    pub method: String,
    pub outputs: Vec<Output>,
}

impl MergeSpec {
    /// Plain averaging of `inputs` into `outputs`.
    pub fn new(inputs: Vec<PathBuf>, method: &str, outputs: Vec<Output>) -> Self {
        Self { inputs, fishers: Vec::new(), fisher_floor: 1e-8, method: method.to_string(), outputs }
    }
}

/// What a merge did.
#[derive(Debug, Clone)]
pub struct MergeReport {
    pub input_sha256: Vec<String>,
    pub fisher_sha256: Vec<String>,
    pub layout: Layout,
    /// Bytes of input files (models and Fishers).
    pub bytes_read: u64,
    /// Bytes of tensor data written per output.
    pub bytes_per_output: u64,
    pub seconds: f64,
}

/// Runs the merge; `progress(done, total)` is called with tensor-data bytes of the first
/// input after each chunk. Every output is complete and renamed into place only if the
/// whole merge succeeded.
pub fn merge(spec: &MergeSpec, mut progress: impl FnMut(u64, u64)) -> Result<MergeReport> {
    let start = Instant::now();
    check_spec(spec)?;
    let inputs = spec.inputs.iter().map(|p| Input::open(p)).collect::<Result<Vec<_>>>()?;
    let layout = check_compatible(&inputs)?;
    let fishers = spec.fishers.iter().map(|p| Input::open(p)).collect::<Result<Vec<_>>>()?;
    let with_fisher =
        if fishers.is_empty() { BTreeSet::new() } else { check_fishers(&fishers, &inputs, &layout)? };

    let metadata = |digests: &[String], fisher_digests: &[String], out: &Output| {
        output_metadata(spec, &inputs[0], digests, fisher_digests, out)
    };
    let placeholders = vec![PLACEHOLDER.to_string(); inputs.len()];
    let fisher_placeholders = vec![PLACEHOLDER.to_string(); fishers.len()];
    let mut writers = spec
        .outputs
        .iter()
        .map(|o| {
            StreamingWriter::create(
                &o.path,
                layout.tensors.clone(),
                &metadata(&placeholders, &fisher_placeholders, o)?,
            )
        })
        .collect::<Result<Vec<_>>>()?;

    let stop = AtomicBool::new(false);
    let (streamed, digests) = std::thread::scope(|s| {
        let hashers: Vec<_> = spec
            .inputs
            .iter()
            .chain(&spec.fishers)
            .map(|p| {
                let stop = &stop;
                s.spawn(move || sha256_file_unless(p, stop))
            })
            .collect();
        let streamed = stream(spec, &inputs, &fishers, &with_fisher, &layout, &mut writers, &mut progress);
        if streamed.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        let digests: Vec<Result<Option<String>>> = hashers
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(Error::Invalid("the hashing thread panicked".into()))))
            .collect();
        (streamed, digests)
    });
    streamed?;
    let mut all = Vec::new();
    for (d, p) in digests.into_iter().zip(spec.inputs.iter().chain(&spec.fishers)) {
        all.push(d?.ok_or_else(|| Error::Invalid(format!("{}: hashing stopped", p.display())))?);
    }
    let (input_sha256, fisher_sha256) = (all[..inputs.len()].to_vec(), all[inputs.len()..].to_vec());
    let bytes_per_output = writers.first().map_or(0, |w| w.data_len() as u64);
    for (w, o) in writers.into_iter().zip(&spec.outputs) {
        w.finish(Some(&metadata(&input_sha256, &fisher_sha256, o)?))?;
    }
    Ok(MergeReport {
        input_sha256,
        fisher_sha256,
        layout,
        bytes_read: inputs.iter().chain(&fishers).map(|i| i.len() as u64).sum(),
        bytes_per_output,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Weights, floor and paths, before anything is opened.
fn check_spec(spec: &MergeSpec) -> Result<()> {
    if spec.inputs.is_empty() || spec.outputs.is_empty() {
        return Err(Error::Invalid("a merge needs at least one input and one output".into()));
    }
    let mut seen = BTreeSet::new();
    for o in &spec.outputs {
        crate::alphas::check_weights(&o.weights, spec.inputs.len(), true)?;
        if !spec.fishers.is_empty() && o.weights.iter().any(|w| !(0.0..=1.0).contains(w)) {
            return Err(Error::Invalid(format!(
                "{}: Fisher merging is a weighted average; weights {:?} outside [0, 1] are not defined for it",
                o.path.display(),
                o.weights
            )));
        }
        if !seen.insert(o.path.clone()) {
            return Err(Error::Invalid(format!("{} is written twice", o.path.display())));
        }
        if let Some(i) = spec.inputs.iter().chain(&spec.fishers).find(|i| same_file(i, &o.path)) {
            return Err(Error::Invalid(format!(
                "output {} is also an input ({}): write the merge somewhere else",
                o.path.display(),
                i.display()
            )));
        }
    }
    let floor_ok = spec.fisher_floor > 0.0 && spec.fisher_floor.is_finite();
    if !spec.fishers.is_empty() && !floor_ok {
        return Err(Error::Invalid(format!(
            "fisher floor {} must be positive (it keeps c0 + c1 from being 0)",
            spec.fisher_floor
        )));
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The output's `__metadata__`: the first input's classifier keys (so the result loads as
/// an `ImageClassifier` with the same classes), `wise.ensemble` (method, every input with
/// its sha256 and weight, the Fisher files), then the output's own entries.
fn output_metadata(
    spec: &MergeSpec,
    first: &Input,
    digests: &[String],
    fisher_digests: &[String],
    out: &Output,
) -> Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    if let Some(src) = first.user_metadata() {
        if first.class_names()?.is_some() {
            for key in CLASSIFIER_KEYS {
                if let Some(v) = src.get(key) {
                    m.insert(key.to_string(), v.clone());
                }
            }
        }
    }
    let inputs: Vec<_> = spec
        .inputs
        .iter()
        .zip(digests)
        .zip(&out.weights)
        .map(|((p, d), w)| json!({"path": p.display().to_string(), "sha256": d, "weight": w}))
        .collect();
    let mut ensemble = json!({"method": spec.method, "inputs": inputs});
    if !spec.fishers.is_empty() {
        let fishers: Vec<_> = spec
            .fishers
            .iter()
            .zip(fisher_digests)
            .map(|(p, d)| json!({"path": p.display().to_string(), "sha256": d}))
            .collect();
        ensemble["fisher"] = json!(fishers);
        ensemble["fisher_floor"] = json!(spec.fisher_floor);
    }
    m.insert("wise.ensemble".into(), ensemble.to_string());
    m.extend(out.metadata.clone());
    Ok(m)
}

/// How one output is made from a tensor.
enum Plan {
    /// Weights one-hot: the bytes of this input.
    Copy(usize),
    Mix(Vec<f32>),
}

/// The main loop: every tensor, chunk by chunk, into every output.
fn stream(
    spec: &MergeSpec,
    inputs: &[Input],
    fishers: &[Input],
    with_fisher: &BTreeSet<String>,
    layout: &Layout,
    writers: &mut [StreamingWriter],
    progress: &mut impl FnMut(u64, u64),
) -> Result<()> {
    let plans: Vec<Plan> = spec
        .outputs
        .iter()
        .map(|o| match one_hot(&o.weights) {
            Some(i) => Plan::Copy(i),
            None => Plan::Mix(o.weights.iter().map(|&w| w as f32).collect()),
        })
        .collect();
    let any_mix = plans.iter().any(|p| matches!(p, Plan::Mix(_)));
    let floor = spec.fisher_floor as f32;
    let total: u64 = layout.tensors.iter().map(|(n, _, _)| tensor_bytes(&inputs[0], n) as u64).sum();
    let mut done = 0u64;
    // Scratch buffers, reused for every chunk.
    let mut xs: Vec<Vec<f32>> = vec![Vec::new(); inputs.len()];
    let mut fs: Vec<Vec<f32>> = vec![Vec::new(); fishers.len()];
    let (mut mixed, mut den, mut bytes) = (Vec::new(), Vec::new(), Vec::new());

    for (name, dtype, _) in &layout.tensors {
        let len = tensor_bytes(&inputs[0], name);
        if !is_mixable(*dtype) {
            copy_identical(inputs, name, *dtype, len, writers)?;
            done += len as u64;
            progress(done, total);
            continue;
        }
        let fisher = with_fisher.contains(name);
        let step = CHUNK_ELEMENTS * element_bytes(*dtype);
        for start in (0..len).step_by(step) {
            let range = start..(start + step).min(len);
            for input in inputs {
                input.read_ahead(name, range.end);
            }
            if any_mix {
                for (x, input) in xs.iter_mut().zip(inputs) {
                    decode(*dtype, input.bytes(name, range.clone())?, x);
                    check_values(
                        input,
                        name,
                        x,
                        "a weight is finite: a diverged or corrupt checkpoint?",
                        |v| v.is_finite(),
                    )?;
                }
                if fisher {
                    for (f, file) in fs.iter_mut().zip(fishers) {
                        let info = file.info(name).ok_or_else(|| missing(file, name))?;
                        let eb = element_bytes(info.dtype);
                        let r =
                            range.start / element_bytes(*dtype) * eb..range.end / element_bytes(*dtype) * eb;
                        decode(info.dtype, file.bytes(name, r.clone())?, f);
                        check_values(file, name, f, "a Fisher value is finite and non-negative", |v| {
                            v.is_finite() && v >= 0.0
                        })?;
                        apply_floor(f, floor);
                        file.release(name, r);
                    }
                }
            }
            for (plan, writer) in plans.iter().zip(writers.iter_mut()) {
                match plan {
                    Plan::Copy(i) => writer.write(inputs[*i].bytes(name, range.clone())?)?,
                    Plan::Mix(weights) => {
                        if fisher {
                            fisher_weighted(&xs, &fs, weights, &mut mixed, &mut den);
                        } else {
                            weighted_sum(&xs, weights, &mut mixed);
                        }
                        encode(*dtype, &mixed, &mut bytes);
                        writer.write(&bytes)?;
                    }
                }
            }
            for input in inputs {
                input.release(name, range.clone());
            }
            done += range.len() as u64;
            progress(done, total);
        }
    }
    Ok(())
}

/// A tensor that is not averaged (integers, fp8): equal in every input, copied.
fn copy_identical(
    inputs: &[Input],
    name: &str,
    dtype: safetensors::Dtype,
    len: usize,
    writers: &mut [StreamingWriter],
) -> Result<()> {
    let step = CHUNK_ELEMENTS * 4;
    for start in (0..len.max(1)).step_by(step) {
        let range = start..(start + step).min(len);
        let first = inputs[0].bytes(name, range.clone())?;
        for other in &inputs[1..] {
            if other.bytes(name, range.clone())? != first {
                return Err(Error::Incompatible {
                    report: format!(
                        "tensor '{name}' is {dtype:?} and differs between {} and {}: only float \
                         tensors are averaged, any other must be the same in every input",
                        inputs[0].path().display(),
                        other.path().display()
                    ),
                });
            }
        }
        for w in writers.iter_mut() {
            w.write(first)?;
        }
        for input in inputs {
            input.release(name, range.clone());
        }
    }
    Ok(())
}

/// That every decoded value of `file`'s tensor `name` is `fine`, or the error naming the
/// first that is not and `why` it should be. Without it an infinity in one input made
/// every mixed value NaN, and a NaN Fisher value was floored into a silent weight.
fn check_values(
    file: &Input,
    name: &str,
    values: &[f32],
    why: &str,
    fine: impl Fn(f32) -> bool,
) -> Result<()> {
    // A fold without early exit vectorises (a chunk is in cache, and this runs over every
    // input byte); the search for the value to name only runs when one is wrong.
    if values.iter().fold(true, |all, &v| all & fine(v)) {
        return Ok(());
    }
    match values.iter().find(|&&v| !fine(v)) {
        None => Ok(()),
        Some(v) => Err(Error::File {
            path: file.path().to_path_buf(),
            msg: format!("tensor '{name}' holds {v}, where {why}"),
        }),
    }
}

fn tensor_bytes(input: &Input, name: &str) -> usize {
    input.info(name).map_or(0, |i| i.data_offsets.1 - i.data_offsets.0)
}

fn missing(file: &Input, name: &str) -> Error {
    Error::File { path: file.path().to_path_buf(), msg: format!("no tensor named '{name}'") }
}
