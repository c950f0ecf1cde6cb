//! Where the time of one ViT image-tower forward goes, op class by op class (CPU, fp32,
//! random weights): the profile behind BENCHMARKS.md's notes for the speed work.
//! Throughput itself is `wise bench` (and `scripts/bench.sh` against PyTorch).
//!
//! ```text
//! cargo bench -p wise-clip --bench vision -- [--batch-size 32] [--warmup 1] [--seed 0] [--preset ViT-B/32]
//! ```
//!
//! After the warm-up forwards, one timed forward runs through a mirror of
//! `ImageEncoder::forward` built from the same public sub-modules (the model code is not
//! touched), timing each op class (gemm per projection, bias add, layernorm, softmax,
//! head split/merge copies, ...) with its minor page faults. The mirror's output is
//! checked against `forward`'s. The table goes to stderr.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{Device, Module, Tensor, D};
use wise_clip::attention::attention;
use wise_clip::matmul::{matmul, on_blas};
use wise_clip::nn::{softmax_last_dim, Linear};
use wise_clip::params::ParamBuilder;
use wise_clip::vision::ImageEncoder;
use wise_clip::ClipConfig;

fn main() -> anyhow::Result<()> {
    let mut batch = 32;
    let mut warmup = 1;
    let mut seed = 0u64;
    let mut preset = "ViT-B/32".to_string();

    // `cargo bench` appends `--bench`; ignore flags we do not know.
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| anyhow::anyhow!("{name} needs a value"));
        match arg.as_str() {
            "--batch-size" => batch = value(&arg)?.parse()?,
            "--warmup" => warmup = value(&arg)?.parse()?,
            "--seed" => seed = value(&arg)?.parse()?,
            "--preset" => preset = value(&arg)?,
            "-h" | "--help" => {
                eprintln!("usage: vision [--batch-size 32] [--warmup 1] [--seed 0] [--preset ViT-B/32]");
                return Ok(());
            }
            _ => {}
        }
    }
    anyhow::ensure!(batch > 0, "--batch-size must be positive");

    let device = Device::Cpu;
    let config = ClipConfig::preset(&preset).ok_or_else(|| anyhow::anyhow!("unknown preset {preset}"))?;
    let vc = &config.vision_config;
    let encoder = ImageEncoder::new(&mut ParamBuilder::fresh(seed, &device), vc, config.projection_dim)?;
    let pixels = Tensor::randn(0f32, 1f32, (batch, vc.num_channels, vc.image_size, vc.image_size), &device)?;
    let mut out = encoder.forward(&pixels)?;
    for _ in 1..warmup {
        out = encoder.forward(&pixels)?;
    }

    let mut prof = Prof::default();
    let t0 = Instant::now();
    let mirrored = mirrored_forward(&encoder, &config, &pixels, &mut prof)?;
    let wall = t0.elapsed().as_secs_f64();
    let diff = (&mirrored - &out)?.abs()?.max_all()?.to_scalar::<f32>()?;
    anyhow::ensure!(diff == 0.0, "mirrored forward differs from ImageEncoder::forward by {diff}");
    prof.report(wall, batch);
    Ok(())
}

/// This process's minor page faults so far (Linux `/proc/self/stat` field 10), if readable.
/// Every fresh page of a tensor buffer costs one, plus the kernel zeroing the page.
fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the `(comm)`, which may itself hold spaces: state is field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(7)?.parse().ok()
}

/// Wall time, call count, FLOPs and minor page faults per op class.
#[derive(Default)]
struct Prof {
    rows: BTreeMap<&'static str, (f64, usize, f64, u64)>,
}

impl Prof {
    fn time<T>(
        &mut self,
        name: &'static str,
        flops: f64,
        f: impl FnOnce() -> candle_core::Result<T>,
    ) -> candle_core::Result<T> {
        let f0 = minor_faults().unwrap_or(0);
        let t0 = Instant::now();
        let y = f()?;
        let dt = t0.elapsed().as_secs_f64();
        let e = self.rows.entry(name).or_default();
        e.0 += dt;
        e.1 += 1;
        e.2 += flops;
        e.3 += minor_faults().unwrap_or(0).saturating_sub(f0);
        Ok(y)
    }

    fn report(&self, wall: f64, batch: usize) {
        let mut rows: Vec<_> = self.rows.iter().collect();
        rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
        let total: f64 = rows.iter().map(|r| r.1 .0).sum();
        eprintln!("breakdown of one forward, batch {batch}: {wall:.3} s wall, {total:.3} s in timed ops");
        eprintln!(
            "{:<34} {:>8} {:>6} {:>6} {:>8} {:>9}",
            "op class", "s", "%", "calls", "GFLOP/s", "pagefault"
        );
        for (name, (t, n, flops, faults)) in rows {
            let gf = if *flops > 0.0 { format!("{:.1}", flops / t / 1e9) } else { "-".into() };
            eprintln!("{name:<34} {t:>8.3} {:>5.1}% {n:>6} {gf:>8} {faults:>9}", 100.0 * t / wall);
        }
    }
}

/// `Linear::forward`: one gemm with the bias in its accumulator on the BLAS; else the gemm
/// and the bias add, timed apart.
fn linear(l: &Linear, x: &Tensor, gemm: &'static str, prof: &mut Prof) -> candle_core::Result<Tensor> {
    let (last, out_dim) = (x.dim(D::Minus1)?, l.weight.dim(0)?);
    let rows = x.elem_count() / last;
    let flops = 2.0 * (rows * last * out_dim) as f64;
    if on_blas(&[x]) {
        return prof.time(gemm, flops, || l.forward(x));
    }
    let y = prof.time(gemm, flops, || matmul(&x.reshape((rows, last))?, &l.weight.t()?))?;
    let y = match &l.bias {
        Some(b) => prof.time("linear bias add", 0.0, || y.broadcast_add(b))?,
        None => y,
    };
    let mut out_dims = x.dims().to_vec();
    *out_dims.last_mut().expect("x has a last dim") = out_dim;
    y.reshape(out_dims)
}

/// `ImageEncoder::forward` op by op, from the encoder's public parts (see `vision.rs`, `nn.rs`).
fn mirrored_forward(
    enc: &ImageEncoder,
    config: &ClipConfig,
    pixels: &Tensor,
    prof: &mut Prof,
) -> candle_core::Result<Tensor> {
    let vc = &config.vision_config;
    let (b, ch, _, _) = pixels.dims4()?;
    let (p, g, c) = (vc.patch_size, vc.grid_size(), vc.hidden_size);
    let heads = vc.num_attention_heads;
    let head_dim = c / heads;
    let t = 1 + g * g;

    // Embeddings.
    let patches = prof.time("patch im2col copy", 0.0, || {
        pixels
            .narrow(2, 0, g * p)?
            .narrow(3, 0, g * p)?
            .reshape((b, ch, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b * g * g, ch * p * p))
    })?;
    let w = enc.patch_embedding.reshape((c, ch * p * p))?;
    let flops = 2.0 * (b * g * g * ch * p * p * c) as f64;
    let patches =
        prof.time("gemm patch_embed", flops, || matmul(&patches, &w.t()?)?.reshape((b, g * g, c)))?;
    let x = prof.time("embed cat + pos add", 0.0, || {
        let class = enc.class_embedding.reshape((1, 1, c))?.repeat((b, 1, 1))?;
        Tensor::cat(&[&class, &patches], 1)?.broadcast_add(&enc.position_embedding.unsqueeze(0)?)
    })?;
    let mut x = prof.time("layernorm", 0.0, || enc.pre_layrnorm.forward(&x))?;

    let split = |y: Tensor| y.reshape((b, t, heads, head_dim))?.transpose(1, 2)?.contiguous();
    let attn_flops = 2.0 * (b * heads * t * t * head_dim) as f64;
    for layer in &enc.encoder.layers {
        let a = &layer.self_attn;
        let h = prof.time("layernorm", 0.0, || layer.layer_norm1.forward(&x))?;
        let q = linear(&a.q_proj, &h, "gemm q/k/v proj (+bias)", prof)?;
        let k = linear(&a.k_proj, &h, "gemm q/k/v proj (+bias)", prof)?;
        let v = linear(&a.v_proj, &h, "gemm q/k/v proj (+bias)", prof)?;
        let y = if on_blas(&[&h]) {
            prof.time("attention (fused)", 2.0 * attn_flops, || attention(&q, &k, &v, heads, None))?
        } else {
            let q = prof.time("attn q * scale", 0.0, || q * (head_dim as f64).powf(-0.5))?;
            let (q, k, v) =
                prof.time("attn head split (contiguous)", 0.0, || Ok((split(q)?, split(k)?, split(v)?)))?;
            let scores = prof.time("attn matmul q·kᵀ", attn_flops, || matmul(&q, &k.t()?))?;
            let probs = prof.time("softmax", 0.0, || softmax_last_dim(&scores))?;
            let y = prof.time("attn matmul p·v", attn_flops, || matmul(&probs, &v))?;
            prof.time("attn head merge (copy)", 0.0, || y.transpose(1, 2)?.reshape((b, t, c)))?
        };
        let y = linear(&a.out_proj, &y, "gemm out_proj (+bias)", prof)?;
        x = prof.time("residual add", 0.0, || &x + &y)?;
        let h = prof.time("layernorm", 0.0, || layer.layer_norm2.forward(&x))?;
        let h = linear(&layer.mlp.fc1, &h, "gemm mlp fc1 (+bias)", prof)?;
        let h = prof.time("quick_gelu", 0.0, || vc.hidden_act.apply(&h))?;
        let h = linear(&layer.mlp.fc2, &h, "gemm mlp fc2 (+bias)", prof)?;
        x = prof.time("residual add", 0.0, || &x + &h)?;
    }
    let pooled =
        prof.time("layernorm", 0.0, || enc.post_layernorm.forward(&x.narrow(1, 0, 1)?.squeeze(1)?))?;
    linear(&enc.visual_projection, &pooled, "gemm visual_projection", prof)
}
