//! Will a training step fit in memory? Checked before the first step, so that a batch too
//! large for the machine is an error that says which batch fits, not an out-of-memory kill
//! minutes into the run (on Linux the kernel kills the process without a word).
//!
//! A CPU step's peak is the sum of what lives through it:
//!
//! - the weights (4 bytes a parameter, already loaded when the check runs);
//! - for each trained parameter its gradient and AdamW's two moments (12 bytes), and with
//!   `grad_accum > 1` the accumulated gradient (4 more);
//! - the activations each transformer block keeps for the backward, per token: its input,
//!   the first layer norm's output, q/k/v, the attention's output, the residual sum, the
//!   second layer norm's output, fc1's output before and after the activation (8 widths and
//!   2 MLP widths), and every head's attention probabilities where the block keeps them
//!   (`heads · T` floats a token when they take no more room than fc1's output; otherwise
//!   it recomputes them). Two more widths cover the backward's working buffers at its peak:
//!   `10·C + 2·I (+ heads·T)` floats a token and layer, fitted to the peaks measured for
//!   ViT-B/32 and ViT-B/16 steps (BENCHMARKS.md, "Memory of a training step");
//! - the pixels: the batch, the patch matrix the patch embedding keeps, and the loader's
//!   batches in flight (two queued, one being prepared);
//! - 64 MB for the program and what the allocator keeps in reserve.
//!
//! A contrastive step (FLYP, pretraining) adds the text tower's activations, counted at
//! the full context length: captions are usually shorter (a batch runs only up to its
//! longest), so that part is an upper bound and only ever warns.
//!
//! The memory available is the system's (`MemAvailable` on Linux: free memory plus what
//! the page cache can give back), lowered to a container's limit when the process runs
//! under a cgroup that sets one, and to `WISE_MEMORY_LIMIT` (`8G`, `512M`) when set, to
//! leave room for other work. `WISE_MEMORY_CHECK=off` skips the check.
//!
//! On an accelerator (CUDA) the step is counted from what it certainly keeps, so the count
//! is a lower bound: the f32 master weights, gradients and AdamW's moments, each block's
//! weights in the compute dtype and its saved activations as `wise_clip::kept_for_backward`
//! counts them (bf16: half a CPU value's bytes, and flash attention keeps no
//! probabilities), and the patch embedding's; candle keeps them all until the backward
//! ends, when every gradient exists too. Not counted: the backward's working
//! buffers, cuBLAS's workspace or the pool's fragmentation. Against the device's free
//! memory (or `WISE_MEMORY_LIMIT`, if lower), a step that cannot fit even so is refused
//! before the first step, one within a tenth of it warned about; an out-of-memory error
//! during a step still gets advice ([`explain_out_of_memory`]).

use candle_core::{DType, Device};
use wise_clip::config::{TextConfig, VisionConfig};
use wise_clip::nn::EncoderShape;

const F32: u64 = 4;

/// The loader's batches of pixels alive at once besides the one in the step: two queued
/// and one being prepared (`wise_data::Loader`'s default prefetch of 2).
const LOADER_BATCHES: u64 = 3;

/// Where a step runs, which decides how its memory is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepDevice {
    /// The CPU, in f32: the estimate is fitted to measured peaks.
    Cpu,
    /// An accelerator computing in this dtype over f32 master weights: what the step
    /// certainly keeps, a lower bound.
    Accelerator(DType),
}

/// The peak memory of one training step, by what it holds, in bytes: on the CPU an
/// estimate, on an accelerator at least this much (its own memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepMemory {
    pub device: StepDevice,
    /// Images a step's forward and backward hold at once (the micro-batch).
    pub images: usize,
    /// Every parameter's weight (loaded before the check).
    pub weights: u64,
    /// The trained parameters' weights.
    pub trained: u64,
    /// Gradients and AdamW's moments of the trained parameters (and the accumulated
    /// gradients).
    pub training_state: u64,
    /// The blocks' weights in the compute dtype, kept for the backward (accelerators).
    pub weight_copies: u64,
    /// What the image tower keeps for the backward, and the pixels.
    pub image_activations: u64,
    /// The loader's batches in flight (part of `image_activations`).
    pub loader: u64,
    /// The text tower's activations at the full context length (contrastive steps): at most
    /// this.
    pub text_activations_at_most: u64,
    /// What the allocator holds beyond the live data ([`ALLOCATOR_SLACK`]).
    pub allocator: u64,
}

/// Memory a training process holds beyond its live data: the program itself and what the
/// allocator keeps in reserve. Measured: the peak of ViT-B/32, B/16 and L/14 steps is
/// within 0.11 GB below to 0.04 GB above their live data (BENCHMARKS.md, "Memory of a
/// training step"), once every pass runs on the same thread (`wise_clip`'s
/// `on_compute_threads`; before, one more copy of the gradients in some runs).
pub const ALLOCATOR_SLACK: u64 = 64 << 20;

/// Bytes a transformer of `layers` blocks keeps for the backward, per sequence of `tokens`.
pub fn tower_activation_bytes(
    layers: usize,
    tokens: usize,
    width: usize,
    intermediate: usize,
    heads: usize,
) -> u64 {
    let probs = if heads * tokens <= intermediate { heads * tokens } else { 0 };
    let per_token = 10 * width + 2 * intermediate + probs;
    (layers * tokens * per_token) as u64 * F32
}

impl StepMemory {
    /// A step of an image classifier on `device`: `trained` of `total` parameters trained,
    /// a micro-batch of `images`.
    pub fn image_classifier(
        device: &Device,
        vision: &VisionConfig,
        total: usize,
        trained: usize,
        images: usize,
        grad_accum: usize,
    ) -> Self {
        if !device.is_cpu() {
            let dtype = wise_clip::compute_dtype(device);
            return Self::accelerator_image_classifier(vision, (total, trained), images, grad_accum, dtype);
        }
        let tokens = vision.num_positions();
        let tower = tower_activation_bytes(
            vision.num_hidden_layers,
            tokens,
            vision.hidden_size,
            vision.intermediate_size,
            vision.num_attention_heads,
        );
        let pixels = (vision.num_channels * vision.image_size * vision.image_size) as u64 * F32;
        let patch_matrix = ((tokens - 1) * vision.num_channels * vision.patch_size.pow(2)) as u64 * F32;
        let per_image = tower + pixels * (1 + LOADER_BATCHES) + patch_matrix;
        Self {
            device: StepDevice::Cpu,
            loader: images as u64 * pixels * LOADER_BATCHES,
            images,
            weights: total as u64 * F32,
            trained: trained as u64 * F32,
            training_state: state_copies(grad_accum) * trained as u64 * F32,
            weight_copies: 0,
            image_activations: images as u64 * per_image,
            text_activations_at_most: 0,
            allocator: ALLOCATOR_SLACK,
        }
    }

    /// [`Self::image_classifier`] on an accelerator computing in `dtype`, `(total,
    /// trained)` parameters.
    fn accelerator_image_classifier(
        vision: &VisionConfig,
        (total, trained): (usize, usize),
        images: usize,
        grad_accum: usize,
        dtype: DType,
    ) -> Self {
        let tokens = vision.num_positions();
        let kept = wise_clip::kept_for_backward(&EncoderShape::from(vision), tokens, dtype, false);
        let (e, t, c) = (dtype.size_in_bytes() as u64, tokens as u64, vision.hidden_size as u64);
        let patch = (vision.num_channels * vision.patch_size.pow(2)) as u64;
        // Outside the blocks: the patch matrix the patch embedding keeps (a zero row for the
        // class token), its output, and the embeddings' sum that the first LayerNorm keeps.
        // (The batch's pixels in the compute dtype may be gone by the backward.)
        let per_image = kept.per_sequence + e * (t * patch + 2 * t * c);
        Self {
            device: StepDevice::Accelerator(dtype),
            images,
            weights: total as u64 * F32,
            trained: trained as u64 * F32,
            training_state: state_copies(grad_accum) * trained as u64 * F32,
            weight_copies: kept.per_batch,
            image_activations: images as u64 * per_image,
            loader: 0,
            text_activations_at_most: 0,
            allocator: 0,
        }
    }

    /// The same step with a caption per image through the text tower (contrastive).
    pub fn with_text(mut self, text: &TextConfig) -> Self {
        let tokens = text.max_position_embeddings;
        let per_caption = match self.device {
            StepDevice::Cpu => tower_activation_bytes(
                text.num_hidden_layers,
                tokens,
                text.hidden_size,
                text.intermediate_size,
                text.num_attention_heads,
            ),
            StepDevice::Accelerator(dtype) => {
                let kept = wise_clip::kept_for_backward(&EncoderShape::from(text), tokens, dtype, true);
                self.weight_copies += kept.per_batch;
                kept.per_sequence
            }
        };
        self.text_activations_at_most = self.images as u64 * per_caption;
        self
    }

    /// The step's whole peak, the text tower counted at most.
    pub fn total(&self) -> u64 {
        self.weights
            + self.training_state
            + self.weight_copies
            + self.image_activations
            + self.text_activations_at_most
            + self.allocator
    }

    /// What the step will add to a process that holds the weights already: certainly
    /// (`.0`) and at most (`.1`).
    fn to_add(&self) -> (u64, u64) {
        let certain = self.training_state + self.weight_copies + self.image_activations + self.allocator;
        (certain, certain + self.text_activations_at_most)
    }

    /// The largest micro-batch whose certain part fits in `bytes` when gradients are
    /// accumulated over several (one more copy of them).
    fn images_fitting_accumulated(&self, bytes: u64) -> usize {
        let per_image = self.image_activations / self.images.max(1) as u64;
        let fixed = state_copies(2) * self.trained + self.weight_copies + self.allocator;
        (bytes.saturating_sub(fixed) / per_image.max(1)) as usize
    }

    /// Against the memory `available`: `Ok(None)` when the step fits, `Ok(Some(warning))`
    /// when it may not (close to the limit, only with swap, or with long captions),
    /// `Err(why)` when it cannot, with the batch that fits. `effective_batch` is the
    /// micro-batch times `grad_accum`.
    pub fn check(&self, available: Available, effective_batch: usize) -> Result<Option<String>, String> {
        let (certain, at_most) = self.to_add();
        let contrastive = self.text_activations_at_most > 0;
        let accelerator = matches!(self.device, StepDevice::Accelerator(_));
        let needs = |bytes: u64| {
            let how_much = match (accelerator, contrastive) {
                (true, _) => " at least",
                (false, true) => " at most",
                (false, false) => "",
            };
            format!(
                "a training step of {} images needs{how_much} {} more memory ({} of activations for \
                 the backward{}, {} for gradients, AdamW's state{})",
                self.images,
                display_size(bytes),
                display_size(self.image_activations),
                if contrastive {
                    format!(" and up to {} for the text tower", display_size(self.text_activations_at_most))
                } else {
                    String::new()
                },
                display_size(self.training_state + self.weight_copies + self.allocator),
                if accelerator { " and the weights in the compute dtype" } else { " and the allocator" },
            )
        };
        let have = format!("{} is available{}", display_size(available.memory), available.describe_limit());
        if certain > available.memory + available.swap {
            // What fits leaving a tenth free, as a suggestion must not itself warn.
            let fits = self.images_fitting_accumulated(available.memory / 10 * 9);
            let advice = if fits == 0 && accelerator {
                "not even one image a batch fits: free the device's memory (nvidia-smi lists who holds \
                 it), or train the head alone (--freeze-encoder)"
                    .to_string()
            } else if fits == 0 {
                "not even one image a batch fits: free memory, or train on a GPU (--device cuda)".to_string()
            } else if contrastive {
                // The contrastive loss's negatives are the batch's: accumulating smaller
                // batches is another objective, so only a smaller batch is suggested.
                format!("at most {fits} images a batch fit: use --batch-size {fits} or less")
            } else {
                let accum = effective_batch.div_ceil(fits);
                format!(
                    "at most {fits} images a batch fit; keep the effective batch of {effective_batch} with \
                     --batch-size {} --grad-accum {accum} (batch_size and grad_accum in a [train] table)",
                    effective_batch.div_ceil(accum)
                )
            };
            let swap = if available.swap > 0 {
                format!(" with {} of swap", display_size(available.swap))
            } else {
                String::new()
            };
            return Err(format!(
                "{} and {have}{swap}: {advice}. WISE_MEMORY_CHECK=off runs it anyway",
                needs(certain)
            ));
        }
        if certain > available.memory {
            return Ok(Some(format!("{} and {have}: the step will swap, slowly", needs(certain))));
        }
        if certain as f64 > 0.9 * available.memory as f64 {
            return Ok(Some(format!("{} and {have}: it may not fit", needs(certain))));
        }
        if at_most > available.memory {
            return Ok(Some(format!(
                "{} and {have}: it may not fit if the captions are long",
                needs(at_most)
            )));
        }
        Ok(None)
    }
}

/// Copies of the trained parameters' size a step keeps besides the weights: the gradient
/// and AdamW's two moments, and the sum of the micro-batches' gradients when accumulating.
fn state_copies(grad_accum: usize) -> u64 {
    if grad_accum > 1 {
        4
    } else {
        3
    }
}

/// Memory this process may still take, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Available {
    /// RAM (the system's available memory, or less under a container's limit), or an
    /// accelerator's free memory.
    pub memory: u64,
    pub swap: u64,
    /// What set `memory` when not the system's available RAM.
    pub limit: Option<Limit>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The memory limit of the cgroup the process runs in (a container's).
    Cgroup,
    /// `WISE_MEMORY_LIMIT`.
    User,
    /// The memory of the accelerator the step runs on.
    Device,
}

impl Available {
    /// Now, as the operating system reports it (`None` where it does not).
    pub fn now() -> Option<Self> {
        use sysinfo::{MemoryRefreshKind, RefreshKind, System};
        let system =
            System::new_with_specifics(RefreshKind::nothing().with_memory(MemoryRefreshKind::everything()));
        if system.total_memory() == 0 {
            return None;
        }
        let mut available = Self { memory: system.available_memory(), swap: system.free_swap(), limit: None };
        // A cgroup's own limit (a container's), when it sets one below the machine's: the
        // memory it still allows is the limit less what its processes hold (anonymous
        // memory: its page cache can be reclaimed).
        if let Some(limits) = system.cgroup_limits() {
            if limits.total_memory < system.total_memory() {
                let left = limits.total_memory.saturating_sub(limits.rss);
                if left < available.memory {
                    available = Self { memory: left, swap: limits.free_swap, limit: Some(Limit::Cgroup) };
                }
            }
        }
        Some(available)
    }

    /// The free memory of the accelerator `device` now (`None` on the CPU, and where its
    /// driver does not say).
    pub fn on_device(device: &Device) -> Option<Self> {
        wise_clip::device_memory(device).map(|m| Self { memory: m.free, swap: 0, limit: Some(Limit::Device) })
    }

    /// At most `limit` bytes (`WISE_MEMORY_LIMIT`), and then no swap.
    pub fn at_most(self, limit: Option<u64>) -> Self {
        match limit {
            Some(limit) if limit < self.memory + self.swap => {
                Self { memory: limit, swap: 0, limit: Some(Limit::User) }
            }
            _ => self,
        }
    }

    fn describe_limit(&self) -> &'static str {
        match self.limit {
            None => "",
            Some(Limit::Cgroup) => " under this container's memory limit",
            Some(Limit::User) => " under WISE_MEMORY_LIMIT",
            Some(Limit::Device) => " on the device",
        }
    }
}

/// Checks `step` on `device` against the memory available now (the RAM, or the
/// accelerator's own; at most `WISE_MEMORY_LIMIT`): an error when it cannot fit, a warning
/// (`Some`) when it may not. Not with `WISE_MEMORY_CHECK=off`.
pub fn check_before_training(
    step: &StepMemory,
    effective_batch: usize,
    device: &Device,
) -> crate::Result<Option<String>> {
    let off = std::env::var("WISE_MEMORY_CHECK")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "off" | "0" | "false"));
    if off {
        return Ok(None);
    }
    let limit = match std::env::var("WISE_MEMORY_LIMIT") {
        Ok(text) => {
            Some(parse_size(&text).map_err(|e| crate::Error::Config(format!("WISE_MEMORY_LIMIT: {e}")))?)
        }
        Err(_) => None,
    };
    let available = match device.is_cpu() {
        true => Available::now(),
        false => Available::on_device(device),
    };
    let available = available.map(|a| a.at_most(limit));
    match available {
        Some(available) => step.check(available, effective_batch).map_err(crate::Error::Config),
        None => Ok(None),
    }
}

/// `e` with advice when it is an accelerator's out-of-memory error (CUDA's
/// `CUDA_ERROR_OUT_OF_MEMORY`, cuBLAS's `CUBLAS_STATUS_ALLOC_FAILED`, Metal's "out of
/// memory"), which the check before the first step, a lower bound there, may not foresee;
/// else `e`.
pub fn explain_out_of_memory(
    e: crate::Error,
    batch_size: usize,
    grad_accum: usize,
    contrastive: bool,
) -> crate::Error {
    match out_of_memory_advice(&e.to_string(), batch_size, grad_accum, contrastive) {
        Some(explained) => crate::Error::Config(explained),
        None => e,
    }
}

/// An error's `text` with the advice of [`explain_out_of_memory`], when it is an
/// out-of-memory error and a smaller batch is possible.
pub fn out_of_memory_advice(
    text: &str,
    batch_size: usize,
    grad_accum: usize,
    contrastive: bool,
) -> Option<String> {
    let upper = text.to_ascii_uppercase();
    if !["OUT_OF_MEMORY", "OUT OF MEMORY", "ALLOC_FAILED"].iter().any(|s| upper.contains(s)) || batch_size < 2
    {
        return None;
    }
    let half = batch_size.div_ceil(2);
    let advice = if contrastive {
        format!("try --batch-size {half} (the contrastive loss's negatives are the batch's)")
    } else {
        format!(
            "try --batch-size {half} --grad-accum {}, the same effective batch of {} images a step",
            2 * grad_accum,
            batch_size * grad_accum
        )
    };
    Some(format!("{text}: the device ran out of memory at {batch_size} images a batch; {advice}"))
}

/// A size such as `8G`, `512M`, `1.5GB`, `64k` or a number of bytes (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let digits = lower.trim_end_matches(['b', 'i']);
    let (number, scale) = match digits.chars().last() {
        Some('k') => (&digits[..digits.len() - 1], 1u64 << 10),
        Some('m') => (&digits[..digits.len() - 1], 1 << 20),
        Some('g') => (&digits[..digits.len() - 1], 1 << 30),
        Some('t') => (&digits[..digits.len() - 1], 1 << 40),
        _ => (digits, 1),
    };
    match number.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 && n * (scale as f64) < u64::MAX as f64 => {
            Ok((n * scale as f64) as u64)
        }
        _ => Err(format!("'{text}' is not a size such as 8G, 512M or a number of bytes")),
    }
}

/// The most memory this process has held at once (`VmHWM`), where the system says (Linux).
pub fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// A size in bytes as `1.4 GB`, `37 MB` or `12 kB` (powers of 1000).
pub fn display_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.0} MB", b / 1e6)
    } else {
        format!("{:.0} kB", b / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vit_b32() -> VisionConfig {
        wise_clip::config::ClipConfig::preset("ViT-B/32").unwrap().vision_config
    }

    #[test]
    fn activations_follow_the_blocks_saved_tensors() {
        // ViT-B/32: 50 tokens, 12 heads of 50 probabilities kept (600 ≤ 3072).
        let per_token = 10 * 768 + 2 * 3072 + 12 * 50;
        assert_eq!(tower_activation_bytes(12, 50, 768, 3072, 12), (12 * 50 * per_token * 4) as u64);
        // ViT-L/14: 16 heads × 257 tokens = 4112 > 4096: recomputed, not kept.
        assert_eq!(tower_activation_bytes(24, 257, 1024, 4096, 16), (24 * 257 * (10_240 + 8192) * 4) as u64);
    }

    #[test]
    fn a_batch_too_large_is_refused_with_the_batch_that_fits() {
        let vision = vit_b32();
        let params = 88_000_000;
        let step = StepMemory::image_classifier(&Device::Cpu, &vision, params, params, 512, 1);
        let per_image = step.image_activations / 512;
        // ~37 MB an image, ~1 GB of gradients and moments.
        assert!((36_000_000..40_000_000).contains(&per_image), "{per_image}");
        assert_eq!(step.training_state, 3 * 4 * params as u64);
        assert_eq!(step.allocator, 64 << 20);
        // Room for 100.5 images with accumulated gradients, in nine tenths of the RAM.
        let ram = (4 * 4 * params as u64 + step.allocator + 100 * per_image + per_image / 2) / 9 * 10;
        let available = Available { memory: ram, swap: 0, limit: Some(Limit::Cgroup) };
        let err = step.check(available, 512).unwrap_err();
        assert!(err.contains("512 images") && err.contains("container"), "{err}");
        // 100 fit: 512 in 6 passes of 86.
        assert!(
            err.contains("at most 100 images") && err.contains("--batch-size 86 --grad-accum 6"),
            "{err}"
        );

        // The suggestion fits; swap makes a step that does not fit in RAM a warning.
        let suggested = StepMemory::image_classifier(&Device::Cpu, &vision, params, params, 86, 6);
        assert_eq!(suggested.check(available, 516), Ok(None));
        let swap = Available { swap: step.to_add().0, ..available };
        assert!(step.check(swap, 512).unwrap().unwrap().contains("swap"));
        // Within a tenth of the limit: a warning.
        let close = Available { memory: step.to_add().0 * 21 / 20, swap: 0, limit: None };
        assert!(step.check(close, 512).unwrap().unwrap().ends_with("it may not fit"));

        // Accumulating keeps one more gradient copy; a frozen tower trains only the head.
        let accum = StepMemory::image_classifier(&Device::Cpu, &vision, params, params, 86, 2);
        assert_eq!(accum.training_state, 4 * 4 * params as u64);
        let probe = StepMemory::image_classifier(&Device::Cpu, &vision, params, 512_000, 512, 1);
        assert_eq!(probe.training_state, 3 * 4 * 512_000);
    }

    /// On an accelerator: bf16 activations (flash attention keeps no probabilities), each
    /// block's bf16 weights once a batch, and the device's free memory as the limit.
    #[test]
    fn an_accelerator_step_counts_what_it_certainly_keeps() {
        let config = wise_clip::config::ClipConfig::preset("ViT-B/16").unwrap();
        let vision = &config.vision_config;
        let params = 86_000_000;
        let step = StepMemory::accelerator_image_classifier(vision, (params, params), 64, 1, DType::BF16);
        let cpu = StepMemory::image_classifier(&Device::Cpu, vision, params, params, 64, 1);
        assert_eq!((step.device, step.loader, step.allocator), (StepDevice::Accelerator(DType::BF16), 0, 0));
        assert_eq!(step.training_state, cpu.training_state);
        // 12 blocks of 4·768² + 2·768·3072 bf16 weights, q, k and v's f32 biases stacked.
        assert_eq!(step.weight_copies, 12 * (2 * (4 * 768 * 768 + 2 * 768 * 3072) + 4 * 3 * 768));
        // Per image: 11 full blocks of 197 tokens (200 slots) keeping 9 widths and 2 MLP
        // widths in bf16 plus lse, the pooled last one; the patches and embeddings.
        let full = 2 * (5 * 197 * 768 + 4 * 200 * 768 + 2 * 197 * 3072) + 4 * 12 * 200;
        let pooled = 2 * (2 * 197 * 768 + 3 * 200 * 768 + 4 * 768 + 2 * 3072 + 12 * 200) + 4 * 14;
        let outside = 2 * (197 * 768 + 2 * 197 * 768);
        assert_eq!(step.image_activations, 64 * (11 * full + pooled + outside) as u64);
        // 59.7 MB an image against the CPU's 156 MB (f32, probabilities kept).
        assert!(step.image_activations * 5 < cpu.image_activations * 2, "{step:?}\n{cpu:?}");

        let per_image = step.image_activations / 64;
        let fixed = 4 * 4 * params as u64 + step.weight_copies;
        let memory = (fixed + 40 * per_image + per_image / 2) / 9 * 10;
        let available = Available { memory, swap: 0, limit: Some(Limit::Device) };
        let err = step.check(available, 64).unwrap_err();
        assert!(err.contains("needs at least") && err.contains("available on the device"), "{err}");
        assert!(err.contains("at most 40 images") && err.contains("--batch-size 32 --grad-accum 2"), "{err}");
        let suggested =
            StepMemory::accelerator_image_classifier(vision, (params, params), 32, 2, DType::BF16);
        assert_eq!(suggested.check(available, 64), Ok(None));
        let full_device = Available { memory: fixed / 2, ..available };
        assert!(step.check(full_device, 64).unwrap_err().contains("--freeze-encoder"));
    }

    #[test]
    fn device_out_of_memory_errors_say_which_batch_to_try() {
        let cuda = || {
            let inner =
                candle_core::Error::Msg("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into());
            crate::Error::Candle(inner)
        };
        let e = explain_out_of_memory(cuda(), 64, 2, false).to_string();
        assert!(e.starts_with("DriverError(CUDA_ERROR_OUT_OF_MEMORY"), "{e}");
        assert!(e.contains(
            "at 64 images a batch; try --batch-size 32 --grad-accum 4, the same effective batch of 128"
        ));
        let e = explain_out_of_memory(cuda(), 63, 1, true).to_string();
        assert!(e.ends_with("try --batch-size 32 (the contrastive loss's negatives are the batch's)"), "{e}");
        let cublas = crate::Error::Config("cublas: CUBLAS_STATUS_ALLOC_FAILED".into());
        assert!(explain_out_of_memory(cublas, 8, 1, false)
            .to_string()
            .contains("--batch-size 4 --grad-accum 2"));
        // Other errors, and a batch of one, pass through unchanged.
        let other = crate::Error::Config("shape mismatch".into());
        assert_eq!(explain_out_of_memory(other, 64, 1, false).to_string(), "shape mismatch");
        assert_eq!(explain_out_of_memory(cuda(), 1, 1, false).to_string(), cuda().to_string());
    }

    #[test]
    fn sizes_parse_in_powers_of_1024() {
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5gb"), Ok(3 << 29));
        assert_eq!(parse_size(" 64k "), Ok(64 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        for bad in ["", "G", "-1G", "0", "eight", "1e30T", "NaN"] {
            assert!(parse_size(bad).unwrap_err().contains("not a size"), "{bad}");
        }
        let system = Available { memory: 10 << 30, swap: 2 << 30, limit: None };
        assert_eq!(system.at_most(None), system);
        assert_eq!(system.at_most(Some(20 << 30)), system);
        assert_eq!(
            system.at_most(Some(4 << 30)),
            Available { memory: 4 << 30, swap: 0, limit: Some(Limit::User) }
        );
    }

    #[test]
    fn the_text_tower_only_warns() {
        let config = wise_clip::config::ClipConfig::preset("ViT-B/32").unwrap();
        let step = StepMemory::image_classifier(
            &Device::Cpu,
            &config.vision_config,
            150_000_000,
            150_000_000,
            256,
            1,
        )
        .with_text(&config.text_config);
        let (certain, at_most) = step.to_add();
        assert!(at_most > certain);
        let available = Available { memory: (certain + at_most) / 2, swap: 0, limit: None };
        let warning = step.check(available, 256).unwrap().unwrap();
        assert!(
            warning.contains("needs at most") && warning.ends_with("if the captions are long"),
            "{warning}"
        );
        let none = Available { memory: certain / 2, swap: 0, limit: None };
        let err = step.check(none, 256).unwrap_err();
        assert!(
            err.contains("batch fit: use --batch-size") && err.contains("WISE_MEMORY_CHECK=off"),
            "{err}"
        );
        assert!(!err.contains("grad-accum"), "{err}");
    }
}
