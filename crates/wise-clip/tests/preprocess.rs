//! Image decoding and CLIP preprocessing against the reference made in Python
//! (`tests/fixtures/images/expected.safetensors`: PIL decoding, PIL bicubic resize, HF
//! `CLIPImageProcessor` pixels), plus the training transform and error reporting.
//!
//! Run with `--nocapture` to see the measured differences.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use image::RgbImage;
use rand::rngs::StdRng;
use rand::SeedableRng;
use wise_clip::preprocess::{
    load_rgb, random_resized_crop_params, resize_bicubic, shortest_side_size, ImagePreprocessor, CLIP_MEAN,
    CLIP_STD, TRAIN_RATIO, TRAIN_SCALE,
};

const IMAGES: [&str; 9] = [
    "rgb.jpg",
    "wide.png",
    "tall.png",
    "grey.png",
    "rgba.png",
    "palette.png",
    "grey16.png",
    "exif_rotated.jpg",
    "cmyk.jpg",
];
const SIZES: [usize; 2] = [32, 64];
/// Allowed difference of normalized pixels (≈ 2 levels of 8 bits).
const PIXEL_TOL: f32 = 0.03;

fn images_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/images")
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(images_dir().join("expected.safetensors"), &Device::Cpu)
        .expect("tests/fixtures/images/expected.safetensors")
}

fn stem(name: &str) -> &str {
    name.rsplit_once('.').map_or(name, |(s, _)| s)
}

/// An `[h, w, 3]` u8 tensor as an image.
fn tensor_image(t: &Tensor) -> RgbImage {
    let (h, w, c) = t.dims3().unwrap();
    assert_eq!(c, 3);
    let data = t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    RgbImage::from_raw(w as u32, h as u32, data).unwrap()
}

fn max_u8_diff(a: &RgbImage, b: &RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0)
}

fn max_f32_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn decoding_matches_pil() {
    let exp = expected();
    let mut report = Vec::new();
    for name in IMAGES {
        let img = load_rgb(&images_dir().join(name)).unwrap();
        let want = tensor_image(&exp[&format!("decoded.{}", stem(name))]);
        assert_eq!(img.dimensions(), want.dimensions(), "{name}");
        let d = max_u8_diff(&img, &want);
        report.push(format!("{name}: {d}"));
        // PNG decoding is exact; JPEG decoders (zune-jpeg vs libjpeg) may differ slightly.
        let tol = if name.ends_with(".png") { 0 } else { 3 };
        assert!(d <= tol, "{name}: decoded pixels differ by {d} levels");
    }
    eprintln!("max |decoded - PIL| (8-bit levels): {}", report.join(", "));
}

#[test]
fn bicubic_resize_matches_pil() {
    // From the reference decoded pixels, so only the resize is compared.
    let exp = expected();
    let mut report = Vec::new();
    for name in IMAGES {
        let src = tensor_image(&exp[&format!("decoded.{}", stem(name))]);
        for s in SIZES {
            let want = tensor_image(&exp[&format!("resized.{s}.{}", stem(name))]);
            let (w, h) = shortest_side_size(src.width(), src.height(), s as u32).unwrap();
            assert_eq!((w, h), want.dimensions(), "{name} at {s}");
            let got = resize_bicubic(&src, w, h).unwrap();
            let d = max_u8_diff(&got, &want);
            report.push(format!("{name}@{s}: {d}"));
            assert!(d <= 1, "{name} at {s}: resize differs from PIL by {d} levels");
        }
    }
    eprintln!("max |resize - PIL| (8-bit levels): {}", report.join(", "));
}

/// Largest difference in 8-bit levels between two normalized CHW images.
fn max_level_diff(a: &[f32], b: &[f32], s: usize) -> f32 {
    let mut worst = 0f32;
    for (c, std) in CLIP_STD.iter().enumerate() {
        let plane = c * s * s..(c + 1) * s * s;
        let d = max_f32_diff(&a[plane.clone()], &b[plane]);
        worst = worst.max(d * std * 255.0);
    }
    worst
}

#[test]
fn eval_matches_hf_clip_image_processor() {
    let exp = expected();
    let mut report = Vec::new();
    for s in SIZES {
        let pre = ImagePreprocessor::new(s);
        for name in IMAGES {
            let want =
                exp[&format!("pixels.{s}.{}", stem(name))].flatten_all().unwrap().to_vec1::<f32>().unwrap();

            // Preprocessing alone (from the reference decoding): within PIXEL_TOL, in fact
            // within one 8-bit level.
            let ref_img = tensor_image(&exp[&format!("decoded.{}", stem(name))]);
            let from_ref = pre.eval(&ref_img).unwrap();
            assert_eq!(from_ref.len(), 3 * s * s);
            let d_ref = max_f32_diff(&from_ref, &want);
            assert!(d_ref <= PIXEL_TOL, "{name} at {s}: {d_ref} from the reference decoding");
            assert!(max_level_diff(&from_ref, &want, s) <= 1.0 + 1e-3, "{name} at {s}");

            // The whole pipeline from the file. PNG decoding is exact, so the same bound holds.
            // JPEG decoders differ (zune-jpeg's IDCT vs libjpeg-turbo's, ±2 levels here), and
            // bicubic upscaling can carry that through: allow 2 levels, which is 0.0292..0.0300
            // in normalized units depending on the channel's std.
            let got = pre.eval(&load_rgb(&images_dir().join(name)).unwrap()).unwrap();
            let d = max_f32_diff(&got, &want);
            let levels = max_level_diff(&got, &want, s);
            report.push(format!("{name}@{s}: {d:.4} ({levels:.2} levels; {d_ref:.4} from PIL's decoding)"));
            if name.ends_with(".png") {
                assert!(d <= PIXEL_TOL, "{name} at {s}: pixels differ from HF by {d}");
            } else {
                assert!(levels <= 2.0 + 1e-3, "{name} at {s}: pixels differ from HF by {d}");
            }
        }
    }
    eprintln!("max |eval - HF| (normalized):\n  {}", report.join("\n  "));
}

#[test]
fn eval_files_stacks_in_order() {
    let pre = ImagePreprocessor::new(32);
    let paths: Vec<PathBuf> = IMAGES.iter().map(|n| images_dir().join(n)).collect();
    let t = pre.eval_files(&paths, &Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[IMAGES.len(), 3, 32, 32]);
    for (i, p) in paths.iter().enumerate() {
        let one = pre.eval(&load_rgb(p).unwrap()).unwrap();
        let row = t.get(i).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(row, one, "{}", p.display());
    }
    let empty = pre.eval_files(&[], &Device::Cpu).unwrap();
    assert_eq!(empty.dims(), &[0, 3, 32, 32]);
}

#[test]
fn corrupt_or_missing_files_are_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("broken.png");
    std::fs::write(&garbage, b"this is not a png at all \x00\x01\x02\xff").unwrap();
    let err = load_rgb(&garbage).unwrap_err();
    assert!(err.to_string().contains(&garbage.display().to_string()), "{err}");

    // A PNG signature followed by garbage: the decoder itself fails.
    let truncated = dir.path().join("truncated.png");
    let mut bytes = std::fs::read(images_dir().join("wide.png")).unwrap();
    bytes.truncate(60);
    std::fs::write(&truncated, &bytes).unwrap();
    let err = load_rgb(&truncated).unwrap_err();
    assert!(err.to_string().contains(&truncated.display().to_string()), "{err}");

    let missing = dir.path().join("missing.jpg");
    let err = load_rgb(&missing).unwrap_err();
    assert!(err.to_string().contains(&missing.display().to_string()), "{err}");

    // In a batch, the error is the bad file's.
    let pre = ImagePreprocessor::new(32);
    let paths = vec![images_dir().join("rgb.jpg"), truncated.clone()];
    let err = pre.eval_files(&paths, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains(&truncated.display().to_string()), "{err}");
}

/// A 24-bit BMP declaring `w × h` pixels, with `pixels` bytes of (black) pixel data.
fn bmp(w: u32, h: u32, pixels: usize) -> Vec<u8> {
    let mut out = b"BM".to_vec();
    out.extend((54 + pixels as u32).to_le_bytes());
    out.extend([0u8; 4]);
    out.extend(54u32.to_le_bytes());
    for field in [40, w, h] {
        out.extend(field.to_le_bytes());
    }
    out.extend(1u16.to_le_bytes());
    out.extend(24u16.to_le_bytes());
    out.extend([0u8; 24]);
    out.resize(54 + pixels, 0);
    out
}

/// A small file that declares a huge image is refused before anything is decoded, as
/// PIL refuses it (a 2.6 MB PNG of 30,000 × 30,000 took 8 GB to decode).
#[test]
fn decompression_bombs_are_refused_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.bmp");
    std::fs::write(&small, bmp(4, 4, 4 * 4 * 3)).unwrap();
    let img = load_rgb(&small).unwrap();
    assert_eq!((img.dimensions(), img.get_pixel(3, 3).0), ((4, 4), [0, 0, 0]));

    let bomb = dir.path().join("bomb.bmp");
    std::fs::write(&bomb, bmp(20_000, 10_000, 0)).unwrap();
    let err = load_rgb(&bomb).unwrap_err().to_string();
    assert!(
        err.contains("bomb.bmp") && err.contains("20000 × 10000 pixels is more than the 178956970"),
        "{err}"
    );
}

fn test_image(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 7 + y * 3) as u8, (x * 13) as u8 ^ (y * 5) as u8, (255 - (x + y) % 256) as u8])
    })
}

/// The 8-bit levels, normalised as a tensor (on any device, by table lookup), are the
/// transforms' own `f32` pixels to the bit, for every level and both transforms.
#[test]
fn levels_normalized_as_a_tensor_equal_the_transforms() {
    let pre =
        ImagePreprocessor { mean: [0.5, 0.25, 0.125], std: [0.2, 0.3, 0.7], ..ImagePreprocessor::new(16) };
    // A busy image through both transforms ...
    let img = RgbImage::from_fn(64, 48, |x, y| {
        let v = (y * 64 + x) as u8;
        image::Rgb([v, v.wrapping_mul(7), 255 - v])
    });
    let mut levels = pre.eval_levels(&img).unwrap();
    let mut expected = pre.eval(&img).unwrap();
    levels.extend(pre.train_levels(&img, &mut StdRng::seed_from_u64(3)).unwrap());
    expected.extend(pre.train(&img, &mut StdRng::seed_from_u64(3)).unwrap());
    let tensor = Tensor::from_vec(levels.clone(), (2, 3, 16, 16), &Device::Cpu).unwrap();
    let normalized = pre.normalize_levels(&tensor).unwrap();
    assert_eq!(normalized.dims(), &[2, 3, 16, 16]);
    assert_eq!(normalized.flatten_all().unwrap().to_vec1::<f32>().unwrap(), expected);
    // ... and every level of every channel: x/255 in f64, then (x − mean)/std in f32.
    let all: Vec<u8> = (0..3).flat_map(|_| 0..=255u8).collect();
    let table = pre.normalize_levels(&Tensor::from_vec(all, (1, 3, 16, 16), &Device::Cpu).unwrap()).unwrap();
    let table = table.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (i, value) in table.iter().enumerate() {
        let (c, level) = (i / 256, (i % 256) as f64);
        let x = (level * (1.0 / 255.0)) as f32;
        assert_eq!(*value, (x - pre.mean[c]) / pre.std[c], "channel {c}, level {level}");
    }
    // Levels, not pixels: anything else is refused.
    let floats = Tensor::zeros((1, 3, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(pre.normalize_levels(&floats).unwrap_err().to_string().contains("u8"));
    let two_channels = Tensor::zeros((1, 2, 4, 4), candle_core::DType::U8, &Device::Cpu).unwrap();
    assert!(pre.normalize_levels(&two_channels).is_err());
}

#[test]
fn train_is_deterministic_for_a_seed() {
    let pre = ImagePreprocessor::new(32);
    let img = test_image(80, 60);
    let a = pre.train(&img, &mut StdRng::seed_from_u64(42)).unwrap();
    let b = pre.train(&img, &mut StdRng::seed_from_u64(42)).unwrap();
    assert_eq!(a.len(), 3 * 32 * 32);
    assert_eq!(a, b);
    let outs: Vec<Vec<f32>> =
        (0..8).map(|seed| pre.train(&img, &mut StdRng::seed_from_u64(seed)).unwrap()).collect();
    assert!(outs.iter().any(|o| o != &outs[0]), "crops never vary");
    // Values are normalized pixels.
    let lo = (0.0 - CLIP_MEAN[2]) / CLIP_STD[2] - 1e-4;
    let hi = (1.0 - CLIP_MEAN[2]) / CLIP_STD[2] + 1e-4;
    assert!(a[2 * 32 * 32..].iter().all(|&v| (lo..=hi).contains(&v)));
    // Small and extreme images work too.
    for (w, h) in [(1, 1), (3, 200), (500, 2), (32, 32)] {
        let out = pre.train(&test_image(w, h), &mut StdRng::seed_from_u64(1)).unwrap();
        assert_eq!(out.len(), 3 * 32 * 32);
    }
}

#[test]
fn random_resized_crop_stays_within_bounds() {
    let mut rng = StdRng::seed_from_u64(1234);
    let mut fallbacks = 0;
    let mut sampled = 0;
    for trial in 0..2000u64 {
        let w = 1 + (trial * 37 % 300) as u32;
        let h = 1 + (trial * 91 % 250) as u32;
        let c = random_resized_crop_params(w, h, TRAIN_SCALE, TRAIN_RATIO, &mut rng).unwrap();
        assert!(c.width >= 1 && c.height >= 1, "{c:?}");
        assert!(c.left + c.width <= w && c.top + c.height <= h, "{c:?} in {w}x{h}");
        let (cw, ch, area) = (c.width as f64, c.height as f64, (w * h) as f64);
        // The sides were rounded from real values; allow for that rounding.
        let area_lo = (cw - 0.5) * (ch - 0.5) / area;
        let area_hi = (cw + 0.5) * (ch + 0.5) / area;
        let ratio_lo = (cw - 0.5) / (ch + 0.5);
        let ratio_hi = (cw + 0.5) / (ch - 0.5).max(1e-9);
        let area_ok = area_lo <= TRAIN_SCALE.1 + 1e-9 && area_hi >= TRAIN_SCALE.0 - 1e-9;
        let ratio_ok = ratio_lo <= TRAIN_RATIO.1 + 1e-9 && ratio_hi >= TRAIN_RATIO.0 - 1e-9;
        if area_ok && ratio_ok {
            sampled += 1;
        } else {
            // torchvision's fallback: the whole image, centered, ratio clamped.
            fallbacks += 1;
            let in_ratio = w as f64 / h as f64;
            if in_ratio < TRAIN_RATIO.0 {
                assert_eq!(c.width, w, "{c:?} in {w}x{h}");
            } else if in_ratio > TRAIN_RATIO.1 {
                assert_eq!(c.height, h, "{c:?} in {w}x{h}");
            } else {
                assert_eq!((c.width, c.height), (w, h), "{c:?} in {w}x{h}");
            }
            assert_eq!(c.left, (w - c.width) / 2);
            assert_eq!(c.top, (h - c.height) / 2);
        }
    }
    // Both paths ran (most of these sizes have aspect ratios far outside 3/4..4/3).
    assert!(sampled > 500 && fallbacks > 100, "{sampled} sampled crops, {fallbacks} fallbacks");

    // A 200x150 image (ratio 4/3) always finds a crop; check the sampled ranges directly.
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..500 {
        let c = random_resized_crop_params(200, 150, TRAIN_SCALE, TRAIN_RATIO, &mut rng).unwrap();
        let frac = (c.width * c.height) as f64 / 30000.0;
        assert!((0.88..=1.0).contains(&frac), "{c:?}: area fraction {frac}");
        let ratio = c.width as f64 / c.height as f64;
        assert!((0.74..=1.345).contains(&ratio), "{c:?}: ratio {ratio}");
    }
    // A very wide image falls back to a centered 4:3 crop of full height.
    let c = random_resized_crop_params(400, 100, TRAIN_SCALE, TRAIN_RATIO, &mut rng).unwrap();
    assert_eq!((c.left, c.top, c.width, c.height), (133, 0, 133, 100));

    assert!(random_resized_crop_params(0, 10, TRAIN_SCALE, TRAIN_RATIO, &mut rng).is_err());
    assert!(random_resized_crop_params(10, 10, (1.0, 0.5), TRAIN_RATIO, &mut rng).is_err());
}

#[test]
fn shortest_side_size_floors_like_python() {
    assert_eq!(shortest_side_size(88, 66, 32).unwrap(), (42, 32));
    assert_eq!(shortest_side_size(28, 44, 64).unwrap(), (64, 100));
    assert_eq!(shortest_side_size(50, 50, 224).unwrap(), (224, 224));
    assert_eq!(shortest_side_size(640, 480, 224).unwrap(), (298, 224));
    assert!(shortest_side_size(0, 10, 32).is_err());
}

#[test]
fn eval_of_zero_sized_image_is_an_error() {
    let pre = ImagePreprocessor::new(32);
    assert!(pre.eval(&RgbImage::new(0, 0)).is_err());
    assert!(ImagePreprocessor::new(0).eval(&test_image(10, 10)).is_err());
}

#[test]
fn settings_from_model_dirs() {
    let fixtures = images_dir().join("..");
    let pre = ImagePreprocessor::for_model_dir(&fixtures.join("clip-tiny-quickgelu"), 32).unwrap();
    assert_eq!(pre, ImagePreprocessor::new(32));
    // No config: the CLIP defaults at the given size.
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(ImagePreprocessor::for_model_dir(dir.path(), 224).unwrap(), ImagePreprocessor::new(224));

    let cfg = dir.path().join("preprocessor_config.json");
    std::fs::write(
        &cfg,
        br#"{"crop_size": 16, "size": {"shortest_edge": 16}, "resample": 3,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.5, 1.0]}"#,
    )
    .unwrap();
    let pre = ImagePreprocessor::for_model_dir(dir.path(), 16).unwrap();
    assert_eq!(pre.image_size, 16);
    assert_eq!(pre.mean, [0.5; 3]);
    assert_eq!(pre.std, [0.25, 0.5, 1.0]);
    // The model takes another size: an error naming the config.
    let err = ImagePreprocessor::for_model_dir(dir.path(), 32).unwrap_err();
    assert!(err.to_string().contains("preprocessor_config.json"), "{err}");

    for bad in [
        &br#"{"crop_size": 16, "size": {"shortest_edge": 20}}"#[..],
        br#"{"crop_size": 16, "resample": 2}"#,
        br#"{"image_std": [0.1, 0.0, 0.2]}"#,
        br#"{"image_mean": [0.1, 0.2]}"#,
        br#"{"crop_size": {"height": 16, "width": 24}}"#,
        b"{broken",
    ] {
        std::fs::write(&cfg, bad).unwrap();
        let err = ImagePreprocessor::for_model_dir(dir.path(), 16).unwrap_err();
        assert!(
            err.to_string().contains("preprocessor_config.json"),
            "{}: {err}",
            String::from_utf8_lossy(bad)
        );
    }

    // open_clip's config, when there is no HF one.
    std::fs::remove_file(&cfg).unwrap();
    std::fs::write(
        dir.path().join("open_clip_config.json"),
        br#"{"model_cfg": {}, "preprocess_cfg": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6],
            "interpolation": "bicubic", "resize_mode": "shortest"}}"#,
    )
    .unwrap();
    let pre = ImagePreprocessor::for_model_dir(dir.path(), 24).unwrap();
    assert_eq!(pre.image_size, 24);
    assert_eq!(pre.mean, [0.1, 0.2, 0.3]);
    assert_eq!(pre.std, [0.4, 0.5, 0.6]);
}
