//! Interpolating classifiers that are already in memory: what an α sweep and a greedy soup
//! evaluate, without writing a checkpoint per candidate.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use wise_clip::weights::InMemory;
use wise_zeroshot::ImageClassifier;

use crate::alphas::check_weights;
use crate::mix::{one_hot, weighted_sum};
use crate::{Error, Result};

/// `Σ wᵢ·θᵢ` over every parameter of `models` (same parameters, same classes in the same
/// order), as a new classifier on the first model's device. The arithmetic is the file
/// merge's ([`crate::mix::weighted_sum`] in f32), so with f32 checkpoints the result equals
/// the checkpoint `wise ensemble` writes for the same weights, bit for bit. Weights must
/// sum to 1; whether they may leave `[0, 1]` is the caller's decision.
///
/// The metadata is the first model's, with `alpha` = the second weight when there are two
/// models (so results files record it, as for a merged checkpoint).
pub fn interpolate_in_memory(models: &[&ImageClassifier], weights: &[f64]) -> Result<ImageClassifier> {
    let Some(first) = models.first() else {
        return Err(Error::Invalid("no models to interpolate".into()));
    };
    check_weights(weights, models.len(), true)?;
    check_same_model(models)?;
    let device = first.device();
    let ws: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
    let copy_of = one_hot(weights);
    let mut xs: Vec<Vec<f32>> = vec![Vec::new(); models.len()];
    let mut mixed = Vec::new();
    let mut tensors = BTreeMap::new();
    for (name, var) in &first.params {
        for (x, model) in xs.iter_mut().zip(models) {
            let t = model.params.get(name).ok_or_else(|| Error::Invalid(format!("no parameter '{name}'")))?;
            *x = t.as_tensor().flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        }
        match copy_of {
            Some(i) => mixed.clone_from(&xs[i]),
            None => weighted_sum(&xs, &ws, &mut mixed),
        }
        tensors.insert(name.clone(), Tensor::from_slice(&mixed, var.shape(), device)?);
    }
    let mut meta = first.meta.clone();
    if let [_, alpha] = weights {
        meta.extra.insert("alpha".into(), alpha.to_string());
    }
    let source = InMemory { label: format!("interpolation with weights {weights:?}"), tensors };
    Ok(ImageClassifier::from_weights(meta, &source, device)?.with_compute_dtype(first.compute_dtype))
}

/// Same parameter names and shapes, same classes in the same order.
fn check_same_model(models: &[&ImageClassifier]) -> Result<()> {
    let first = models[0];
    let mut problems = Vec::new();
    for (i, m) in models.iter().enumerate().skip(1) {
        if m.meta.class_names != first.meta.class_names {
            problems.push(format!(
                "model {i} has classes {:?}, model 0 has {:?}",
                preview(&m.meta.class_names),
                preview(&first.meta.class_names)
            ));
        }
        for (name, var) in &first.params {
            match m.params.get(name) {
                None => problems.push(format!("model {i} has no parameter '{name}'")),
                Some(v) if v.dims() != var.dims() => {
                    problems.push(format!("'{name}': model {i} {:?}, model 0 {:?}", v.dims(), var.dims()))
                }
                Some(_) => {}
            }
        }
        for name in m.params.keys().filter(|n| !first.params.contains_key(*n)) {
            problems.push(format!("model {i} has a parameter model 0 lacks: '{name}'"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Incompatible { report: problems.join("\n") })
    }
}

fn preview(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(8).map(String::as_str).collect();
    let more = if names.len() > 8 { format!(", … ({} in all)", names.len()) } else { String::new() };
    format!("[{}{more}]", shown.join(", "))
}
