//! The memory estimate behind `wise train`'s check (`wise_train::memory`) against the peak
//! a training step really reaches. Each measurement runs in a fresh process (this test
//! binary run again for one ignored test), since a process's peak never comes down: the
//! difference between two batch sizes is what the activations cost, without the harness.

use std::process::Command;

use candle_core::{Device, Tensor};
use wise_clip::config::ClipConfig;
use wise_clip::ImagePreprocessor;
use wise_train::loss::cross_entropy;
use wise_train::memory::{peak_resident_bytes, StepMemory};
use wise_train::optim::{clip_scale, grad_norm, AdamW, AdamWConfig};
use wise_zeroshot::{ClassifierMeta, ImageClassifier};

const BATCH_ENV: &str = "WISE_STEP_MEMORY_BATCH";

/// A tower whose activations outweigh its weights: 257 tokens of width 96, 2 layers, MLP
/// 768 wide, 2 heads (whose 514 probabilities a token are kept: ≤ 768).
fn classifier() -> ImageClassifier {
    let mut vision = ClipConfig::preset("ViT-B/32").unwrap().vision_config;
    vision.hidden_size = 96;
    vision.intermediate_size = 768;
    vision.num_hidden_layers = 2;
    vision.num_attention_heads = 2;
    vision.image_size = 128;
    vision.patch_size = 8;
    let meta = ClassifierMeta {
        class_names: (0..10).map(|c| format!("class {c}")).collect(),
        templates: Vec::new(),
        source_model: "random".into(),
        preprocessing: (&ImagePreprocessor::new(vision.image_size)).into(),
        vision_config: vision,
        projection_dim: 64,
        extra: Default::default(),
    };
    ImageClassifier::fresh(meta, 0, &Device::Cpu).unwrap()
}

/// Run by [`activations_cost_what_the_estimate_says`] in a child process: two training steps
/// at the batch size it names, then the peak and the estimate on stdout.
#[test]
#[ignore = "a child process of activations_cost_what_the_estimate_says"]
fn measure_one_batch_size() {
    let Ok(batch) = std::env::var(BATCH_ENV) else { return };
    let batch: usize = batch.parse().unwrap();
    let classifier = classifier();
    let params = classifier.params.clone();
    let mut optimizer = AdamW::new(AdamWConfig::default(), &params).unwrap();
    let size = classifier.meta.vision_config.image_size;
    let pixels = Tensor::randn(0f32, 1f32, (batch, 3, size, size), &Device::Cpu).unwrap();
    let labels = Tensor::new((0..batch as u32).map(|i| i % 10).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    for _ in 0..2 {
        let loss = cross_entropy(&classifier.logits(&pixels).unwrap(), &labels, 0.0).unwrap();
        let grads = wise_clip::backward(&loss).unwrap();
        let scale = clip_scale(grad_norm(&params, &grads).unwrap(), 1.0);
        optimizer.step(&params, &grads, 1e-4, scale).unwrap();
    }
    let count = params.values().map(|v| v.elem_count()).sum();
    let step =
        StepMemory::image_classifier(&Device::Cpu, &classifier.meta.vision_config, count, count, batch, 1);
    println!("PEAK {} ESTIMATE {}", peak_resident_bytes().unwrap(), step.total() - step.loader);
}

/// `(peak, estimate)` of two steps at `batch` images, in a fresh process.
fn measure(batch: usize) -> (f64, f64) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "measure_one_batch_size", "--ignored", "--nocapture", "--test-threads", "1"])
        .env(BATCH_ENV, batch.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // The harness prints the test's name on the same line, before it.
    let line = stdout.split("PEAK ").nth(1).unwrap_or_else(|| panic!("{stdout}"));
    let numbers: Vec<f64> = line.split_whitespace().take(3).filter_map(|w| w.parse().ok()).collect();
    (numbers[0], numbers[1])
}

#[test]
#[cfg(target_os = "linux")]
fn activations_cost_what_the_estimate_says() {
    let (small_peak, small_estimate) = measure(4);
    let (large_peak, large_estimate) = measure(36);
    let measured = large_peak - small_peak;
    let estimated = large_estimate - small_estimate;
    // 32 images × 2 layers × 257 tokens × (10·96 + 2·768 + 2·257) floats = 198 MB.
    assert_eq!(estimated, (32 * 2 * 257 * (960 + 1536 + 514) * 4 + 32 * 2 * 3 * 128 * 128 * 4) as f64);
    let ratio = measured / estimated;
    eprintln!(
        "peak {:.1} → {:.1} MB, estimate {:.1} → {:.1} MB: activations measured {:.1} MB, estimated {:.1} (×{ratio:.3})",
        small_peak / 1e6,
        large_peak / 1e6,
        small_estimate / 1e6,
        large_estimate / 1e6,
        measured / 1e6,
        estimated / 1e6
    );
    // Seen: ×0.917–0.921 over four runs.
    assert!((0.85..1.1).contains(&ratio), "activations measured {measured}, estimated {estimated}");
    // The whole estimate bounds the peak from above (it counts the program at 64 MB).
    assert!(large_peak <= large_estimate, "peak {large_peak} above the estimate {large_estimate}");
}
