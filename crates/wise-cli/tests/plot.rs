//! `wise plot` end to end on a results file written here: the figure and the report are
//! written, bad input is reported with the file (and line) and writes nothing.

mod common;
use common::{s, stderr, wise};

/// Width and height from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

/// An α sweep as `wise eval --results` writes it, plus a fine-tuning epoch without α and a
/// model evaluated on the reference only.
fn results_text() -> String {
    let mut lines = Vec::new();
    for (alpha, r, a, b) in [(0.0, 0.60, 0.55, 0.45), (0.5, 0.76, 0.62, 0.50), (1.0, 0.80, 0.50, 0.30)] {
        lines.push(format!(
            r#"{{"model": "sweep/{alpha}.safetensors", "alpha": {alpha}, "IN:top1": {r}, "IN:top5": 0.9, "IN:n": 100, "IN:per_class": {{}}, "IN-A:top1": {a}, "IN-A:n": 50, "IN-R:top1": {b}, "seconds": 1.5}}"#
        ));
    }
    lines.push(
        r#"{"model": "ft/epoch1", "alpha": null, "IN:top1": 0.7, "IN-A:top1": 0.5, "IN-R:top1": 0.4}"#.into(),
    );
    lines.push(r#"{"model": "probe", "alpha": null, "IN:top1": 0.7}"#.into());
    lines.join("\n") + "\n"
}

#[test]
fn writes_figure_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.jsonl");
    std::fs::write(&results, results_text()).unwrap();
    let png = dir.path().join("out/wiseft.png");
    let report = dir.path().join("out/report.md");
    let out = wise(&[
        "plot",
        s(&results),
        "--reference",
        "IN",
        "--shifts",
        "IN-A,IN-R",
        "--out",
        s(&png),
        "--report",
        s(&report),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("warning: left out 'probe' on line 5 has no IN-A, IN-R"), "{err}");
    assert!(err.contains("3 α values, 1 other models; IN vs. mean of IN-A, IN-R"), "{err}");
    assert_eq!(png_size(&std::fs::read(&png).unwrap()), (1000, 750));

    let md = std::fs::read_to_string(&report).unwrap();
    assert!(md.contains("| α | model | IN | IN-A | IN-R | mean shift | avg |"), "{md}");
    assert!(md.contains("| 0.5 | sweep/0.5.safetensors | 76.00 | 62.00 | 50.00 | 56.00 | 66.00 |"), "{md}");
    assert!(md.contains("| – | ft/epoch1 | 70.00 | 50.00 | 40.00 | 45.00 | 57.50 |"), "{md}");
    assert!(md.contains("- **best α=0.5** (`sweep/0.5.safetensors`)"), "{md}");

    // The default shifts are every other dataset; SVG by extension.
    let svg = dir.path().join("wiseft.svg");
    let out = wise(&["plot", s(&results), "--reference", "IN", "--out", s(&svg)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("mean of IN-A, IN-R top-1 (%)") && text.contains("α=0.5"));
}

#[test]
fn bad_input_names_the_file_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.jsonl");
    std::fs::write(&results, results_text()).unwrap();
    let png = dir.path().join("x.png");

    let out = wise(&["plot", s(&results), "--reference", "ImageNet", "--out", s(&png)]);
    assert!(!out.status.success());
    let expected = format!(
        "error: {} has no results for the reference dataset 'ImageNet'; datasets present: IN, IN-A, IN-R",
        results.display()
    );
    assert!(stderr(&out).contains(&expected), "{}", stderr(&out));

    let out = wise(&["plot", s(&results), "--reference", "IN", "--shifts", "IN-B", "--out", s(&png)]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no results for the shifted dataset 'IN-B'"), "{}", stderr(&out));

    let out = wise(&["plot", s(&results), "--reference", "IN", "--out", s(&dir.path().join("x.jpg"))]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("x.jpg: unsupported figure format; use a .png or .svg"),
        "{}",
        stderr(&out)
    );

    let broken = dir.path().join("broken.jsonl");
    std::fs::write(&broken, results_text() + "{\"model\": \"m\", \"IN:top1\": \n").unwrap();
    let out = wise(&["plot", s(&broken), "--reference", "IN", "--out", s(&png)]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("error: {}:6: not valid JSON", broken.display())),
        "{}",
        stderr(&out)
    );

    assert!(!png.exists());
}
