//! Parity with HF transformers / open_clip: embeddings, gradients of the contrastive
//! loss for every parameter, and checkpoint layouts. References come from
//! `scripts/make_fixtures.py` (see `tests/fixtures/README.md`).

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor};
use wise_clip::weights::{save_safetensors_atomic, Checkpoint, SafetensorsFile};
use wise_clip::{ClipModel, HubOptions, Layout, ModelSource};

mod support;
use support::{fake_hub_cache, fixture, max_abs_diff};

fn expected(model: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(&format!("{model}/expected.safetensors")), &Device::Cpu)
        .expect("fixture loads")
}

/// ‖a − b‖ / ‖b‖.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
    norm(&(a - b).unwrap()) / norm(b).max(1e-30)
}

fn ids(exp: &HashMap<String, Tensor>) -> Tensor {
    exp["input_ids"].to_dtype(DType::U32).unwrap()
}

fn check_embeddings(model: &ClipModel, exp: &HashMap<String, Tensor>) {
    let img = model.image_features(&exp["pixel_values"]).unwrap();
    let txt = model.text_features(&ids(exp)).unwrap();
    let (di, dt) = (max_abs_diff(&img, &exp["image_embeds"]), max_abs_diff(&txt, &exp["text_embeds"]));
    assert!(di <= 1e-4, "image embeddings differ by {di}");
    assert!(dt <= 1e-4, "text embeddings differ by {dt}");
    let scale = max_abs_diff(model.logit_scale.as_tensor(), &exp["logit_scale"]);
    assert!(scale == 0.0, "logit_scale differs by {scale}");
}

fn load(dir: &str) -> ClipModel {
    let source = ModelSource::local(&fixture(dir)).unwrap();
    ClipModel::load(&source, &Device::Cpu).unwrap()
}

#[test]
fn quick_gelu_model_matches_hf() {
    let model = load("clip-tiny-quickgelu");
    let exp = expected("clip-tiny-quickgelu");
    check_embeddings(&model, &exp);
    // Intermediate states too, so a failure points at a tower stage.
    let hidden = model.vision.last_hidden_state(&exp["pixel_values"]).unwrap();
    assert!(max_abs_diff(&hidden, &exp["vision_last_hidden"]) <= 1e-4);
    let hidden = model.text.last_hidden_state(&ids(&exp), DType::F32).unwrap();
    assert!(max_abs_diff(&hidden, &exp["text_last_hidden"]) <= 1e-4);
}

#[test]
fn gelu_model_from_sharded_checkpoint_matches_hf() {
    let source = ModelSource::local(&fixture("clip-tiny-gelu")).unwrap();
    assert!(source.weights_path.ends_with("model.safetensors.index.json") || source.weights_path.is_dir());
    assert_eq!(source.config.vision_config.image_size % source.config.vision_config.patch_size, 2);
    let model = ClipModel::load(&source, &Device::Cpu).unwrap();
    check_embeddings(&model, &expected("clip-tiny-gelu"));

    // An index whose shard names leave its folder is refused, naming the index.
    let dir = tempfile::tempdir().unwrap();
    let index =
        std::fs::read_to_string(fixture("clip-tiny-gelu").join("model.safetensors.index.json")).unwrap();
    let shard = "model-00001-of-00003.safetensors";
    assert!(index.contains(shard), "{index}");
    for bad in ["../model-00001-of-00003.safetensors", "/etc/passwd", "sub/x.safetensors", ".."] {
        let path = dir.path().join("model.safetensors.index.json");
        std::fs::write(&path, index.replace(shard, bad)).unwrap();
        let err = Checkpoint::open(&path).err().unwrap().to_string();
        assert!(
            err.contains("model.safetensors.index.json") && err.contains("not a plain file name"),
            "{err}"
        );
    }
}

/// The gradient of CLIP's contrastive loss w.r.t. every parameter, against PyTorch.
fn check_gradients(dir: &str) {
    let model = load(dir);
    let exp = expected(dir);
    let loss = model.contrastive_loss(&ids(&exp), &exp["pixel_values"]).unwrap();
    let dl = max_abs_diff(&loss, &exp["loss"]);
    assert!(dl <= 1e-4, "{dir}: loss differs by {dl}");
    let grads = wise_clip::backward(&loss).unwrap();
    let mut failures = Vec::new();
    for (name, var) in &model.params {
        let g = grads.get(var).unwrap_or_else(|| panic!("{dir}: no gradient for {name}"));
        let reference = &exp[&format!("grad.{name}")];
        let norm = g.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
        if name.ends_with("self_attn.k_proj.bias") {
            // q·(k + b) shifts every score of a row by the same q·b, which softmax ignores:
            // this gradient is zero in exact arithmetic, and rounding noise in both
            // implementations. It must still be connected (it is: `grads.get` found it).
            if norm > 1e-5 {
                failures.push(format!("{name}: should be ~0, has norm {norm}"));
            }
            continue;
        }
        if norm == 0.0 {
            failures.push(format!("{name}: zero gradient"));
        }
        let err = rel_err(g, reference);
        if err > 1e-3 {
            failures.push(format!("{name}: off by {err} (relative)"));
        }
    }
    assert!(failures.is_empty(), "{dir} gradients:\n{}", failures.join("\n"));
    let reference_count = exp.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(model.params.len(), reference_count, "{dir}: every HF parameter has a Var");
}

#[test]
fn gradients_match_pytorch_quick_gelu() {
    check_gradients("clip-tiny-quickgelu");
}

#[test]
fn gradients_match_pytorch_gelu() {
    check_gradients("clip-tiny-gelu");
}

#[test]
fn open_clip_checkpoint_matches_its_hf_twin() {
    let source = ModelSource::local(&fixture("openclip-tiny-quickgelu/open_clip_model.safetensors")).unwrap();
    assert_eq!(source.layout, Layout::OpenClip);
    let twin = ModelSource::local(&fixture("clip-tiny-quickgelu")).unwrap();
    let (a, b) = (&source.config, &twin.config);
    assert_eq!(a.vision_config, b.vision_config);
    assert_eq!(a.projection_dim, b.projection_dim);
    let model = ClipModel::load(&source, &Device::Cpu).unwrap();
    let exp = expected("clip-tiny-quickgelu");
    check_embeddings(&model, &exp);
    // Zero padding (open_clip's tokenizer) pools at the same position.
    let oc = expected("openclip-tiny-quickgelu");
    let txt = model.text_features(&oc["input_ids_zero_padded"].to_dtype(DType::U32).unwrap()).unwrap();
    assert!(max_abs_diff(&txt, &exp["text_embeds"]) <= 1e-4);
}

#[test]
fn open_clip_config_inferred_from_shapes() {
    // Without open_clip_config.json only the head counts need the 64-per-head convention;
    // check the rest is read off the shapes.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weights.safetensors");
    std::fs::copy(fixture("openclip-tiny-quickgelu/open_clip_model.safetensors"), &file).unwrap();
    let source = ModelSource::local(&file).unwrap();
    let twin = ModelSource::local(&fixture("clip-tiny-quickgelu")).unwrap().config;
    let c = &source.config;
    assert_eq!(c.vision_config.image_size, twin.vision_config.image_size);
    assert_eq!(c.vision_config.patch_size, twin.vision_config.patch_size);
    assert_eq!(c.vision_config.intermediate_size, twin.vision_config.intermediate_size);
    assert_eq!(c.vision_config.num_hidden_layers, twin.vision_config.num_hidden_layers);
    assert_eq!(c.text_config.vocab_size, twin.text_config.vocab_size);
    assert_eq!(c.text_config.intermediate_size, twin.text_config.intermediate_size);
    assert_eq!(c.text_config.num_hidden_layers, twin.text_config.num_hidden_layers);
    assert_eq!(c.projection_dim, twin.projection_dim);
}

/// Rewrites the quick_gelu checkpoint with `edit` applied, into a fresh model dir.
fn edited_checkpoint(edit: impl Fn(&mut Vec<(String, Tensor)>)) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("clip-tiny-quickgelu");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let file = SafetensorsFile::open(&src.join("model.safetensors")).unwrap();
    let mut tensors: Vec<(String, Tensor)> =
        file.names().into_iter().map(|n| (n.clone(), file.load(&n, &Device::Cpu).unwrap())).collect();
    edit(&mut tensors);
    save_safetensors_atomic(&dir.path().join("model.safetensors"), &tensors, None).unwrap();
    let source = ModelSource::local(dir.path()).unwrap();
    let err = ClipModel::load(&source, &Device::Cpu).err().map(|e| e.to_string()).unwrap_or_default();
    (dir, err)
}

#[test]
fn checkpoint_problems_are_all_listed() {
    let (_d, err) = edited_checkpoint(|t| {
        t.retain(|(n, _)| n != "vision_model.embeddings.class_embedding" && n != "logit_scale");
        t.push(("vision_model.head.weight".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap()));
        for (n, v) in t.iter_mut() {
            if n == "text_projection.weight" {
                *v = Tensor::zeros((5, 5), DType::F32, &Device::Cpu).unwrap();
            }
        }
    });
    for needle in [
        "missing (2)",
        "vision_model.embeddings.class_embedding [24]",
        "logit_scale []",
        "unexpected (1)",
        "vision_model.head.weight",
        "text_projection.weight: model expects [12, 16], checkpoint has [5, 5]",
        "model.safetensors",
    ] {
        assert!(err.contains(needle), "'{needle}' not in:\n{err}");
    }
}

/// Pixels of another size than the tower's are an error, as in transformers (a larger
/// image was cut to its top-left corner; a smaller one failed deep inside a reshape).
#[test]
fn images_of_another_size_are_refused() {
    let model = load("clip-tiny-quickgelu");
    let exp = expected("clip-tiny-quickgelu");
    let pixels = &exp["pixel_values"];
    assert!(model.image_features(pixels).is_ok());
    for (h, w) in [(64, 64), (32, 40), (24, 24)] {
        let other = Tensor::zeros((1, 3, h, w), DType::F32, &Device::Cpu).unwrap();
        let err = model.image_features(&other).unwrap_err().to_string();
        assert!(
            err.contains(&format!("images of 3 × {h} × {w} values, but the model takes 3 × 32 × 32")),
            "{err}"
        );
    }
}

#[test]
fn half_precision_checkpoint_loads_as_f32() {
    let (dir, err) = edited_checkpoint(|t| {
        for (_, v) in t.iter_mut() {
            *v = v.to_dtype(DType::F16).unwrap();
        }
    });
    assert!(err.is_empty(), "{err}");
    let model = ClipModel::load(&ModelSource::local(dir.path()).unwrap(), &Device::Cpu).unwrap();
    assert!(model.params.values().all(|v| v.dtype() == DType::F32));
    let exp = expected("clip-tiny-quickgelu");
    // f16 rounding of the weights moves the features a little, not a lot.
    let img = model.image_features(&exp["pixel_values"]).unwrap();
    let d = max_abs_diff(&img, &exp["image_embeds"]);
    assert!(d > 0.0 && d < 0.05, "{d}");
}

#[test]
fn saved_model_dir_reloads_identically() {
    let model = load("clip-tiny-gelu");
    let dir = tempfile::tempdir().unwrap();
    model.save_hf_dir(dir.path()).unwrap();
    let back = ClipModel::load(&ModelSource::local(dir.path()).unwrap(), &Device::Cpu).unwrap();
    assert_eq!(back.config, model.config);
    for (name, v) in &model.params {
        assert_eq!(max_abs_diff(v, &back.params[name]), 0.0, "{name}");
    }
    let file = Checkpoint::open(&dir.path().join("model.safetensors")).unwrap();
    assert_eq!(file.user_metadata().unwrap()["format"], "pt");
}

#[test]
fn hub_id_resolves_from_the_local_cache_offline() {
    let cache = fake_hub_cache("wise-test/clip-tiny-gelu");
    let hub = HubOptions {
        cache_dir: cache.path().to_path_buf(),
        offline: true,
        revision: "main".into(),
        token: None,
    };
    let source = ModelSource::resolve_with("wise-test/clip-tiny-gelu", &hub).unwrap();
    assert_eq!(source.spec, "wise-test/clip-tiny-gelu");
    let model = ClipModel::load(&source, &Device::Cpu).unwrap();
    check_embeddings(&model, &expected("clip-tiny-gelu"));

    let err = ModelSource::resolve_with("wise-test/not-there", &hub).unwrap_err().to_string();
    assert!(err.contains("wise-test/not-there") && err.contains("HF_HUB_OFFLINE"), "{err}");

    // A sharded index naming a shard outside the repo is refused before anything is
    // fetched (a download would link it outside the cache).
    let snapshot = std::fs::read_dir(cache.path().join("models--wise-test--clip-tiny-gelu/snapshots"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let index = snapshot.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    let shard = "model-00001-of-00003.safetensors";
    assert!(text.contains(shard), "{text}");
    std::fs::remove_file(&index).unwrap();
    std::fs::write(&index, text.replace(shard, "../../../evil.safetensors")).unwrap();
    let err = ModelSource::resolve_with("wise-test/clip-tiny-gelu", &hub).unwrap_err().to_string();
    assert!(err.contains("names shard \"../../../evil.safetensors\", not a file of the repo"), "{err}");
}

#[test]
fn fresh_model_is_reproducible_and_trainable() {
    let config = ModelSource::local(&fixture("clip-tiny-quickgelu")).unwrap().config;
    let a = ClipModel::fresh(&config, 7, &Device::Cpu).unwrap();
    let b = ClipModel::fresh(&config, 7, &Device::Cpu).unwrap();
    let name = "vision_model.encoder.layers.1.mlp.fc1.weight";
    assert_eq!(max_abs_diff(&a.params[name], &b.params[name]), 0.0);
    let exp = expected("clip-tiny-quickgelu");
    let loss = a.contrastive_loss(&ids(&exp), &exp["pixel_values"]).unwrap();
    let grads = wise_clip::backward(&loss).unwrap();
    assert!(a.params.values().all(|v| grads.get(v).is_some()));
}

/// `backward` runs on rayon's threads, and a thread waiting inside one backward may run
/// another thread's whole backward meanwhile: each must still get exactly its own
/// model's gradients (they once lost the blocks' gradients to each other).
#[test]
fn concurrent_backward_passes_keep_their_own_gradients() {
    let config = ModelSource::local(&fixture("clip-tiny-quickgelu")).unwrap().config;
    let exp = expected("clip-tiny-quickgelu");
    let gradients = |seed: u64| {
        let model = ClipModel::fresh(&config, seed, &Device::Cpu).unwrap();
        let loss = model.contrastive_loss(&ids(&exp), &exp["pixel_values"]).unwrap();
        let grads = wise_clip::backward(&loss).unwrap();
        let mut out = Vec::new();
        for (name, v) in &model.params {
            let g = grads.get(v).unwrap_or_else(|| panic!("seed {seed}: no gradient for {name}"));
            out.push((name.clone(), g.flatten_all().unwrap().to_vec1::<f32>().unwrap()));
        }
        out
    };
    let alone: Vec<_> = (0..6).map(gradients).collect();
    let together: Vec<_> = std::thread::scope(|s| {
        let runs: Vec<_> =
            (0..6).map(|seed| s.spawn(move || (0..4).map(|_| gradients(seed)).collect::<Vec<_>>())).collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for (seed, (alone, repeats)) in alone.iter().zip(&together).enumerate() {
        for run in repeats {
            for ((name, a), (_, b)) in alone.iter().zip(run) {
                let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                assert!(diff <= 1e-6, "seed {seed}, {name}: gradients differ by {diff}");
            }
        }
    }
}

/// The text tower runs a batch only up to its last end-of-text token (attention is causal):
/// the features are still HF's (computed over all 77 positions) and the full-length
/// encoder's, and whatever follows end-of-text changes nothing.
#[test]
fn text_features_stop_at_the_last_end_of_text() {
    let model = load("clip-tiny-quickgelu");
    let exp = expected("clip-tiny-quickgelu");
    // The first three captions end at positions 10, 12 and 21 of 77.
    let short = ids(&exp).narrow(0, 0, 3).unwrap();
    assert_eq!(model.text.pool_positions(&short.to_vec2().unwrap()), [10, 12, 21]);
    let got = model.text_features(&short).unwrap();
    let d = max_abs_diff(&got, &exp["text_embeds"].narrow(0, 0, 3).unwrap());
    assert!(d <= 1e-4, "text embeddings differ from HF's by {d}");

    let hidden = model.text.last_hidden_state(&short, DType::F32).unwrap();
    let pooled: Vec<Tensor> =
        [10, 12, 21].iter().enumerate().map(|(b, &p)| hidden.get(b).unwrap().get(p).unwrap()).collect();
    let full = model.text.text_projection.forward(&Tensor::stack(&pooled, 0).unwrap()).unwrap();
    let d = max_abs_diff(&got, &full);
    assert!(d <= 1e-6, "trimmed and full-length features differ by {d}");

    // Other tokens after end-of-text (ids below end-of-text's, which pools by argmax here).
    let mut rows = short.to_vec2::<u32>().unwrap();
    for (row, end) in rows.iter_mut().zip([10, 12, 21]) {
        row.iter_mut().enumerate().skip(end + 1).for_each(|(i, id)| *id = (i * 37 % 1000) as u32);
    }
    let noisy = model.text_features(&model.ids_tensor(&rows).unwrap()).unwrap();
    assert_eq!(max_abs_diff(&noisy, &got), 0.0);
}
