//! The `wise` binary end to end on the fixture models: outputs against the HF reference,
//! hub resolution from the environment, and bad input reported with the file and cause.

use std::path::Path;
use std::process::{Command, Output};

use candle_core::DType;

#[path = "../../wise-clip/tests/support/mod.rs"]
mod support;
use support::{fake_hub_cache, fixture, load, max_abs_diff};
mod common;
use common::{s, stderr};

fn wise(args: &[&str]) -> Output {
    wise_env(args, &[])
}

fn wise_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wise"));
    cmd.args(args).env_remove("HF_HUB_OFFLINE").env_remove("HF_HUB_CACHE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("wise runs")
}

/// The four images the fixture's `pixel_values` were made from, in that order.
const REFERENCE_IMAGES: [&str; 4] = ["rgb.jpg", "wide.png", "tall.png", "grey.png"];

fn embed_reference(model: &str, out: &Path, env: &[(&str, &str)]) -> Output {
    let images: Vec<String> =
        REFERENCE_IMAGES.iter().map(|f| s(&fixture(&format!("images/{f}"))).to_string()).collect();
    let texts = fixture("texts.txt");
    let mut args = vec!["embed", "--model", model, "--texts", s(&texts), "--out", s(out)];
    args.push("--save-pixels");
    args.push("--batch-size");
    args.push("3");
    args.push("--images");
    args.extend(images.iter().map(String::as_str));
    wise_env(&args, env)
}

fn check_against_reference(out: &Path, reference: &str) {
    let got = load(out);
    let exp = load(&fixture(&format!("{reference}/expected.safetensors")));
    assert_eq!(got["input_ids"].dtype(), DType::I64);
    assert_eq!(
        got["input_ids"].to_vec2::<i64>().unwrap(),
        exp["input_ids"].to_vec2::<i64>().unwrap(),
        "token ids"
    );
    let dp = max_abs_diff(&got["pixel_values"], &exp["pixel_values"]);
    assert!(dp <= 0.03, "pixels differ by {dp}");
    let dt = max_abs_diff(&got["text_embeds"], &exp["text_embeds"]);
    assert!(dt <= 1e-4, "text embeddings differ by {dt}");
    // Image features go through our own JPEG decoder (zune-jpeg: ±2 levels from
    // libjpeg-turbo's IDCT) and resize, so they inherit those small pixel differences; the
    // model itself is held to 1e-4 in the library's parity tests. Per image, relative to
    // the feature's norm; a misordered or mis-preprocessed image is off by O(1).
    for (i, name) in REFERENCE_IMAGES.iter().enumerate() {
        let (a, b) = (got["image_embeds"].get(i).unwrap(), exp["image_embeds"].get(i).unwrap());
        let norm = b.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
        let rel = max_abs_diff(&a, &b) / norm;
        assert!(rel <= 2e-3, "{name}: image embedding differs by {rel} relative");
    }
    assert_eq!(max_abs_diff(&got["logit_scale"], &exp["logit_scale"]), 0.0);
}

#[test]
fn embed_matches_transformers_from_a_model_dir() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("embeds.safetensors");
    let model = fixture("clip-tiny-quickgelu");
    let result = embed_reference(s(&model), &out, &[]);
    assert!(result.status.success(), "{}", stderr(&result));
    check_against_reference(&out, "clip-tiny-quickgelu");
}

#[test]
fn embed_resolves_a_hub_id_from_the_cache_offline() {
    let cache = fake_hub_cache("wise-test/tiny");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("embeds.safetensors");
    let env = [("HF_HUB_OFFLINE", "1"), ("HF_HUB_CACHE", s(cache.path()))];
    let result = embed_reference("wise-test/tiny", &out, &env);
    assert!(result.status.success(), "{}", stderr(&result));
    check_against_reference(&out, "clip-tiny-gelu");

    let missing = embed_reference("wise-test/absent", &out, &env);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("wise-test/absent"), "{}", stderr(&missing));
}

#[test]
fn embed_expands_folders_in_sorted_order() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("embeds.safetensors");
    let model = fixture("clip-tiny-gelu");
    let images = fixture("images");
    let result = wise(&["embed", "--model", s(&model), "--images", s(&images), "--out", s(&out)]);
    assert!(result.status.success(), "{}", stderr(&result));
    let got = load(&out);
    assert_eq!(got["image_embeds"].dims(), &[9, 8]);
    assert!(!got.contains_key("text_embeds") && !got.contains_key("pixel_values"));
    let meta = wise_clip::weights::SafetensorsFile::open(&out).unwrap();
    let names: Vec<String> = serde_json::from_str(&meta.user_metadata().unwrap()["images"]).unwrap();
    let stems: Vec<&str> = names.iter().map(|n| n.rsplit('/').next().unwrap()).collect();
    let mut sorted = stems.clone();
    sorted.sort();
    assert_eq!(stems, sorted);
    assert_eq!(stems.len(), 9);
}

#[test]
fn info_reports_parameter_counts() {
    let model = fixture("clip-tiny-gelu");
    let result = wise(&["info", "--model", s(&model)]);
    assert!(result.status.success(), "{}", stderr(&result));
    let stdout = String::from_utf8_lossy(&result.stdout);
    // Count the reference model's parameters from its gradients (one per parameter).
    let exp = load(&fixture("clip-tiny-gelu/expected.safetensors"));
    let count = |prefixes: &[&str]| -> usize {
        exp.iter()
            .filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(&format!("grad.{p}"))))
            .map(|(_, t)| t.elem_count())
            .sum()
    };
    let vision = count(&["vision_model.", "visual_projection."]);
    let text = count(&["text_model.", "text_projection."]);
    assert!(stdout.contains(&format!("vision {:.1}k", vision as f64 / 1e3)), "{stdout}");
    assert!(stdout.contains(&format!("text {:.1}k", text as f64 / 1e3)), "{stdout}");
    assert!(stdout.contains("patch 7") && stdout.contains("Gelu"), "{stdout}");
}

#[test]
fn bad_inputs_fail_with_the_file_and_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let model = fixture("clip-tiny-quickgelu");

    // A corrupt image.
    let corrupt = dir.path().join("corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\n definitely not a png").unwrap();
    let r = wise(&["embed", "--model", s(&model), "--images", s(&corrupt), "--out", s(&out)]);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("corrupt.png"), "{}", stderr(&r));
    assert!(!out.exists(), "no output on failure");

    // A truncated checkpoint.
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::copy(model.join("config.json"), broken.join("config.json")).unwrap();
    let bytes = std::fs::read(model.join("model.safetensors")).unwrap();
    std::fs::write(broken.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let r = wise(&["info", "--model", s(&broken)]);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("model.safetensors"), "{}", stderr(&r));

    // An unknown activation in config.json.
    let config = std::fs::read_to_string(model.join("config.json")).unwrap();
    std::fs::write(broken.join("config.json"), config.replacen("quick_gelu", "swishy", 1)).unwrap();
    let r = wise(&["info", "--model", s(&broken)]);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("swishy") && stderr(&r).contains("config.json"), "{}", stderr(&r));

    // A config.json whose MLP is a trillion wide (the load aborted, out of memory), and one
    // a size off from the checkpoint's.
    std::fs::write(broken.join("model.safetensors"), &bytes).unwrap();
    for (width, said) in [
        (
            "1000000000000",
            "config.json: invalid config: vision_config: intermediate_size 1000000000000 is outside",
        ),
        ("49", "mlp.fc1.weight: model expects [49, 24], checkpoint has [48, 24]"),
    ] {
        let edited =
            config.replacen("\"intermediate_size\": 48", &format!("\"intermediate_size\": {width}"), 1);
        assert_ne!(edited, config);
        std::fs::write(broken.join("config.json"), edited).unwrap();
        let r = wise(&["info", "--model", s(&broken)]);
        assert_eq!(r.status.code(), Some(1), "{}", stderr(&r));
        assert!(stderr(&r).contains(said), "{}", stderr(&r));
    }

    // Neither a path nor a hub id.
    let r = wise(&["info", "--model", "./no/such/model"]);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("./no/such/model"), "{}", stderr(&r));
    // No panics anywhere.
    assert!(!stderr(&r).contains("panicked"));
}

/// Every number of the fixture's config.json set, one at a time, to values a corrupt or
/// mistyped file could hold: `wise embed` (load, preprocess, both towers) either runs or
/// fails naming config.json or the checkpoint — never a panic, an abort or an exhausted
/// memory (a trillion-wide MLP was an abort, a trillion layers ran out of memory).
#[test]
fn no_config_value_makes_the_binary_crash() {
    let model = fixture("clip-tiny-quickgelu");
    let dir = tempfile::tempdir().unwrap();
    let edited = dir.path().join("model");
    std::fs::create_dir(&edited).unwrap();
    for file in std::fs::read_dir(&model).unwrap() {
        let file = file.unwrap().path();
        std::fs::copy(&file, edited.join(file.file_name().unwrap())).unwrap();
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    let numbers = |tower: &str| -> Vec<String> {
        let fields = if tower.is_empty() { &config } else { &config[tower] };
        fields.as_object().unwrap().iter().filter(|(_, v)| v.is_number()).map(|(k, _)| k.clone()).collect()
    };
    let (image, texts, out) =
        (fixture("images/rgb.jpg"), fixture("texts.txt"), dir.path().join("e.safetensors"));
    let mut runs = 0;
    for tower in ["vision_config", "text_config", ""] {
        for field in numbers(tower) {
            for value in ["0", "1", "3", "1e-30", "-1", "1099511627776", "18446744073709551615"] {
                let mut c = config.clone();
                let slot = if tower.is_empty() { &mut c[&field] } else { &mut c[tower][&field] };
                *slot = serde_json::from_str(value).unwrap();
                std::fs::write(edited.join("config.json"), c.to_string()).unwrap();
                let r = wise(&[
                    "embed",
                    "--model",
                    s(&edited),
                    "--images",
                    s(&image),
                    "--texts",
                    s(&texts),
                    "--out",
                    s(&out),
                ]);
                let what = format!("{tower}.{field} = {value}: {}", stderr(&r));
                assert!(matches!(r.status.code(), Some(0 | 1)) && !stderr(&r).contains("panicked"), "{what}");
                if !r.status.success() {
                    let named = ["config.json", "model.safetensors", "token id"];
                    assert!(named.iter().any(|n| stderr(&r).contains(n)), "{what}");
                }
                runs += 1;
            }
        }
    }
    assert!(runs > 150, "{runs} configs tried");
}
