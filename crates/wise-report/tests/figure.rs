//! The figure and the report from synthetic results files written here: a paper-like α
//! sweep (CLIP ViT-B/16 on ImageNet and five shifts, numbers shaped like WiSE-FT's Table 1)
//! and small exact files for the table.
//!
//! The rendered figures are also left in `target/tmp/wise-report/` to look at.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::json;
use wise_report::{plot, read_results, report_markdown, PlotOptions};

const SHIFTS: [&str; 5] = ["ImageNetV2", "ImageNet-R", "ImageNet-Sketch", "ObjectNet", "ImageNet-A"];
// Zero-shot, fine-tuned and α=0.5 top-1 (%) for ImageNet then SHIFTS.
const ZERO_SHOT: [f64; 6] = [68.3, 61.9, 77.6, 48.2, 53.8, 50.0];
const FINE_TUNED: [f64; 6] = [81.3, 70.9, 65.6, 46.3, 51.4, 36.0];
const HALF: [f64; 6] = [81.7, 72.8, 78.7, 53.9, 57.3, 52.2];

/// One line as `wise eval --results` writes it.
fn line(model: &str, alpha: Option<f64>, accs: &[f64; 6]) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("model".into(), json!(model));
    obj.insert("alpha".into(), json!(alpha));
    for (name, acc) in std::iter::once("ImageNet").chain(SHIFTS).zip(accs) {
        let top1 = (acc * 100.0).round() / 10000.0;
        obj.insert(format!("{name}:top1"), json!(top1));
        obj.insert(format!("{name}:top5"), json!((top1 + 0.15).min(1.0)));
        obj.insert(format!("{name}:n"), json!(10000));
        obj.insert(format!("{name}:per_class"), json!({"cat": top1, "dog": top1}));
    }
    obj.insert("seconds".into(), json!(12.5));
    serde_json::Value::Object(obj).to_string()
}

/// Accuracies of the interpolation at α: linear between the ends plus a bulge that peaks
/// at α=0.5 with the paper's α=0.5 numbers.
fn sweep_point(alpha: f64) -> [f64; 6] {
    std::array::from_fn(|d| {
        let linear = (1.0 - alpha) * ZERO_SHOT[d] + alpha * FINE_TUNED[d];
        let bulge = HALF[d] - (ZERO_SHOT[d] + FINE_TUNED[d]) / 2.0;
        linear + bulge * 4.0 * alpha * (1.0 - alpha)
    })
}

/// A results file with an α sweep and fine-tuning epochs (no α) as the paper's grey dots.
fn paper_like(alphas: &[f64]) -> String {
    let mut lines = Vec::new();
    for (i, &alpha) in alphas.iter().enumerate() {
        lines.push(line(&format!("runs/wiseft/alpha_{i}.safetensors"), Some(alpha), &sweep_point(alpha)));
    }
    for epoch in 1..=4 {
        let t = epoch as f64 / 4.0;
        let accs = std::array::from_fn(|d| {
            let target = FINE_TUNED[d] - (1.0 - t) * if d == 0 { 6.0 } else { 4.0 };
            target.min(99.0)
        });
        lines.push(line(&format!("runs/ft/epoch_{epoch}.safetensors"), None, &accs));
    }
    lines.join("\n") + "\n"
}

fn out_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wise-report");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn png_figure_is_a_real_picture() {
    let dir = tempfile::tempdir().unwrap();
    let alphas: Vec<f64> = (0..=10).map(|i| i as f64 / 10.0).collect();
    let results = read_results(&write(dir.path(), "results.jsonl", &paper_like(&alphas))).unwrap();
    // A directory of its own: the other tests write their figures (and their temporary
    // files) beside each other at the same time, and the check below counts those.
    let out = out_dir().join("png-figure").join("figure1.png");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let sel = plot(&results, "ImageNet", None, &out).unwrap();
    assert_eq!(sel.sweep.len(), 11);
    assert_eq!(sel.others.len(), 4);
    assert_eq!(sel.shifts.len(), 5);

    let img = image::open(&out).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (1000, 750));
    let colours: HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(colours.len() > 100, "only {} colours: is anything drawn?", colours.len());
    // Mostly white background, but far from blank.
    let white = img.pixels().filter(|p| p.0 == [255, 255, 255]).count();
    let total = (img.width() * img.height()) as usize;
    assert!(white > total / 2 && white < total * 98 / 100, "{white} of {total} pixels are white");
    // The curve's blue and the fine-tuned square's red are there.
    assert!(img.pixels().any(|p| p.0 == [31, 119, 180]));
    assert!(img.pixels().any(|p| p.0 == [214, 39, 40]));
    // No temporary file left beside it.
    let stray: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".wise-report-"))
        .collect();
    assert!(stray.is_empty());
}

#[test]
fn svg_figure_labels_every_alpha() {
    let dir = tempfile::tempdir().unwrap();
    let alphas = [0.0, 0.25, 0.5, 0.75, 1.0];
    let results = read_results(&write(dir.path(), "results.jsonl", &paper_like(&alphas))).unwrap();
    let shifts = vec!["ImageNetV2".to_string(), "ImageNet-R".to_string()];
    let out = out_dir().join("figure1.svg");
    plot(&results, "ImageNet", Some(&shifts), &out).unwrap();
    let svg = std::fs::read_to_string(&out).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..50.min(svg.len())]);
    let texts = svg_texts(&svg);
    for text in [
        "α=0",
        "α=0.25",
        "α=0.5",
        "α=0.75",
        "α=1",
        "ImageNet top-1 (%)",
        "mean of ImageNetV2, ImageNet-R top-1 (%)",
        "zero-shot (α=0)",
        "fine-tuned (α=1)",
        "WiSE-FT: ImageNet vs. distribution shift",
    ] {
        assert!(texts.iter().any(|t| t == text), "no '{text}' in the SVG's texts {texts:?}");
    }
}

/// The contents of the SVG's `<text>` elements (plotters writes them on their own lines).
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| Some(t.split_once('>')?.1.split_once("</text>")?.0.trim().to_string()))
        .collect()
}

#[test]
fn other_sizes_and_titles_render() {
    let dir = tempfile::tempdir().unwrap();
    let results = read_results(&write(dir.path(), "r.jsonl", &paper_like(&[0.0, 0.5, 1.0]))).unwrap();
    let out = dir.path().join("nested/small.PNG");
    let options = PlotOptions { width: 500, height: 400, title: Some("small".into()) };
    wise_report::plot_with(&results, "ImageNet", None, &out, &options).unwrap();
    assert_eq!(image::open(&out).unwrap().to_rgb8().dimensions(), (500, 400));
}

/// A sweep from 35% to 99.3% on the reference with shifts above it in places: the ticks
/// reach into the tails and y = x is drawn.
#[test]
fn wide_range_figure() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for i in 0..=20 {
        let alpha = i as f64 / 20.0;
        let reference = 0.35 + (0.993 - 0.35) * alpha.sqrt();
        let shift = 0.55 + 0.3 * (4.0 * alpha * (1.0 - alpha)) - 0.2 * alpha;
        text += &format!(
            "{{\"model\": \"m{i}\", \"alpha\": {alpha}, \"digits:top1\": {reference}, \"rotated:top1\": {shift}, \"noisy:top1\": {}}}\n",
            shift * 0.9
        );
    }
    text += "{\"model\": \"linear-probe\", \"alpha\": null, \"digits:top1\": 0.97, \"rotated:top1\": 0.2, \"noisy:top1\": 0.1}\n";
    let results = read_results(&write(dir.path(), "r.jsonl", &text)).unwrap();
    let out = out_dir().join("figure_wide.png");
    let sel = plot(&results, "digits", None, &out).unwrap();
    assert_eq!((sel.sweep.len(), sel.others.len()), (21, 1));
    assert_eq!(image::open(&out).unwrap().to_rgb8().dimensions(), (1000, 750));
}

#[test]
fn figure_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "r.jsonl", &paper_like(&[0.0, 1.0]));
    let results = read_results(&path).unwrap();
    let err = plot(&results, "imagenet", None, &dir.path().join("x.png")).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{} has no results for the reference dataset 'imagenet'; datasets present: ImageNet, \
             ImageNet-A, ImageNet-R, ImageNet-Sketch, ImageNetV2, ObjectNet",
            path.display()
        )
    );
    assert!(!dir.path().join("x.png").exists());
    let err = plot(&results, "ImageNet", None, &dir.path().join("x.pdf")).unwrap_err().to_string();
    assert!(err.contains("x.pdf: unsupported figure format"), "{err}");

    let bad = write(dir.path(), "bad.jsonl", &format!("{}\n{{\"model\": 3}}\n", line("m", None, &HALF)));
    let err = read_results(&bad).unwrap_err().to_string();
    assert_eq!(err, format!("{}:2: \"model\" must be a string, found 3", bad.display()));
    let truncated =
        write(dir.path(), "cut.jsonl", &format!("{}\n{{\"model\": \"m\", \"Ima", line("m", None, &HALF)));
    let err = read_results(&truncated).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}:2: not valid JSON", truncated.display())), "{err}");
    let err = read_results(&dir.path().join("missing.jsonl")).unwrap_err().to_string();
    assert!(err.starts_with(&format!("reading {}", dir.path().join("missing.jsonl").display())), "{err}");
}

#[test]
fn report_table_is_exact() {
    let text = [
        r#"{"model": "ft.safetensors", "alpha": 1.0, "R:top1": 0.8, "S1:top1": 0.5, "S2:top1": 0.3}"#,
        r#"{"model": "zs.safetensors", "alpha": 0.0, "R:top1": 0.6, "S1:top1": 0.55, "S2:top1": 0.45}"#,
        r#"{"model": "mix_0.5", "alpha": 0.5, "R:top1": 0.76, "S1:top1": 0.62, "S2:top1": 0.5}"#,
        r#"{"model": "mix_0.3", "alpha": 0.30000000000000004, "R:top1": 0.74, "S1:top1": 0.65, "S2:top1": 0.52}"#,
        r#"{"model": "epoch|1", "alpha": null, "R:top1": 0.7, "S1:top1": 0.5, "S2:top1": 0.4}"#,
        r#"{"model": "partial", "R:top1": 0.7, "S1:top1": 0.5}"#,
    ]
    .join("\n");
    let results = wise_report::Results::parse(Path::new("runs/results.jsonl"), &text).unwrap();
    let md = report_markdown(&results, "R", None).unwrap();
    let expected = "\
## WiSE-FT: R vs. distribution shift

Top-1 accuracy (%) from `runs/results.jsonl`. *mean shift*: the average over S1, S2. *avg*: the mean of R and *mean shift*.

| α | model | R | S1 | S2 | mean shift | avg |
|---:|:---|---:|---:|---:|---:|---:|
| 0 | zs.safetensors | 60.00 | 55.00 | 45.00 | 50.00 | 55.00 |
| 0.3 | mix_0.3 | 74.00 | 65.00 | 52.00 | 58.50 | 66.25 |
| 0.5 | mix_0.5 | 76.00 | 62.00 | 50.00 | 56.00 | 66.00 |
| 1 | ft.safetensors | 80.00 | 50.00 | 30.00 | 40.00 | 60.00 |
| – | epoch\\|1 | 70.00 | 50.00 | 40.00 | 45.00 | 57.50 |

- **zero-shot (α=0)** (`zs.safetensors`): R 60.00%, mean shift 50.00%
- **fine-tuned (α=1)** (`ft.safetensors`): R 80.00%, mean shift 40.00%
- **α=0.5** (`mix_0.5`): R 76.00% (-4.00 pp vs. fine-tuned), mean shift 56.00% (+16.00 pp vs. fine-tuned)
- **best α=0.3** (`mix_0.3`): R 74.00% (-6.00 pp vs. fine-tuned), mean shift 58.50% (+18.50 pp vs. fine-tuned)

The best α has the highest *avg*, weighing R and the shifts equally; it is chosen on these same test sets, so it is an optimistic pick (the paper's default is α=0.5).

Not shown, for missing datasets: 'partial' on line 6 has no S2.
";
    assert_eq!(md, expected, "\n{md}");

    // Shifts chosen explicitly, and a sweep without α=0.5 or α=1.
    let only = wise_report::Results::parse(Path::new("r.jsonl"), text.lines().nth(1).unwrap()).unwrap();
    let md = report_markdown(&only, "R", Some(&["S2".to_string()])).unwrap();
    assert!(md.contains("| α | model | R | S2 | mean shift | avg |"), "{md}");
    assert!(md.contains("| 0 | zs.safetensors | 60.00 | 45.00 | 45.00 | 52.50 |"), "{md}");
    assert!(md.contains("- **fine-tuned (α=1)**: not evaluated"), "{md}");
    assert!(md.contains("- **best α=0** (`zs.safetensors`): R 60.00%, mean shift 45.00%\n"), "{md}");

    // No α at all: the table, and no summary of a sweep.
    let epochs = wise_report::Results::parse(Path::new("r.jsonl"), text.lines().nth(4).unwrap()).unwrap();
    let md = report_markdown(&epochs, "R", None).unwrap();
    assert!(
        md.contains("| – | epoch\\|1 | 70.00 | 50.00 | 40.00 | 45.00 | 57.50 |\n\nNo model has an α"),
        "{md}"
    );
    assert!(!md.contains("best α"), "{md}");
}
