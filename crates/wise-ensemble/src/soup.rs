//! Model soups (Wortsman et al., *Model soups*, ICML 2022): averages of several fine-tuned
//! models of the same zero-shot start.
//!
//! - **uniform**: the plain average of every ingredient (a [`fn@crate::merge`] with weights
//!   1/N; no evaluation needed).
//! - **greedy**: ingredients sorted by held-out accuracy, best first; each is added if the
//!   average of the soup so far plus it is at least as accurate on the held-out set as the
//!   soup without it. Candidates are averaged in memory and evaluated; only the final soup
//!   is written (again by the streaming merge, with uniform weights over the chosen
//!   ingredients). At most three models are in memory at a time: the soup so far, the
//!   candidate ingredient and their average, which is the running mean
//!   `(k·soup + θ) / (k + 1)` of the k + 1 ingredients.

use std::path::PathBuf;

use candle_core::Device;
use wise_data::Dataset;
use wise_eval::{evaluate, EvalOptions};
use wise_zeroshot::ImageClassifier;

use crate::memory::interpolate_in_memory;
use crate::{Error, Result};

/// What the greedy search decided.
#[derive(Debug, Clone)]
pub struct SoupPlan {
    /// Every ingredient with its own held-out top-1, in the order given.
    pub ingredients: Vec<(PathBuf, f64)>,
    /// The chosen ingredients, in the order they were added (best first).
    pub selected: Vec<PathBuf>,
    /// Held-out top-1 of the soup of `selected`.
    pub held_out_top1: f64,
}

/// The greedy soup of `paths`, judged on the held-out `(name, dataset)`. `log` receives a
/// line per decision.
pub fn greedy_soup(
    paths: &[PathBuf],
    held_out: (&str, &Dataset),
    options: &EvalOptions,
    device: &Device,
    mut log: impl FnMut(&str),
) -> Result<SoupPlan> {
    if paths.is_empty() {
        return Err(Error::Invalid("a soup needs at least one model".into()));
    }
    let (name, dataset) = held_out;
    let load = |p: &PathBuf| -> Result<ImageClassifier> {
        Ok(ImageClassifier::load(p, device)?.with_compute_dtype(wise_clip::compute_dtype(device)))
    };
    let top1 = |m: &ImageClassifier| -> Result<f64> {
        Ok(evaluate(m, name, dataset, options, |_| {})?.metrics.top1())
    };

    let mut ingredients = Vec::with_capacity(paths.len());
    for p in paths {
        let acc = top1(&load(p)?)?;
        log(&format!("{}: {name} top-1 {:.2}%", p.display(), 100.0 * acc));
        ingredients.push((p.clone(), acc));
    }
    // Best first; equal accuracies keep the order given (a stable sort).
    let mut order: Vec<usize> = (0..paths.len()).collect();
    order.sort_by(|&a, &b| ingredients[b].1.total_cmp(&ingredients[a].1));

    let mut soup = load(&paths[order[0]])?;
    let mut soup_acc = ingredients[order[0]].1;
    let mut selected = vec![paths[order[0]].clone()];
    log(&format!("soup starts with {} ({:.2}%)", paths[order[0]].display(), 100.0 * soup_acc));
    for &i in &order[1..] {
        let k = selected.len() as f64;
        let candidate =
            interpolate_in_memory(&[&soup, &load(&paths[i])?], &[k / (k + 1.0), 1.0 / (k + 1.0)])?;
        let acc = top1(&candidate)?;
        if acc >= soup_acc {
            log(&format!(
                "+ {}: soup {:.2}% -> {:.2}%, kept",
                paths[i].display(),
                100.0 * soup_acc,
                100.0 * acc
            ));
            soup = candidate;
            soup_acc = acc;
            selected.push(paths[i].clone());
        } else {
            log(&format!(
                "  {}: soup would drop {:.2}% -> {:.2}%, left out",
                paths[i].display(),
                100.0 * soup_acc,
                100.0 * acc
            ));
        }
    }
    Ok(SoupPlan { ingredients, selected, held_out_top1: soup_acc })
}
