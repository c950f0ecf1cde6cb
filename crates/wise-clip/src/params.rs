//! Where a model's parameters come from, and the list of them under HF names.
//!
//! The model code asks for each parameter by its Hugging Face name and shape
//! ([`ParamBuilder::get`]); the builder either reads it from a checkpoint or initialises
//! it. Every parameter is a [`Var`] in f32 (the master copy), so every one can be trained.
//! Asking by name keeps the key mapping in plain sight in the model code, and lets a load
//! report *all* missing, unexpected and mis-shaped tensors at once instead of stopping at
//! the first or, worse, silently initialising one.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Normal};

use crate::weights::WeightSource;
use crate::{Error, Result};

/// How a fresh parameter is initialised when there is no checkpoint.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    Normal(f64),
    Const(f64),
}

enum Origin<'a> {
    Checkpoint(&'a dyn WeightSource),
    Fresh(Box<StdRng>),
}

pub struct ParamBuilder<'a> {
    origin: Origin<'a>,
    device: Device,
    params: BTreeMap<String, Var>,
    missing: Vec<String>,
    mismatched: Vec<String>,
}

impl<'a> ParamBuilder<'a> {
    pub fn from_checkpoint(source: &'a dyn WeightSource, device: &Device) -> Self {
        Self::new(Origin::Checkpoint(source), device)
    }

    /// Random initialisation from a seed (reproducible across runs and machines).
    pub fn fresh(seed: u64, device: &Device) -> Self {
        Self::new(Origin::Fresh(Box::new(StdRng::seed_from_u64(seed))), device)
    }

    fn new(origin: Origin<'a>, device: &Device) -> Self {
        Self {
            origin,
            device: device.clone(),
            params: BTreeMap::new(),
            missing: Vec::new(),
            mismatched: Vec::new(),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The parameter `name` with `shape`. Problems are recorded, not returned: a scalar
    /// zero stands in (never used: [`Self::finish`] then fails, listing them all), so
    /// construction goes on without allocating the shape a corrupt config asks for. Past
    /// `MAX_PROBLEMS` (500) the error comes at once: nothing a config says (a trillion layers)
    /// makes a load run on against a checkpoint that lacks it all.
    pub fn get(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        let tensor = match &mut self.origin {
            Origin::Fresh(rng) => init_tensor(rng, name, shape, init, &self.device)?,
            Origin::Checkpoint(source) => match source.shape(name) {
                Some(found) if found == shape => source.load_f32(name, &self.device)?,
                found => {
                    let source: &dyn WeightSource = *source; // no borrow of `self` left
                    match found {
                        None => self.missing.push(format!("{name} {shape:?}")),
                        Some(found) => self
                            .mismatched
                            .push(format!("{name}: model expects {shape:?}, checkpoint has {found:?}")),
                    }
                    if self.missing.len() + self.mismatched.len() > MAX_PROBLEMS {
                        return Err(self.mismatch_error(source, &[]));
                    }
                    Tensor::zeros((), DType::F32, &self.device)?
                }
            },
        };
        let var = Var::from_tensor(&tensor)?;
        self.params.insert(name.to_string(), var.clone());
        Ok(var)
    }

    /// All parameters by HF name, or the full list of what did not match the checkpoint.
    pub fn finish(self) -> Result<BTreeMap<String, Var>> {
        let Origin::Checkpoint(source) = self.origin else {
            return Ok(self.params);
        };
        let unexpected: Vec<String> = source
            .names()
            .into_iter()
            .filter(|n| !self.params.contains_key(n) && !is_ignored_buffer(n))
            .collect();
        if self.missing.is_empty() && self.mismatched.is_empty() && unexpected.is_empty() {
            return Ok(self.params);
        }
        Err(self.mismatch_error(source, &unexpected))
    }

    /// The error listing what is missing, mis-shaped and `unexpected` (20 of each at most).
    fn mismatch_error(&self, source: &dyn WeightSource, unexpected: &[String]) -> Error {
        let mut report = String::new();
        for (title, items) in [
            ("missing", &self.missing[..]),
            ("wrong shape", &self.mismatched[..]),
            ("unexpected", unexpected),
        ] {
            if items.is_empty() {
                continue;
            }
            report.push_str(&format!("  {title} ({}):\n", items.len()));
            for item in items.iter().take(20) {
                report.push_str(&format!("    {item}\n"));
            }
            if items.len() > 20 {
                report.push_str(&format!("    ... and {} more\n", items.len() - 20));
            }
        }
        if self.missing.len() + self.mismatched.len() > MAX_PROBLEMS {
            report.push_str(&format!("  (stopped after {MAX_PROBLEMS} problems)"));
        }
        Error::Weights { source_name: source.describe(), report: report.trim_end().to_string() }
    }
}

/// Missing or mis-shaped parameters after which a load stops: a few hundred is already
/// the wrong checkpoint for the config, or the wrong config.
const MAX_PROBLEMS: usize = 500;

/// Non-parameter buffers that some transformers versions save; they carry no weights.
fn is_ignored_buffer(name: &str) -> bool {
    name.ends_with("embeddings.position_ids")
}

/// A fresh parameter: its values allocated fallibly, so a shape too large for memory
/// is an error naming the parameter rather than an abort.
fn init_tensor(rng: &mut StdRng, name: &str, shape: &[usize], init: Init, device: &Device) -> Result<Tensor> {
    let too_large = || Error::Invalid(format!("parameter {name} {shape:?} is too large to allocate"));
    let n = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(too_large)?;
    let mut values: Vec<f32> = Vec::new();
    values.try_reserve_exact(n).map_err(|_| too_large())?;
    match init {
        Init::Const(c) => values.resize(n, c as f32),
        Init::Normal(std) => {
            let normal = Normal::new(0.0, std).map_err(|e| Error::Invalid(e.to_string()))?;
            values.extend((0..n).map(|_| normal.sample(rng) as f32));
        }
    }
    Ok(Tensor::from_vec(values, shape, device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::InMemory;

    fn one_tensor() -> InMemory {
        let w = Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
        InMemory { label: "fixture".into(), tensors: BTreeMap::from([("w".to_string(), w)]) }
    }

    /// What a corrupt config asks for is never allocated against a checkpoint: a shape of
    /// 2^60 values (which aborted the process as a zero placeholder) is listed, with the
    /// tensor that is there but of another shape.
    #[test]
    fn problems_are_listed_without_allocating_the_shapes_asked_for() {
        let source = one_tensor();
        let mut pb = ParamBuilder::from_checkpoint(&source, &Device::Cpu);
        pb.get("w", &[1 << 30, 3], Init::Const(0.0)).unwrap();
        pb.get("v", &[1 << 30, 1 << 30], Init::Const(0.0)).unwrap();
        let err = pb.finish().unwrap_err().to_string();
        assert!(err.contains("w: model expects [1073741824, 3], checkpoint has [2, 3]"), "{err}");
        assert!(err.contains("missing (1):\n    v [1073741824, 1073741824]"), "{err}");
    }

    /// A config of a million layers against a checkpoint of one tensor stops at
    /// `MAX_PROBLEMS`, instead of recording a million missing names.
    #[test]
    fn a_load_stops_after_many_problems() {
        let source = one_tensor();
        let mut pb = ParamBuilder::from_checkpoint(&source, &Device::Cpu);
        let failed =
            (0..1_000_000).position(|i| pb.get(&format!("layer.{i}"), &[4], Init::Const(0.0)).is_err());
        assert_eq!(failed, Some(MAX_PROBLEMS));
    }

    #[test]
    fn a_fresh_parameter_too_large_for_memory_is_an_error() {
        let mut pb = ParamBuilder::fresh(0, &Device::Cpu);
        for shape in [&[1usize << 40, 1 << 30][..], &[1 << 61]] {
            let err = pb.get("huge", shape, Init::Normal(0.02)).unwrap_err().to_string();
            assert!(err.contains("huge") && err.contains("too large to allocate"), "{err}");
        }
        let v = pb.get("small", &[2, 2], Init::Const(1.5)).unwrap();
        assert_eq!(v.as_tensor().to_vec2::<f32>().unwrap(), [[1.5, 1.5], [1.5, 1.5]]);
    }
}
