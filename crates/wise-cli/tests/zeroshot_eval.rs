//! `wise zeroshot` then `wise eval` on real shifted digits: the classifier checkpoint every
//! later command uses, the results line, subsets of classes, and bad input.

#[path = "../../wise-clip/tests/support/mod.rs"]
mod support;
use support::{fixture, shared_datasets};
mod common;
use common::{fails_with, ok, s, wise};

#[test]
fn zeroshot_then_eval_on_usps_and_a_class_subset() {
    let Some(data) = shared_datasets() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let usps = tmp.path().join("usps");
    wise_data::import(wise_data::Source::Usps, &data.join("digits/usps"), &usps, false).unwrap();

    let classifier = digits_classifier(tmp.path());

    // A subset of the classes (three digit folders), matched by name through classnames.txt.
    let subset = tmp.path().join("subset");
    for digit in ["1", "7", "9"] {
        let from = usps.join("test").join(digit);
        let to = subset.join(digit);
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(&from).unwrap().take(20) {
            let p = entry.unwrap().path();
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(subset.join("classnames.txt"), "1\tone\n7\tseven\n9\tnine\n").unwrap();

    let results = tmp.path().join("results.jsonl");
    let test = usps.join("test");
    let usps_spec = format!("USPS={}", s(&test));
    let subset_spec = format!("Three={}", s(&subset));
    let stdout = ok(&wise(&[
        "eval",
        "--model",
        s(&classifier),
        "--data",
        &usps_spec,
        "--data",
        &subset_spec,
        "--results",
        s(&results),
        "--batch-size",
        "128",
    ]));
    assert!(stdout.contains("USPS") && stdout.contains("2007"), "{stdout}");
    let line = std::fs::read_to_string(&results).unwrap();
    let record: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(record["USPS:n"], 2007);
    assert_eq!(record["Three:n"], 60);
    assert!(record["alpha"].is_null());
    assert!(record["model"].as_str().unwrap().ends_with("zs.safetensors"));
    for key in ["USPS:top1", "USPS:top5", "Three:top1", "Three:top5", "seconds"] {
        let v = record[key].as_f64().unwrap_or_else(|| panic!("{key} in {record}"));
        assert!((0.0..=1.0).contains(&v) || key == "seconds", "{key} = {v}");
    }
    // With 3 classes, every image is within the top 5.
    assert_eq!(record["Three:top5"], 1.0);
    assert!(record["USPS:top5"].as_f64().unwrap() >= record["USPS:top1"].as_f64().unwrap());
    let per_class = record["USPS:per_class"].as_object().unwrap();
    assert_eq!(per_class.len(), 10);

    // A second evaluation appends a second line.
    ok(&wise(&["eval", "--model", s(&classifier), "--data", &subset_spec, "--results", s(&results)]));
    assert_eq!(std::fs::read_to_string(&results).unwrap().lines().count(), 2);

    // A dataset with a class the classifier does not have.
    std::fs::write(subset.join("classnames.txt"), "1\tone\n7\tseven\n9\tninety\n").unwrap();
    fails_with(&wise(&["eval", "--model", s(&classifier), "--data", &subset_spec]), &["Three", "ninety"]);
}

#[test]
fn bad_zeroshot_and_eval_input_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("clip-tiny-quickgelu");
    let classes = fixture("zeroshot/classnames.txt");
    let out = tmp.path().join("zs.safetensors");

    let templates = tmp.path().join("templates.txt");
    std::fs::write(&templates, "a photo of {}\na photo of nothing\n").unwrap();
    fails_with(
        &wise(&[
            "zeroshot",
            "--model",
            s(&model),
            "--classes",
            s(&classes),
            "--templates",
            s(&templates),
            "--out",
            s(&out),
        ]),
        &["templates.txt:2"],
    );
    assert!(!out.exists());

    let dup = tmp.path().join("dup.txt");
    std::fs::write(&dup, "cat\ndog\ncat\n").unwrap();
    fails_with(
        &wise(&["zeroshot", "--model", s(&model), "--classes", s(&dup), "--out", s(&out)]),
        &["dup.txt"],
    );

    assert_eq!(digits_classifier(tmp.path()), out);
    let missing = tmp.path().join("nowhere");
    fails_with(&wise(&["eval", "--model", s(&out), "--data", &format!("X={}", s(&missing))]), &["nowhere"]);
    fails_with(&wise(&["eval", "--model", s(&out), "--data", "no-equals-sign"]), &["NAME=PATH"]);

    // A corrupt image under --on-bad-image error names the file; under skip it is counted.
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("one")).unwrap();
    std::fs::copy(fixture("images/grey.png"), data.join("one/ok.png")).unwrap();
    std::fs::write(data.join("one/broken.png"), b"not an image").unwrap();
    let spec = format!("D={}", s(&data));
    fails_with(&wise(&["eval", "--model", s(&out), "--data", &spec]), &["broken.png"]);
    let stdout = ok(&wise(&["eval", "--model", s(&out), "--data", &spec, "--on-bad-image", "skip"]));
    assert!(stdout.contains("D "), "{stdout}");
}

#[test]
fn eval_sweeps_alpha_in_memory_between_two_classifiers() {
    let Some(data) = shared_datasets() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let semeion = tmp.path().join("semeion");
    wise_data::import(wise_data::Source::Semeion, &data.join("digits/semeion"), &semeion, false).unwrap();
    let model = fixture("clip-tiny-quickgelu");
    let classes = fixture("zeroshot/classnames.txt");
    let (a, b) = (tmp.path().join("a.safetensors"), tmp.path().join("b.safetensors"));
    for (templates, out) in [("simple", &a), ("openai_imagenet", &b)] {
        ok(&wise(&[
            "zeroshot",
            "--model",
            s(&model),
            "--classes",
            s(&classes),
            "--templates",
            templates,
            "--out",
            s(out),
        ]));
    }
    let spec = format!("Semeion={}", s(&semeion));
    let results = tmp.path().join("sweep.jsonl");
    ok(&wise(&[
        "eval",
        "--zeroshot",
        s(&a),
        "--finetuned",
        s(&b),
        "--alphas",
        "0:1:0.5",
        "--data",
        &spec,
        "--results",
        s(&results),
    ]));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&results)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.iter().map(|l| l["alpha"].as_f64().unwrap()).collect::<Vec<_>>(), [0.0, 0.5, 1.0]);
    // The endpoints are the two classifiers themselves.
    for (line, endpoint) in [(&lines[0], &a), (&lines[2], &b)] {
        let single = tmp.path().join("single.jsonl");
        let _ = std::fs::remove_file(&single);
        ok(&wise(&["eval", "--model", s(endpoint), "--data", &spec, "--results", s(&single)]));
        let one: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&single).unwrap().trim()).unwrap();
        assert_eq!(line["Semeion:top1"], one["Semeion:top1"]);
    }
    fails_with(&wise(&["eval", "--zeroshot", s(&a), "--data", &spec]), &["--finetuned"]);
}

/// A classifier with a NaN weight scored 100 % (no logit ranks above a NaN): `wise eval`
/// now fails saying so, alone and as one end of an α sweep (naming the α), and so does
/// `wise fisher`.
#[test]
fn a_broken_classifier_is_an_error_not_a_score() {
    use candle_core::Device;
    use wise_clip::weights::{save_safetensors_atomic, SafetensorsFile};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    for (class, image) in [("cat", "rgb.jpg"), ("dog", "wide.png")] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        std::fs::copy(fixture(&format!("images/{image}")), data.join(class).join(image)).unwrap();
    }
    let (good, broken) = (tmp.path().join("good.safetensors"), tmp.path().join("broken.safetensors"));
    let model = fixture("clip-tiny-quickgelu");
    ok(&wise(&[
        "zeroshot",
        "--model",
        s(&model),
        "--classes",
        s(&data),
        "--templates",
        "simple",
        "--out",
        s(&good),
    ]));
    let file = SafetensorsFile::open(&good).unwrap();
    let mut tensors: Vec<_> =
        file.names().into_iter().map(|n| (n.clone(), file.load(&n, &Device::Cpu).unwrap())).collect();
    for (name, t) in tensors.iter_mut() {
        if name == "vision_model.post_layernorm.weight" {
            *t = (t.ones_like().unwrap() * f64::NAN).unwrap();
        }
    }
    let meta = file.user_metadata().cloned();
    save_safetensors_atomic(&broken, &tensors, meta).unwrap();
    let spec = format!("test={}", s(&data));
    ok(&wise(&["eval", "--model", s(&good), "--data", &spec]));
    fails_with(&wise(&["eval", "--model", s(&broken), "--data", &spec]), &["a logit of NaN"]);
    let sweep =
        ["eval", "--zeroshot", s(&good), "--finetuned", s(&broken), "--alphas", "0,0.5", "--data", &spec];
    fails_with(&wise(&sweep), &["α = 0.5, on 'test'", "a logit of NaN"]);
    // Nor is its Fisher written, NaN throughout.
    let fisher = tmp.path().join("fisher.safetensors");
    fails_with(
        &wise(&["fisher", "--model", s(&broken), "--data", s(&data), "--out", s(&fisher)]),
        &["a logit of NaN"],
    );
    assert!(!fisher.exists());
}

/// `wise zeroshot` of the fixture CLIP for the ten digit names ("a photo of a {}."), in `dir`.
fn digits_classifier(dir: &std::path::Path) -> std::path::PathBuf {
    let (model, classes, out) =
        (fixture("clip-tiny-quickgelu"), fixture("zeroshot/classnames.txt"), dir.join("zs.safetensors"));
    let args = [
        "zeroshot",
        "--model",
        s(&model),
        "--classes",
        s(&classes),
        "--templates",
        "simple",
        "--out",
        s(&out),
    ];
    ok(&wise(&args));
    out
}

/// `wise info` on a classifier checkpoint (no config.json beside it: it is self-contained)
/// describes it from its metadata: classes, source, tower, head, and what made it.
#[test]
fn info_describes_a_classifier_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (zs, mix) = (digits_classifier(tmp.path()), tmp.path().join("mix.safetensors"));
    ok(&wise(&[
        "ensemble",
        "--zeroshot",
        s(&zs),
        "--finetuned",
        s(&zs),
        "--alpha",
        "0.25",
        "--out",
        s(&mix),
    ]));
    let out = ok(&wise(&["info", "--model", s(&mix)]));
    for needle in [
        "(wise classifier)",
        "classes     10: zero, one, two, three, four, five, six, seven, eight, nine",
        "vision      ViT 32x32 px, patch 8, width 24, 2 layers, 3 heads, mlp 48",
        "head        [10, 12]",
        "alpha       0.25",
    ] {
        assert!(out.contains(needle), "'{needle}' not in:\n{out}");
    }
}

/// `wise embed` on a classifier checkpoint: its tower's image features (a zero-shot
/// classifier's are its CLIP's) and its logits, the head on the normalised features.
#[test]
fn embed_reads_a_classifier_checkpoint() {
    use candle_core::{Device, D};
    let tmp = tempfile::tempdir().unwrap();
    let (model, zs) = (fixture("clip-tiny-quickgelu"), digits_classifier(tmp.path()));
    let images = fixture("images");
    let (from_clip, from_classifier) =
        (tmp.path().join("clip.safetensors"), tmp.path().join("clf.safetensors"));
    ok(&wise(&["embed", "--model", s(&model), "--images", s(&images), "--out", s(&from_clip)]));
    ok(&wise(&["embed", "--model", s(&zs), "--images", s(&images), "--out", s(&from_classifier)]));
    let load = |p: &std::path::Path| candle_core::safetensors::load(p, &Device::Cpu).unwrap();
    let (clip, ours, head) = (load(&from_clip), load(&from_classifier), load(&zs));
    let features = &ours["image_embeds"];
    let diff = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    };
    assert!(diff(features, &clip["image_embeds"]) < 1e-6);
    let normalised = features
        .broadcast_div(&features.sqr().unwrap().sum_keepdim(D::Minus1).unwrap().sqrt().unwrap())
        .unwrap();
    let want = normalised.matmul(&head["classification_head.weight"].t().unwrap()).unwrap();
    let want = want.broadcast_add(&head["classification_head.bias"]).unwrap();
    assert_eq!(ours["logits"].dims(), [9, 10]);
    assert!(diff(&ours["logits"], &want) < 1e-5);
    let texts = fixture("texts.txt");
    fails_with(
        &wise(&["embed", "--model", s(&zs), "--texts", s(&texts), "--out", s(&from_classifier)]),
        &["zs.safetensors: a classifier has no text tower"],
    );
}
