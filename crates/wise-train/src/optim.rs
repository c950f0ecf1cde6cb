//! AdamW (PyTorch's `torch.optim.AdamW`, decoupled weight decay) and global-norm gradient
//! clipping (`clip_grad_norm_`), over the classifier's `Var`s by name.
//!
//! The moments live in f32 next to the f32 master weights, whatever the compute dtype, and
//! are plain tensors keyed by parameter name so a checkpoint can save and restore them.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::{fused_adamw, Result};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults, with wise-ft's weight decay of 0.1.
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 }
    }
}

/// Per-parameter state: first and second moments.
pub struct AdamW {
    pub config: AdamWConfig,
    /// Steps taken (PyTorch's per-parameter `step`, the same for all here).
    pub step: u64,
    pub m: BTreeMap<String, Tensor>,
    pub v: BTreeMap<String, Tensor>,
    /// Parameters that get no weight decay (empty: all decay, wise-ft's default).
    pub no_decay: Vec<String>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, params: &BTreeMap<String, Var>) -> Result<Self> {
        let zeros = |v: &Var| v.zeros_like();
        let m = params.iter().map(|(n, v)| Ok((n.clone(), zeros(v)?))).collect::<Result<_>>()?;
        let v = params.iter().map(|(n, v)| Ok((n.clone(), zeros(v)?))).collect::<Result<_>>()?;
        Ok(Self { config, step: 0, m, v, no_decay: Vec::new() })
    }

    /// One update of every parameter that has a gradient, at learning rate `lr`, with
    /// the gradients multiplied by `grad_scale` first (gradient clipping's
    /// [`clip_scale`], or 1).
    pub fn step(
        &mut self,
        params: &BTreeMap<String, Var>,
        grads: &GradStore,
        lr: f64,
        grad_scale: f64,
    ) -> Result<()> {
        wise_clip::on_compute_threads(&device_of(params), || {
            self.step += 1;
            let c = self.config;
            let t = self.step as i32;
            let bias1 = 1.0 - c.beta1.powi(t);
            let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
            for (name, var) in params {
                let Some(g) = grads.get(var) else { continue };
                let g = g.to_dtype(candle_core::DType::F32)?;
                let decay = if self.no_decay.contains(name) { 0.0 } else { c.weight_decay };
                let (m, v) = (&self.m[name], &self.v[name]);
                if fused_adamw::applies(&[var.as_tensor(), &g, m, v]) {
                    let u = fused_adamw::Update {
                        beta1: c.beta1,
                        beta2: c.beta2,
                        eps: c.eps,
                        decay: 1.0 - lr * decay,
                        step_size: lr / bias1,
                        bias2_sqrt,
                        grad_scale,
                    };
                    fused_adamw::update(var.as_tensor(), m, v, &g, u)?;
                    continue;
                }
                let g = if grad_scale == 1.0 { g } else { (g * grad_scale)? };
                let m = ((m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
                let v = ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                // PyTorch order: decay the weights, then the Adam step with bias corrections.
                let theta = (var.as_tensor() * (1.0 - lr * decay))?;
                let denom = ((v.sqrt()? / bias2_sqrt)? + c.eps)?;
                let update = ((&m / denom)? * (lr / bias1))?;
                var.set(&(theta - update)?)?;
                self.m.insert(name.clone(), m);
                self.v.insert(name.clone(), v);
            }
            Ok(())
        })
    }
}

/// Parameters CLIP trains without weight decay: biases, norm gains (HF names them
/// `layer_norm*`, `*layernorm` and `pre_layrnorm`), embeddings and the temperature. wise-ft
/// decays everything; `no_decay_on_bias_norm_embedding` and `wise pretrain` use this.
pub fn is_no_decay(name: &str) -> bool {
    name.ends_with(".bias") || name.contains("norm") || name.contains("embedding") || name == "logit_scale"
}

/// Where the parameters live (the CPU when there are none).
fn device_of(params: &BTreeMap<String, Var>) -> Device {
    params.values().next().map_or(Device::Cpu, |v| v.device().clone())
}

/// The global L2 norm of the gradients of `params` (`clip_grad_norm_`'s total norm).
pub fn grad_norm(params: &BTreeMap<String, Var>, grads: &GradStore) -> Result<f64> {
    wise_clip::on_compute_threads(&device_of(params), || {
        let mut total = 0f64;
        // On a GPU the per-tensor sums stay there, and one copy to the host ends it: a
        // `to_scalar` per tensor would wait for the device ~200 times a step. With wise's CUDA
        // kernels it is one kernel per tensor into one scalar; op by op, a squared temporary
        // and a sum per tensor.
        let mut on_device: Option<Tensor> = None;
        #[cfg(feature = "cuda")]
        let mut fused_on_cuda: Vec<&Tensor> = Vec::new();
        for var in params.values() {
            let Some(g) = grads.get(var) else { continue };
            if g.device().is_cpu() && fused_adamw::applies(&[g]) {
                total += fused_adamw::sum_of_squares(g)?;
                continue;
            }
            #[cfg(feature = "cuda")]
            if fused_adamw::applies(&[g]) {
                fused_on_cuda.push(g);
                continue;
            }
            let s = g.to_dtype(candle_core::DType::F32)?.sqr()?.sum_all()?;
            on_device = Some(match on_device {
                Some(sum) => (sum + s)?,
                None => s,
            });
        }
        if let Some(sum) = on_device {
            total += sum.to_scalar::<f32>()? as f64;
        }
        #[cfg(feature = "cuda")]
        if !fused_on_cuda.is_empty() {
            total += wise_clip::fused::sum_of_squares_cuda(&fused_on_cuda)?;
        }
        Ok(total.sqrt())
    })
}

/// `torch.nn.utils.clip_grad_norm_`'s coefficient for gradients of global norm `norm`:
/// `max_norm / (norm + 1e-6)`, capped at 1. [`AdamW::step`] applies it as it reads the
/// gradients, instead of a separate pass rewriting them.
pub fn clip_scale(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}
