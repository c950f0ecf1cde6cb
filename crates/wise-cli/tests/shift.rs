//! `wise shift` end to end: the trees it writes and the refusals a user can run into.

use std::path::{Path, PathBuf};

#[path = "../../wise-clip/tests/support/mod.rs"]
mod support;
use support::fixture;
mod common;
use common::{stderr, wise};

/// `cat/a.png`, `dog/b.png` (32×32) and `classnames.txt`.
fn dataset(root: &Path) -> PathBuf {
    let data = root.join("data");
    for (class, name) in [("cat", "a"), ("dog", "b")] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        std::fs::copy(
            fixture(&format!("shift/images/{name}.png")),
            data.join(class).join(format!("{name}.png")),
        )
        .unwrap();
    }
    std::fs::write(data.join("classnames.txt"), "cat\ndog\n").unwrap();
    data
}

#[test]
fn one_corruption_writes_an_imagefolder_into_out() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let out = tmp.path().join("fog3");
    let run = wise(&[
        "shift",
        "--data",
        data.to_str().unwrap(),
        "--corruption",
        "fog",
        "--severity",
        "3",
        "--out",
        out.to_str().unwrap(),
        "--seed",
        "5",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stderr(&run).contains("2 images (2 classes)"), "{}", stderr(&run));
    for f in ["cat/a.png", "dog/b.png", "classnames.txt", "shift.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let first = std::fs::read(out.join("cat/a.png")).unwrap();

    // Same seed, same bytes; and `wise data info` reads the tree back.
    let again = tmp.path().join("again");
    let run = wise(&[
        "shift",
        "--data",
        data.to_str().unwrap(),
        "--corruption",
        "fog",
        "--severity",
        "3",
        "--out",
        again.to_str().unwrap(),
        "--seed",
        "5",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(std::fs::read(again.join("cat/a.png")).unwrap(), first);
    let info = wise(&["data", "info", out.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&info.stdout).contains("2 classes, 2 images"), "{}", stderr(&info));
}

#[test]
fn all_makes_a_tree_per_corruption_and_severity() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let out = tmp.path().join("c");
    let run = wise(&[
        "shift",
        "--data",
        data.to_str().unwrap(),
        "--corruption",
        "all",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let mut trees = 0;
    for c in std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()) {
        for s in 1..=5 {
            let tree = c.join(s.to_string());
            assert!(
                tree.join("cat/a.png").is_file() && tree.join("classnames.txt").is_file(),
                "{}",
                tree.display()
            );
            trees += 1;
        }
    }
    assert_eq!(trees, 75);
}

#[test]
fn bad_names_and_severities_say_what_is_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let out = tmp.path().join("o");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let run = wise(&["shift", "--data", d, "--corruption", "rain", "--out", o]);
    assert!(!run.status.success());
    let err = stderr(&run);
    assert!(
        err.contains("unknown corruption 'rain'")
            && err.contains("gaussian_noise")
            && err.contains("jpeg_compression"),
        "{err}"
    );

    for bad in ["6", "0", "two"] {
        let run = wise(&["shift", "--data", d, "--corruption", "fog", "--severity", bad, "--out", o]);
        assert!(!run.status.success());
        let err = stderr(&run);
        assert!(err.contains("severity") && err.contains("1") && err.contains("5"), "{bad}: {err}");
    }
    assert!(!out.exists());
}

#[test]
fn a_non_empty_out_is_refused_and_a_broken_image_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("precious.txt"), "keep me").unwrap();
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let run = wise(&["shift", "--data", d, "--corruption", "snow", "--severity", "1", "--out", o]);
    assert!(!run.status.success());
    let err = stderr(&run);
    assert!(err.contains("not empty") && err.contains("--overwrite"), "{err}");
    assert_eq!(std::fs::read_to_string(out.join("precious.txt")).unwrap(), "keep me");

    std::fs::write(data.join("dog/zz.jpg"), b"not a jpeg at all").unwrap();
    let run =
        wise(&["shift", "--data", d, "--corruption", "snow", "--severity", "1", "--out", o, "--overwrite"]);
    assert!(!run.status.success());
    let err = stderr(&run);
    assert!(err.contains("zz.jpg"), "{err}");
    assert_eq!(std::fs::read_to_string(out.join("precious.txt")).unwrap(), "keep me");
}
