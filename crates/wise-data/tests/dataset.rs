//! Opening datasets: ImageFolder and CSV layouts, class-names files, and the errors a user
//! sees for each way a dataset on disk can be wrong. All on tiny trees made here.

use std::path::{Path, PathBuf};

use wise_data::{Dataset, Sample};

fn png(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(2, 2, image::Rgb([10, 20, 30]))
        .save_with_format(path, image::ImageFormat::Png)
        .unwrap();
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn err(result: wise_data::Result<Dataset>) -> String {
    result.expect_err("should fail").to_string()
}

/// `b/`, `a/` (with nested folders and mixed-case extensions), `c/`, and things that are
/// not classes or images.
fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    png(&r.join("b/z.Tiff"));
    png(&r.join("a/x.PNG"));
    png(&r.join("a/sub/deep/y.jpeg"));
    png(&r.join("a/w.JPG"));
    png(&r.join("c/1.webp"));
    png(&r.join("c/2.bmp"));
    png(&r.join("c/3.tif"));
    write(&r.join("a/notes.txt"), "not an image");
    png(&r.join("a/._x.png")); // macOS resource fork
    png(&r.join(".ipynb_checkpoints/q.png")); // hidden folder: not a class
    png(&r.join("loose.png")); // not in a class folder
    dir
}

#[test]
fn image_folder_sorts_classes_and_finds_nested_images_of_any_case() {
    let dir = tree();
    let r = dir.path();
    let ds = Dataset::open(r, None).unwrap();
    assert_eq!(ds.classes, strings(&["a", "b", "c"]));
    assert_eq!(ds.class_names, ds.classes);
    let expected = [
        ("a/sub/deep/y.jpeg", 0),
        ("a/w.JPG", 0),
        ("a/x.PNG", 0),
        ("b/z.Tiff", 1),
        ("c/1.webp", 2),
        ("c/2.bmp", 2),
        ("c/3.tif", 2),
    ];
    let expected: Vec<Sample> = expected.iter().map(|(p, l)| Sample { path: r.join(p), label: *l }).collect();
    assert_eq!(ds.samples, expected);
    assert_eq!(ds.class_counts(), vec![3, 1, 3]);
    assert_eq!((ds.len(), ds.num_classes()), (7, 3));
}

#[test]
fn image_folder_errors_name_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();

    let missing = r.join("nope");
    let e = err(Dataset::open(&missing, None));
    assert!(e.contains("nope") && e.contains("no such"), "{e}");

    let flat = r.join("flat");
    png(&flat.join("a.png"));
    let e = err(Dataset::image_folder(&flat, None));
    assert!(e.contains("flat") && e.contains("no class folders") && e.contains("1 images"), "{e}");

    let holey = r.join("holey");
    png(&holey.join("cat/1.png"));
    write(&holey.join("dog/readme.txt"), "no images here");
    let e = err(Dataset::open(&holey, None));
    assert!(e.contains("dog") && e.contains("no images"), "{e}");

    let e = err(Dataset::open(&holey.join("cat/1.png"), None));
    assert!(e.contains("not a dataset"), "{e}");
}

#[test]
fn classnames_file_in_the_root_gives_readable_names() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    for d in ["0", "1", "2"] {
        png(&r.join(d).join("img.png"));
    }
    // key<TAB>name, in any order.
    write(&r.join("classnames.txt"), "2\ttwo\n0\tzero\n1\tone\n");
    let ds = Dataset::open(r, None).unwrap();
    assert_eq!(ds.classes, strings(&["0", "1", "2"]));
    assert_eq!(ds.class_names, strings(&["zero", "one", "two"]));

    // An explicit file wins over the folder's own; plain names follow sorted folder order.
    let plain = r.join("plain.txt");
    write(&plain, "nought\nun\ndeux\n");
    assert_eq!(Dataset::open(r, Some(&plain)).unwrap().class_names, strings(&["nought", "un", "deux"]));

    // Wrong count, unknown key, duplicate: the file (and line) is named.
    write(&plain, "nought\nun\n");
    let e = err(Dataset::open(r, Some(&plain)));
    assert!(e.contains("plain.txt") && e.contains("2 class names for 3 classes"), "{e}");
    write(&r.join("classnames.txt"), "0\tzero\n1\tone\n3\tthree\n");
    let e = err(Dataset::open(r, None));
    assert!(e.contains("classnames.txt:3:") && e.contains("no class '3'"), "{e}");
    write(&r.join("classnames.txt"), "0\tzero\n1\tone\n2\tone\n");
    let e = err(Dataset::open(r, None));
    assert!(e.contains("classnames.txt:3:") && e.contains("line 2"), "{e}");
    write(&r.join("classnames.txt"), "0\tzero\n1\tone\n");
    let e = err(Dataset::open(r, None));
    assert!(e.contains("class '2' has no line"), "{e}");
}

/// A manifest next to images in arbitrary folders.
fn manifest_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    png(&r.join("imgs/one.png"));
    png(&r.join("imgs/two, with comma.png"));
    png(&r.join("other/three.jpg"));
    let csv = r.join("data.csv");
    (dir, csv)
}

#[test]
fn csv_manifest_resolves_paths_and_sorts_labels() {
    let (dir, csv) = manifest_dir();
    let r = dir.path();
    // BOM, CRLF, an extra column, a quoted path with a comma, padding.
    write(
        &csv,
        "\u{feff}path,id,label\r\nimgs/one.png,1,cat\r\n\"imgs/two, with comma.png\",2,dog\r\n other/three.jpg ,3, cat\r\n",
    );
    let ds = Dataset::open(&csv, None).unwrap();
    assert_eq!(ds.classes, strings(&["cat", "dog"]));
    assert_eq!(ds.class_names, ds.classes);
    let paths: Vec<PathBuf> = ds.samples.iter().map(|s| s.path.clone()).collect();
    assert_eq!(
        paths,
        vec![r.join("imgs/one.png"), r.join("imgs/two, with comma.png"), r.join("other/three.jpg")]
    );
    assert_eq!(ds.samples.iter().map(|s| s.label).collect::<Vec<_>>(), vec![0, 1, 0]);

    // All-integer labels sort as numbers: 2 before 10.
    write(&csv, "path,label\nimgs/one.png,10\nimgs/two, with comma.png,2\n");
    let e = err(Dataset::open(&csv, None));
    assert!(e.contains("data.csv:3:"), "unquoted comma makes a third field: {e}");
    write(&csv, "path,label\nimgs/one.png,10\nother/three.jpg,2\n");
    let ds = Dataset::open(&csv, None).unwrap();
    assert_eq!(ds.classes, strings(&["2", "10"]));
    assert_eq!(ds.samples.iter().map(|s| s.label).collect::<Vec<_>>(), vec![1, 0]);
}

#[test]
fn csv_labels_are_keys_names_or_indices_of_the_classnames_file() {
    let (dir, csv) = manifest_dir();
    let names = dir.path().join("names.txt");
    write(&names, "n01\tcat\nn02\tdog\nn03\tbird\n");
    write(&csv, "path,label\nimgs/one.png,n02\nother/three.jpg,bird\nimgs/one.png,0\n");
    let ds = Dataset::open(&csv, Some(&names)).unwrap();
    assert_eq!(ds.classes, strings(&["n01", "n02", "n03"]));
    assert_eq!(ds.class_names, strings(&["cat", "dog", "bird"]));
    assert_eq!(ds.samples.iter().map(|s| s.label).collect::<Vec<_>>(), vec![1, 2, 0]);

    write(&csv, "path,label\nimgs/one.png,dog\nother/three.jpg,fish\n");
    let e = err(Dataset::open(&csv, Some(&names)));
    assert!(e.contains("data.csv:3:") && e.contains("unknown label 'fish'"), "{e}");
    write(&csv, "path,label\nimgs/one.png,3\n");
    let e = err(Dataset::open(&csv, Some(&names)));
    assert!(e.contains("data.csv:2:") && e.contains("unknown label '3'"), "{e}");
}

#[test]
fn csv_errors_name_file_and_line() {
    let (_dir, csv) = manifest_dir();
    write(&csv, "file,class\nimgs/one.png,cat\n");
    let e = err(Dataset::open(&csv, None));
    assert!(e.contains("data.csv:1:") && e.contains("'path' and 'label'"), "{e}");
    write(&csv, "path,label\nimgs/one.png,cat\nimgs/missing.png,cat\n");
    let e = err(Dataset::open(&csv, None));
    assert!(e.contains("data.csv:3:") && e.contains("missing.png"), "{e}");
    write(&csv, "path,label\nimgs/one.png,\n");
    let e = err(Dataset::open(&csv, None));
    assert!(e.contains("data.csv:2:") && e.contains("empty label"), "{e}");
    write(&csv, "path,label\n");
    let e = err(Dataset::open(&csv, None));
    assert!(e.contains("no samples"), "{e}");
    std::fs::write(&csv, b"path,label\nimgs/one.png,\xff\xfe\n").unwrap();
    let e = err(Dataset::open(&csv, None));
    assert!(e.contains("data.csv"), "{e}");
}
