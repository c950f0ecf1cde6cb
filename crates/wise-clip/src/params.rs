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

    /// The parameter `name` with `shape`. Problems are recorded, not returned: a zero
    /// placeholder stands in so construction goes on and [`Self::finish`] lists them all.
    pub fn get(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        let tensor = match &mut self.origin {
            Origin::Fresh(rng) => init_tensor(rng, shape, init, &self.device)?,
            Origin::Checkpoint(source) => match source.shape(name) {
                None => {
                    self.missing.push(format!("{name} {shape:?}"));
                    Tensor::zeros(shape, DType::F32, &self.device)?
                }
                Some(found) if found != shape => {
                    self.mismatched
                        .push(format!("{name}: model expects {shape:?}, checkpoint has {found:?}"));
                    Tensor::zeros(shape, DType::F32, &self.device)?
                }
                Some(_) => source.load_f32(name, &self.device)?,
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
        let mut report = String::new();
        for (title, items) in
            [("missing", &self.missing), ("wrong shape", &self.mismatched), ("unexpected", &unexpected)]
        {
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
        Err(Error::Weights { source_name: source.describe(), report: report.trim_end().to_string() })
    }
}

/// Non-parameter buffers that some transformers versions save; they carry no weights.
fn is_ignored_buffer(name: &str) -> bool {
    name.ends_with("embeddings.position_ids")
}

fn init_tensor(rng: &mut StdRng, shape: &[usize], init: Init, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Normal(std) => {
            let normal = Normal::new(0.0, std).map_err(|e| Error::Invalid(e.to_string()))?;
            (0..n).map(|_| normal.sample(rng) as f32).collect()
        }
    };
    Ok(Tensor::from_vec(values, shape, device)?)
}
