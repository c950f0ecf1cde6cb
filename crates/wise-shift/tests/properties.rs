//! Properties that do not need a reference: seeded determinism, severity ordering on real
//! photographs, any image size, and the seeded generator's noise statistics against numpy's.
//!
//! The severity test reads real CIFAR-10 test images from
//! `<repo>/../shared/datasets/cifar10/cifar10-jpeg.tar.gz`; without it the test prints a
//! note and passes, except under CI (`CI` set), where it fails.

use std::io::Read;

use image::RgbImage;
use wise_shift::{corrupt, Corruption, Replay, SeededNoise, Severity};

#[path = "../../wise-clip/tests/support/mod.rs"]
mod support;
use support::{fixture, shared_datasets};

fn input(name: &str) -> RgbImage {
    image::open(fixture(&format!("shift/images/{name}.png"))).expect("fixture image").to_rgb8()
}

fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    let mse =
        a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2)).sum::<f64>()
            / a.as_raw().len() as f64;
    if mse == 0.0 {
        100.0
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// The first `n` test images of the CIFAR-10 JPEG archive (in archive order), or `None`.
fn cifar_test_images(n: usize) -> Option<Vec<RgbImage>> {
    let archive = shared_datasets()?.join("cifar10/cifar10-jpeg.tar.gz");
    let file = std::fs::File::open(&archive).unwrap_or_else(|e| panic!("{}: {e}", archive.display()));
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut images = Vec::new();
    for entry in tar.entries().expect("tar") {
        let mut entry = entry.expect("tar entry");
        let path = entry.path().expect("path").to_string_lossy().into_owned();
        if !(path.starts_with("test/") && path.ends_with(".jpg")) {
            continue;
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("read");
        images.push(image::load_from_memory(&bytes).expect("CIFAR JPEG").to_rgb8());
        if images.len() == n {
            break;
        }
    }
    assert_eq!(images.len(), n, "{} has fewer than {n} test images", archive.display());
    Some(images)
}

#[test]
fn a_seed_determines_the_output() {
    let img = input("a");
    for c in Corruption::ALL {
        for s in [Severity::ALL[0], Severity::ALL[4]] {
            let run =
                |seed| corrupt(&img, c, s, &mut SeededNoise::for_image(seed, c.name(), "cat/1.png")).unwrap();
            assert_eq!(run(7), run(7), "{c} {s}: same seed, different output");
            if c.is_random() && c != Corruption::Frost {
                assert_ne!(run(7), run(8), "{c} {s}: the seed changes nothing");
            }
        }
    }
    // frost draws only 3 numbers; over a few seeds some must differ
    let frost =
        |seed| corrupt(&img, Corruption::Frost, Severity::ALL[2], &mut SeededNoise::new(seed)).unwrap();
    assert!((1..6).any(|seed| frost(seed) != frost(0)));
}

/// Severity must order distortion: PSNR against the clean image falls as severity rises,
/// averaged over 24 real CIFAR-10 test images (32×32, the CIFAR table, the draws of one
/// image shared by its five severities).
///
/// With the published parameters this holds for 12 of the 15 corruptions; motion blur's
/// severities 3 and 4 are (6, 2) and (8, 2), which differ only in kernel taps weighing
/// e^-18, so they tie (allowed: 0.05 dB). It does not hold for three, which are checked
/// for what they do instead:
/// - glass_blur: severity 3 blurs more (σ 0.4) than 4 (σ 0.25, but two shuffling sweeps),
///   and blur hides the shuffling, so PSNR goes up, down, up (≈ 23.3, 23.4, 24.1, 20.3, 20.8
///   dB); only severities 4–5 (two sweeps) are below 1–3.
/// - elastic_transform: severity 1 is the largest affine displacement (0.08·32 pixels) and
///   PSNR punishes displacement most, so PSNR *rises* with severity (≈ 20.0 → 23.4 dB)
///   while the local warping grows.
/// - frost: the image weight falls and the frost weight rises together; past severity 3
///   the darkening of the image offsets the added ice (≈ 20.5, 17.1, 16.6, 17.6, 18.0 dB
///   with this texture), and severity 5 stays below 1.
#[test]
fn severity_orders_distortion_on_real_images() {
    let Some(images) = cifar_test_images(24) else { return };
    let mut failures = Vec::new();
    for c in Corruption::ALL {
        let mut mean = [0.0f64; 5];
        for (i, img) in images.iter().enumerate() {
            for (k, s) in Severity::ALL.into_iter().enumerate() {
                let mut noise = SeededNoise::for_image(0, c.name(), &format!("{i}.jpg"));
                mean[k] += psnr(img, &corrupt(img, c, s, &mut noise).unwrap()) / images.len() as f64;
            }
        }
        let shown = mean.iter().map(|p| format!("{p:6.2}")).collect::<Vec<_>>().join(" ");
        eprintln!("{:<18} {shown}", c.name());
        let ok = match c {
            Corruption::GlassBlur => mean[3].max(mean[4]) < mean[0].min(mean[1]).min(mean[2]),
            Corruption::ElasticTransform => mean.windows(2).all(|w| w[1] > w[0]),
            Corruption::Frost => mean[4] < mean[0] && mean[1] < mean[0],
            _ => mean.windows(2).all(|w| w[1] < w[0] + 0.05) && mean[4] < mean[0] - 1.0,
        };
        if !ok {
            failures.push(format!("{c}: mean PSNR by severity {shown}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The seeded generator against numpy's (CIFAR table; the 224-pixel test in reference.rs
/// does the same for the ImageNet table): image `a`'s reference outputs were made with
/// numpy draws, ours use ChaCha8. For Gaussian and shot noise the difference image must
/// have the same spread (std within 6%, ours averaged over 8 seeds; one 32×32 image
/// estimates a std to about ±1.3%). Impulse noise hits only 1–7% of the values, too few
/// for one image's std to say much, so its hit rate over 8 seeds must be the published
/// amount (within 12%; a hit on a value already 0 or 255 changes nothing).
#[test]
fn seeded_noise_has_the_reference_statistics() {
    let st_bytes = std::fs::read(fixture("shift/reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
    let clean = input("a");
    let stats = |out: &RgbImage| {
        let d: Vec<f64> =
            out.as_raw().iter().zip(clean.as_raw()).map(|(o, c)| f64::from(*o) - f64::from(*c)).collect();
        let n = d.len() as f64;
        let mean = d.iter().sum::<f64>() / n;
        let std = (d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        let hit = d.iter().filter(|v| **v != 0.0).count() as f64 / n;
        (std, hit)
    };
    for c in [Corruption::GaussianNoise, Corruption::ShotNoise, Corruption::ImpulseNoise] {
        for s in Severity::ALL {
            let t = st.tensor(&format!("out.a.{c}.{s}")).unwrap();
            let reference = RgbImage::from_raw(32, 32, t.data().to_vec()).unwrap();
            let (ref_std, ref_hit) = stats(&reference);
            let ours: Vec<(f64, f64)> = (0..8)
                .map(|seed| stats(&corrupt(&clean, c, s, &mut SeededNoise::new(seed)).unwrap()))
                .collect();
            let std = ours.iter().map(|o| o.0).sum::<f64>() / 8.0;
            let hit = ours.iter().map(|o| o.1).sum::<f64>() / 8.0;
            eprintln!("{c} {s}: std of diff ours {std:.2} numpy {ref_std:.2}; changed ours {hit:.3} numpy {ref_hit:.3}");
            if c == Corruption::ImpulseNoise {
                let amount = [0.01, 0.02, 0.03, 0.05, 0.07][usize::from(s.get() - 1)];
                assert!((hit / amount - 1.0).abs() < 0.12, "{c} {s}: hit rate {hit:.4} vs amount {amount}");
            } else {
                assert!((std / ref_std - 1.0).abs() < 0.06, "{c} {s}: std {std:.2} vs {ref_std:.2}");
            }
        }
    }
}

/// Any size works: tiny, odd, non-square, at the table boundary. Outputs keep the size;
/// nothing panics, whatever the draws.
#[test]
fn every_size_gives_an_output_of_that_size() {
    let sizes = [(1, 1), (1, 5), (5, 1), (2, 3), (7, 5), (17, 9), (40, 70), (85, 90)];
    for (w, h) in sizes {
        let img =
            RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 37 % 256) as u8, (y * 53 % 256) as u8, 128]));
        for c in Corruption::ALL {
            for s in Severity::ALL {
                let out = corrupt(&img, c, s, &mut SeededNoise::new(u64::from(w * 100 + h))).unwrap();
                assert_eq!(out.dimensions(), (w, h), "{c} {s} at {w}×{h}");
                // replayed draws that are all out of range must not panic either
                let mut wild = Replay::new(vec![1e9; 100_000]);
                let out = corrupt(&img, c, s, &mut wild).unwrap();
                assert_eq!(out.dimensions(), (w, h), "{c} {s} at {w}×{h}, wild draws");
            }
        }
    }
}
