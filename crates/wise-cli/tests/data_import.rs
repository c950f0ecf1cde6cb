//! `wise data import` and `wise data info` end to end: the tree and class names an import
//! writes from the real USPS files, and the refusals a user can run into.
//!
//! The USPS test reads `<repo>/../shared/datasets`; without it the test prints a note and
//! passes, except under CI (`CI` set), where it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../../wise-clip/tests/support/mod.rs"]
mod support;
use support::shared_datasets;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `wise` from the repository root, so `../shared/datasets` means what the README says.
fn wise(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wise")).args(args).current_dir(repo_root()).output().expect("wise runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn count_files(dir: &Path, ext: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .count()
}

#[test]
fn usps_import_writes_splits_class_folders_and_classnames() {
    if shared_datasets().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("usps");
    let out_s = out.to_str().unwrap();
    let run = wise(&["data", "import", "usps", "--from", "../shared/datasets/digits/usps", "--out", out_s]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stderr(&run).contains("2007"), "{}", stderr(&run));

    let classnames: String = (0..10)
        .zip(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
        .map(|(d, n)| format!("{d}\t{n}\n"))
        .collect();
    assert_eq!(std::fs::read_to_string(out.join("classnames.txt")).unwrap(), classnames);
    let test_counts = [359, 264, 198, 166, 200, 160, 170, 147, 166, 177];
    let train_counts = [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644];
    for (split, counts) in [("test", test_counts), ("train", train_counts)] {
        assert_eq!(std::fs::read_to_string(out.join(split).join("classnames.txt")).unwrap(), classnames);
        for (digit, &n) in counts.iter().enumerate() {
            assert_eq!(count_files(&out.join(split).join(digit.to_string()), "png"), n, "{split}/{digit}");
        }
    }
    let mut top: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    top.sort();
    assert_eq!(top, ["classnames.txt", "test", "train"]);

    // `wise data info` reads it back with the readable names.
    let info = wise(&["data", "info", out.join("test").to_str().unwrap()]);
    assert!(info.status.success(), "{}", stderr(&info));
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("10 classes, 2007 images"), "{text}");
    assert!(
        text.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["3", "166", "three"]),
        "{text}"
    );

    // Importing again into the now non-empty folder is refused, and leaves it as it was.
    let again = wise(&["data", "import", "usps", "--from", "../shared/datasets/digits/usps", "--out", out_s]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("not empty") && stderr(&again).contains("--overwrite"),
        "{}",
        stderr(&again)
    );
    assert_eq!(count_files(&out.join("test/0"), "png"), 359);
}

#[test]
fn a_non_empty_out_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("precious.txt"), "keep me").unwrap();
    let src = tmp.path().join("zip.test");
    std::fs::write(&src, "1 ".to_string() + &"-1 ".repeat(256) + "\n").unwrap();
    let run =
        wise(&["data", "import", "usps", "--from", src.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(!run.status.success());
    let err = stderr(&run);
    assert!(err.contains("out") && err.contains("not empty") && err.contains("--overwrite"), "{err}");
    assert_eq!(std::fs::read_to_string(out.join("precious.txt")).unwrap(), "keep me");
}

#[test]
fn an_unknown_dataset_name_is_an_error_listing_the_known_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let run = wise(&["data", "import", "imagenet", "--from", ".", "--out", tmp.path().to_str().unwrap()]);
    assert!(!run.status.success());
    let err = stderr(&run);
    assert!(err.contains("imagenet") && err.contains("usps") && err.contains("cifar10"), "{err}");
}

#[test]
fn info_reports_a_broken_dataset_with_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("cat")).unwrap();
    let run = wise(&["data", "info", tmp.path().to_str().unwrap()]);
    assert!(!run.status.success());
    let err = stderr(&run);
    assert!(err.contains("cat") && err.contains("no images"), "{err}");
}
