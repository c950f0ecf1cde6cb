//! Importers on the real raw files in `<repo>/../shared/datasets`: counts as documented,
//! pixels as in the source, class names, and the output folder handled safely.
//!
//! Without that folder the data tests print a note and pass, except under CI (`CI` set),
//! where missing data must not look like success. The tests of refusal and failure paths use
//! small files made here.

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use wise_data::{import, Dataset, Source};

#[path = "../../wise-clip/tests/support/mod.rs"]
mod support;
use support::{shared_datasets, DIGITS};

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn grey(path: &Path) -> image::GrayImage {
    match image::open(path).unwrap() {
        image::DynamicImage::ImageLuma8(g) => g,
        other => panic!("{} is {:?}, expected 8-bit grey", path.display(), other.color()),
    }
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()).read_to_end(&mut out).unwrap();
    out
}

/// Checks an imported digit split as a dataset: classes `0`…`9` named `zero`…`nine`, counts.
fn check_digit_split(root: &Path, counts: &[usize]) -> Dataset {
    let ds = Dataset::open(root, None).unwrap();
    assert_eq!(ds.classes, (0..10).map(|d| d.to_string()).collect::<Vec<_>>());
    assert_eq!(ds.class_names, strings(&DIGITS));
    assert_eq!(ds.class_counts(), counts, "{}", root.display());
    ds
}

/// Per-class counts from the `Train` / `Test` rows of USPS's `zip.info.txt`.
fn usps_info_counts(info: &Path, row: &str) -> Vec<usize> {
    let text = std::fs::read_to_string(info).unwrap();
    let line = text.lines().find(|l| l.trim_start().starts_with(row)).unwrap();
    let numbers: Vec<usize> = line.split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect();
    assert_eq!(numbers.len(), 11, "{line}");
    assert_eq!(numbers[..10].iter().sum::<usize>(), numbers[10]);
    numbers[..10].to_vec()
}

#[test]
fn usps_has_the_documented_splits_and_counts() {
    let Some(data) = shared_datasets() else { return };
    let src = data.join("digits/usps");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("usps");
    let summary = import(Source::Usps, &src, &out, false).unwrap();
    let train = usps_info_counts(&src.join("zip.info.txt"), "Train");
    let test = usps_info_counts(&src.join("zip.info.txt"), "Test");
    assert_eq!(summary.splits.iter().map(|s| s.total()).collect::<Vec<_>>(), vec![7291, 2007]);
    check_digit_split(&out.join("train"), &train);
    check_digit_split(&out.join("test"), &test);
    assert_eq!(std::fs::read_to_string(out.join("classnames.txt")).unwrap().lines().next(), Some("0\tzero"));

    // Row 0 of zip.test is a 9; values in [-1, 1] become (v + 1) · 127.5.
    let raw = String::from_utf8(gunzip(&src.join("zip.test.gz"))).unwrap();
    let first: Vec<f64> =
        raw.lines().next().unwrap().split_whitespace().map(|v| v.parse().unwrap()).collect();
    assert_eq!(first[0], 9.0);
    let img = grey(&out.join("test/9/00000.png"));
    assert_eq!(img.dimensions(), (16, 16));
    let expected: Vec<u8> = first[1..].iter().map(|v| ((v + 1.0) * 127.5).round() as u8).collect();
    assert_eq!(img.into_raw(), expected);
}

#[test]
fn usps_from_a_single_file_imports_that_split() {
    let Some(data) = shared_datasets() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("usps-test");
    import(Source::Usps, &data.join("digits/usps/zip.test.gz"), &out, false).unwrap();
    assert!(out.join("test").is_dir() && !out.join("train").exists());
    assert_eq!(Dataset::open(&out.join("test"), None).unwrap().len(), 2007);
}

#[test]
fn mnist_test_is_10000_images_and_the_first_is_a_seven() {
    let Some(data) = shared_datasets() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mnist");
    // From a folder above it, laid out like shared/datasets.
    let summary = import(Source::Mnist, &data, &out, false).unwrap();
    assert_eq!(summary.splits.len(), 1);
    assert_eq!(summary.splits[0].split.as_deref(), Some("test"));
    let ds = Dataset::open(&out.join("test"), None).unwrap();
    assert_eq!(ds.len(), 10_000);
    assert_eq!(ds.class_counts(), vec![980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
    assert!(!out.join("train").exists());

    let first = grey(&out.join("test/7/00000.png"));
    assert_eq!(first.dimensions(), (28, 28));
    let idx = gunzip(&data.join("digits/mnist/t10k-images-idx3-ubyte.gz"));
    assert_eq!(first.as_raw()[..], idx[16..16 + 784]);

    // MNIST's mean intensity is about 0.13 of full scale.
    let sample: Vec<&Path> = ds.samples.iter().step_by(50).map(|s| s.path.as_path()).collect();
    let total: u64 = sample.iter().map(|p| grey(p).pixels().map(|p| u64::from(p.0[0])).sum::<u64>()).sum();
    let mean = total as f64 / (sample.len() * 784) as f64 / 255.0;
    assert!((0.10..0.16).contains(&mean), "mean {mean}");
}

#[test]
fn mnist_5k_is_500_per_class_in_train() {
    let Some(data) = shared_datasets() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mnist-5k");
    import(Source::Mnist5k, &data.join("digits/mnist/mnist_5k.csv.gz"), &out, false).unwrap();
    let ds = check_digit_split(&out.join("train"), &[500; 10]);
    assert_eq!(grey(&ds.samples[0].path).dimensions(), (28, 28));
}

#[test]
fn semeion_is_1593_binary_images_in_the_output_folder() {
    let Some(data) = shared_datasets() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("semeion");
    let summary = import(Source::Semeion, &data.join("digits/semeion"), &out, false).unwrap();
    assert_eq!(summary.splits[0].split, None);
    let ds = Dataset::open(&out, None).unwrap();
    assert_eq!(ds.len(), 1593);
    assert_eq!(ds.class_names, strings(&DIGITS));
    let img = grey(&ds.samples[0].path);
    assert_eq!(img.dimensions(), (16, 16));
    assert!(img.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
    let ink = img.pixels().filter(|p| p.0[0] == 255).count();
    assert!((20..200).contains(&ink), "{ink} ink pixels");
}

#[test]
fn optdigits_is_1797_images_scaled_from_0_16() {
    let Some(data) = shared_datasets() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("optdigits");
    import(Source::Optdigits, &data.join("digits/optdigits"), &out, false).unwrap();
    let ds = Dataset::open(&out, None).unwrap();
    assert_eq!(ds.len(), 1797);
    let raw = String::from_utf8(gunzip(&data.join("digits/optdigits/digits.csv.gz"))).unwrap();
    let row: Vec<u16> = raw.lines().next().unwrap().split(',').map(|v| v.trim().parse().unwrap()).collect();
    let img = grey(&out.join(format!("{}/00000.png", row[64])));
    assert_eq!(img.dimensions(), (8, 8));
    let expected: Vec<u8> = row[..64].iter().map(|&v| (f64::from(v) * 255.0 / 16.0).round() as u8).collect();
    assert_eq!(img.into_raw(), expected);
}

#[test]
fn cifar10_copies_the_jpegs_byte_for_byte() {
    let Some(data) = shared_datasets() else { return };
    let archive = data.join("cifar10/cifar10-jpeg.tar.gz");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cifar10");
    let start = Instant::now();
    let summary = import(Source::Cifar10, &data, &out, false).unwrap();
    eprintln!("cifar10 import: {:.1} s", start.elapsed().as_secs_f64());
    let classes =
        strings(&["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]);
    assert_eq!(summary.classes, classes);
    let test = Dataset::open(&out.join("test"), None).unwrap();
    assert_eq!(test.class_names, classes);
    assert_eq!(test.class_counts(), vec![1000; 10]);
    let train = Dataset::open(&out.join("train"), None).unwrap();
    assert_eq!(train.class_counts(), vec![5000; 10]);
    assert_eq!(std::fs::read_to_string(out.join("classnames.txt")).unwrap().lines().next(), Some("airplane"));

    // The first test entry of the archive, unchanged, and a 32×32 RGB JPEG.
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(&archive).unwrap()));
    let mut entry = tar
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap().starts_with("test") && e.header().entry_type().is_file())
        .unwrap();
    let name = entry.path().unwrap().into_owned();
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes).unwrap();
    assert_eq!(std::fs::read(out.join(&name)).unwrap(), bytes, "{}", name.display());
    let img = wise_clip::preprocess::load_rgb(&out.join(&name)).unwrap();
    assert_eq!(img.dimensions(), (32, 32));
}

/// A tiny USPS-format file: one row per label, pixels all -1 except the first at `ink`.
fn fake_usps(path: &Path, rows: usize, ink: &str) {
    let mut text = String::new();
    for i in 0..rows {
        text.push_str(&format!("{}.0000 {ink}{}\n", i % 10, " -1".repeat(255)));
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_non_empty_out_is_refused_unless_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("zip.test");
    fake_usps(&src, 10, "1");
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();

    let e = import(Source::Usps, &src, &out, false).unwrap_err().to_string();
    assert!(e.contains("not empty") && e.contains("--overwrite"), "{e}");
    assert_eq!(std::fs::read_to_string(out.join("keep.txt")).unwrap(), "mine");

    let summary = import(Source::Usps, &src, &out, true).unwrap();
    assert_eq!(summary.splits[0].counts, vec![1; 10]);
    assert!(!out.join("keep.txt").exists());
    assert_eq!(grey(&out.join("test/0/00000.png")).as_raw()[..2], [255, 0]);
    // No staging or replaced trees left beside it.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");

    // An empty existing folder is fine without --overwrite.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    import(Source::Usps, &src, &empty, false).unwrap();

    // Replacing the folder that holds the source would delete the source.
    let e = import(Source::Usps, &src, tmp.path(), true).unwrap_err().to_string();
    assert!(e.contains("contains the source"), "{e}");
}

#[test]
fn a_failed_import_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("zip.train");
    fake_usps(&src, 30, "1");
    let mut text = std::fs::read_to_string(&src).unwrap();
    text.push_str("3.0000 0.5 oops\n");
    std::fs::write(&src, text).unwrap();
    let out = tmp.path().join("out");
    let e = import(Source::Usps, &src, &out, false).unwrap_err().to_string();
    assert!(e.contains("zip.train:31:"), "{e}");
    assert!(!out.exists());
    let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("zip.train")]);

    // Out-of-range values and truncated binaries are errors too, not panics.
    fake_usps(&src, 10, "3.5");
    let e = import(Source::Usps, &src, &out, false).unwrap_err().to_string();
    assert!(e.contains("zip.train:1:") && e.contains("3.5"), "{e}");
    let idx = tmp.path().join("t10k-images-idx3-ubyte");
    std::fs::write(&idx, [0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28, 1, 2, 3]).unwrap();
    std::fs::write(tmp.path().join("t10k-labels-idx1-ubyte"), [0, 0, 8, 1, 0, 0, 0, 2, 1, 2]).unwrap();
    let e = import(Source::Mnist, &idx, &out, false).unwrap_err().to_string();
    assert!(e.contains("t10k-images-idx3-ubyte") && e.contains("truncated"), "{e}");
    let e = import(Source::Semeion, tmp.path(), &out, false).unwrap_err().to_string();
    assert!(e.contains("semeion.data"), "{e}");
}

#[test]
fn semeion_also_reads_the_uci_number_format() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("semeion.data");
    let mut text = String::new();
    for d in 0..10 {
        let pixels: Vec<&str> = (0..256).map(|i| if i == d { "1.0000" } else { "0.0000" }).collect();
        let label: Vec<&str> = (0..10).map(|i| if i == d { "1" } else { "0" }).collect();
        text.push_str(&format!("{} {} \r\n", pixels.join(" "), label.join(" ")));
    }
    std::fs::write(&src, text).unwrap();
    let out = tmp.path().join("out");
    import(Source::Semeion, &src, &out, false).unwrap();
    let img = grey(&out.join("3/00003.png"));
    assert_eq!(img.as_raw().iter().position(|&v| v == 255), Some(3));
}

#[test]
fn source_names_parse_and_unknown_ones_are_listed() {
    for source in Source::ALL {
        assert_eq!(source.name().parse::<Source>().unwrap(), source);
    }
    let e = "imagenet".parse::<Source>().unwrap_err().to_string();
    assert!(e.contains("imagenet") && e.contains("mnist-5k") && e.contains("cifar10"), "{e}");
}

/// A gzipped tar of zero-filled entries `(name, size)`.
fn zero_archive(path: &Path, entries: &[(&str, usize)]) {
    use std::io::Write;
    let gz = flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for &(name, size) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(size as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, std::io::repeat(0).take(size as u64)).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

#[test]
fn cifar_archive_entries_are_read_within_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("cifar10-jpeg.tar.gz");
    zero_archive(&archive, &[("test/cat/0001.jpg", 1000), ("test/cat/0002.jpg", (16 << 20) + 1)]);
    // 16 MiB of zeros compress to a few kilobytes: what is read is bounded, not the file.
    assert!(std::fs::metadata(&archive).unwrap().len() < 100_000);

    let out = tmp.path().join("out");
    let e = import(Source::Cifar10, &archive, &out, false).unwrap_err().to_string();
    assert!(
        e.contains("cifar10-jpeg.tar.gz") && e.contains("test/cat/0002.jpg") && e.contains("16 MiB"),
        "{e}"
    );
    assert!(!out.exists());

    // Entries up to the limit are taken, written out 64 MiB at a time, none lost.
    let sizes = [16 << 20, 16 << 20, 16 << 20, 16 << 20, 16 << 20, 7];
    let names: Vec<String> = (0..sizes.len()).map(|i| format!("test/cat/{i:04}.jpg")).collect();
    let entries: Vec<(&str, usize)> = names.iter().map(String::as_str).zip(sizes).collect();
    zero_archive(&archive, &entries);
    import(Source::Cifar10, &archive, &out, false).unwrap();
    for (name, size) in entries {
        assert_eq!(std::fs::metadata(out.join(name)).unwrap().len(), size as u64, "{name}");
    }
}
