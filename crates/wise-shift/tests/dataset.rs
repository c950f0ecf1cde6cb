//! `shift_dataset` end to end on small ImageFolder trees: layout, names, class names,
//! reproducibility whatever the thread count, and the refusals.

use std::path::{Path, PathBuf};

use image::RgbImage;
use wise_data::Dataset;
use wise_shift::{corrupt, shift_dataset, Corruption, SeededNoise, Severity, ShiftOptions, SHIFT_MANIFEST};

#[path = "../../wise-clip/tests/support/mod.rs"]
mod support;
use support::fixture;

fn input(name: &str) -> RgbImage {
    image::open(fixture(&format!("shift/images/{name}.png"))).expect("fixture image").to_rgb8()
}

/// `cat/a.png`, `cat/deep/c.jpg` (64×64, JPEG), `dog/b.bmp`, and `classnames.txt`.
fn make_dataset(root: &Path) {
    std::fs::create_dir_all(root.join("cat/deep")).unwrap();
    std::fs::create_dir_all(root.join("dog")).unwrap();
    input("a").save(root.join("cat/a.png")).unwrap();
    input("c").save(root.join("cat/deep/c.jpg")).unwrap();
    input("b").save(root.join("dog/b.bmp")).unwrap();
    std::fs::write(root.join("classnames.txt"), "cat\tkitty\ndog\tpuppy\n").unwrap();
}

fn opts(corruptions: &[Corruption], severities: &[u8]) -> ShiftOptions {
    ShiftOptions {
        corruptions: corruptions.to_vec(),
        severities: severities.iter().map(|&s| Severity::new(s).unwrap()).collect(),
        seed: 3,
        overwrite: false,
    }
}

fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

fn no_leftovers(parent: &Path) {
    for e in std::fs::read_dir(parent).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with(".wise-"), "left behind: {name}");
    }
}

#[test]
fn one_corruption_and_severity_write_the_tree_into_out() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_dataset(&data);
    let out = tmp.path().join("fog3");
    let summary = shift_dataset(&data, &out, &opts(&[Corruption::Fog], &[3]), &|_| {}).unwrap();
    assert_eq!((summary.images, summary.classes, summary.nested()), (3, 2, false));
    assert_eq!(summary.sets, [(Corruption::Fog, Severity::new(3).unwrap(), out.clone())]);
    assert_eq!(
        files_below(&out),
        ["cat/a.png", "cat/deep/c.png", "classnames.txt", "dog/b.png", SHIFT_MANIFEST].map(PathBuf::from)
    );
    assert_eq!(
        std::fs::read(out.join("classnames.txt")).unwrap(),
        std::fs::read(data.join("classnames.txt")).unwrap()
    );
    let ds = Dataset::open(&out, None).unwrap();
    assert_eq!(ds.class_names, ["kitty", "puppy"]);
    assert_eq!(ds.class_counts(), [2, 1]);

    // Each file is the corruption of its source with the per-image generator.
    for (src, rel, dst) in
        [("cat/deep/c.jpg", "cat/deep/c.jpg", "cat/deep/c.png"), ("dog/b.bmp", "dog/b.bmp", "dog/b.png")]
    {
        let clean = wise_clip::preprocess::load_rgb(&data.join(src)).unwrap();
        let s = Severity::new(3).unwrap();
        let want = corrupt(&clean, Corruption::Fog, s, &mut SeededNoise::for_image(3, "fog", rel)).unwrap();
        assert_eq!(image::open(out.join(dst)).unwrap().to_rgb8(), want, "{dst}");
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(SHIFT_MANIFEST)).unwrap()).unwrap();
    assert_eq!(manifest["seed"], 3);
    assert_eq!(manifest["corruptions"][0], "fog");
    no_leftovers(tmp.path());
}

#[test]
fn several_make_one_tree_per_corruption_and_severity() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_dataset(&data);
    let out = tmp.path().join("shifted");
    let done = std::sync::atomic::AtomicUsize::new(0);
    let progress = |n: usize| {
        done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    };
    let summary =
        shift_dataset(&data, &out, &opts(&[Corruption::Snow, Corruption::Contrast], &[1, 5]), &progress)
            .unwrap();
    assert!(summary.nested());
    assert_eq!(done.into_inner(), 3 * 4);
    for c in ["snow", "contrast"] {
        for s in ["1", "5"] {
            let tree = out.join(c).join(s);
            assert_eq!(
                files_below(&tree),
                ["cat/a.png", "cat/deep/c.png", "classnames.txt", "dog/b.png"].map(PathBuf::from),
                "{c}/{s}"
            );
        }
    }
    assert!(out.join(SHIFT_MANIFEST).is_file());
}

#[test]
fn outputs_do_not_depend_on_the_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_dataset(&data);
    let all = opts(&[Corruption::GlassBlur, Corruption::ElasticTransform, Corruption::ShotNoise], &[2]);
    let run = |threads: usize, name: &str| {
        let out = tmp.path().join(name);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| shift_dataset(&data, &out, &all, &|_| {})).unwrap();
        out
    };
    let (one, three) = (run(1, "one"), run(3, "three"));
    let files = files_below(&one);
    assert_eq!(files, files_below(&three));
    for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "png")) {
        assert_eq!(
            std::fs::read(one.join(f)).unwrap(),
            std::fs::read(three.join(f)).unwrap(),
            "{}",
            f.display()
        );
    }
}

#[test]
fn a_non_empty_out_is_refused_unless_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_dataset(&data);
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("precious.txt"), "keep me").unwrap();
    let mut o = opts(&[Corruption::Pixelate], &[1]);
    let err = shift_dataset(&data, &out, &o, &|_| {}).unwrap_err().to_string();
    assert!(err.contains("not empty") && err.contains("--overwrite") && err.contains("out"), "{err}");
    assert_eq!(std::fs::read_to_string(out.join("precious.txt")).unwrap(), "keep me");
    o.overwrite = true;
    shift_dataset(&data, &out, &o, &|_| {}).unwrap();
    assert!(!out.join("precious.txt").exists());
    assert!(out.join("cat/a.png").is_file());
    no_leftovers(tmp.path());
}

#[test]
fn a_corrupt_image_is_named_and_nothing_is_left_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_dataset(&data);
    std::fs::write(data.join("dog/broken.jpg"), b"\xff\xd8\xff\xe0 this is not a JPEG").unwrap();
    let out = tmp.path().join("out");
    let err =
        shift_dataset(&data, &out, &opts(&[Corruption::Brightness], &[2]), &|_| {}).unwrap_err().to_string();
    assert!(err.contains("broken.jpg"), "{err}");
    assert!(!out.exists());
    no_leftovers(tmp.path());
}

#[test]
fn two_sources_for_one_png_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_dataset(&data);
    input("a").save(data.join("cat/a.jpg")).unwrap();
    let err = shift_dataset(&data, &tmp.path().join("out"), &opts(&[Corruption::Fog], &[1]), &|_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("a.jpg") && err.contains("a.png") && err.contains("same"), "{err}");
}

#[test]
fn out_may_not_hold_or_sit_in_the_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_dataset(&data);
    let o = opts(&[Corruption::Fog], &[1]);
    let inside = shift_dataset(&data, &data.join("shifted"), &o, &|_| {}).unwrap_err().to_string();
    assert!(inside.contains("inside the dataset"), "{inside}");
    let mut over = o.clone();
    over.overwrite = true;
    let around = shift_dataset(&data, tmp.path(), &over, &|_| {}).unwrap_err().to_string();
    assert!(around.contains("contains the dataset"), "{around}");
    assert!(data.join("cat/a.png").is_file());
    let missing =
        shift_dataset(&tmp.path().join("nope"), &tmp.path().join("o"), &o, &|_| {}).unwrap_err().to_string();
    assert!(missing.contains("nope") && missing.contains("does not exist"), "{missing}");
}
