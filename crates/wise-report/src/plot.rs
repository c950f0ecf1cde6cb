//! The WiSE-FT figure (the paper's Figure 1): reference top-1 on x, mean top-1 under
//! distribution shift on y, both logit-scaled; the α sweep as a labelled curve, zero-shot
//! (α=0) as a star, fine-tuned (α=1) as a square, other models as grey dots, and y = x
//! dashed.
//!
//! Drawing is generic over plotters' backends; [`plot`] renders PNG (bitmap, encoded with the
//! `image` crate) or SVG by the output's extension and writes it atomically.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::crisp_text::CrispText;
use crate::error::{ReportError, Result};
use crate::fonts;
use crate::labels::{sample_polyline, LabelPlacer, Rect};
use crate::logit::{percent_label, sigmoid, LogitAxis};
use crate::results::Results;
use crate::selection::{format_alpha, Point, Selection};
use crate::write::write_atomic;

/// Size and title of the figure. Text and markers scale with the width (sizes below are for
/// the default 1000 pixels).
#[derive(Debug, Clone)]
pub struct PlotOptions {
    pub width: u32,
    pub height: u32,
    /// Defaults to "WiSE-FT: REFERENCE vs. distribution shift".
    pub title: Option<String>,
}

impl Default for PlotOptions {
    fn default() -> Self {
        Self { width: 1000, height: 750, title: None }
    }
}

const CURVE: RGBColor = RGBColor(31, 119, 180); // matplotlib's tab:blue
const ZERO_SHOT: RGBColor = RGBColor(148, 103, 189); // tab:purple
const FINE_TUNED: RGBColor = RGBColor(214, 39, 40); // tab:red
const OTHER: RGBColor = RGBColor(150, 150, 150);
const TEXT: RGBColor = RGBColor(30, 30, 30);
/// A marker weighs as much as this many pixels of line when placing the legend.
const MARKER_INK: usize = 10;

/// Draws the figure for `reference` against the mean of `shifts` (default: every other
/// dataset in the file) into `out` (`.png` or `.svg`). Returns what was drawn, including the
/// records left out for lack of a dataset, for the caller to report.
pub fn plot(results: &Results, reference: &str, shifts: Option<&[String]>, out: &Path) -> Result<Selection> {
    plot_with(results, reference, shifts, out, &PlotOptions::default())
}

/// [`plot`] with a size and title.
pub fn plot_with(
    results: &Results,
    reference: &str,
    shifts: Option<&[String]>,
    out: &Path,
    options: &PlotOptions,
) -> Result<Selection> {
    let selection = Selection::new(results, reference, shifts)?;
    render(&selection, out, options)?;
    Ok(selection)
}

/// Renders an already made selection to `out`.
pub fn render(selection: &Selection, out: &Path, options: &PlotOptions) -> Result<()> {
    let format = Format::of(out)?;
    fonts::register().map_err(|message| ReportError::Draw { path: out.to_path_buf(), message })?;
    let draw_err = |message: String| ReportError::Draw { path: out.to_path_buf(), message };
    let (w, h) = (options.width.max(200), options.height.max(150));
    let bytes = match format {
        Format::Png => {
            let mut pixels = vec![255u8; w as usize * h as usize * 3];
            {
                let font = fonts::font_ref().map_err(draw_err)?;
                let root =
                    CrispText::new(BitMapBackend::with_buffer(&mut pixels, (w, h)), font).into_drawing_area();
                draw(&root, selection, options).map_err(draw_err)?;
                root.present().map_err(|e| draw_err(e.to_string()))?;
            }
            encode_png(pixels, w, h).map_err(draw_err)?
        }
        Format::Svg => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
                draw(&root, selection, options).map_err(draw_err)?;
                root.present().map_err(|e| draw_err(e.to_string()))?;
            }
            svg.into_bytes()
        }
    };
    write_atomic(out, &bytes)
}

enum Format {
    Png,
    Svg,
}

impl Format {
    fn of(path: &Path) -> Result<Self> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("png") => Ok(Format::Png),
            Some("svg") => Ok(Format::Svg),
            _ => Err(ReportError::UnsupportedFormat { path: path.to_path_buf() }),
        }
    }
}

fn encode_png(pixels: Vec<u8>, w: u32, h: u32) -> std::result::Result<Vec<u8>, String> {
    let image = image::RgbImage::from_raw(w, h, pixels).ok_or("pixel buffer of the wrong size")?;
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Png).map_err(|e| e.to_string())?;
    Ok(bytes.into_inner())
}

/// Errors from plotters carry the backend's error type; as text they are all we report.
fn e<E: std::fmt::Display>(err: E) -> String {
    err.to_string()
}

/// A marker shape, for the plot and the legend alike.
#[derive(Clone, Copy)]
enum Marker {
    Dot(RGBColor),
    Star,
    Square,
    Grey,
    Dashes,
}

impl Marker {
    /// The marker's half-size in pixels (for keeping labels off it).
    fn radius(self, s: f64) -> i32 {
        match self {
            Marker::Star => px(12.0, s),
            Marker::Square => px(8.0, s),
            Marker::Dashes => px(16.0, s),
            Marker::Dot(_) => px(6.0, s),
            Marker::Grey => px(5.0, s),
        }
    }

    fn draw<DB: DrawingBackend>(
        self,
        area: &DrawingArea<DB, Shift>,
        at: (i32, i32),
        s: f64,
    ) -> std::result::Result<(), String> {
        let r = self.radius(s);
        let outline = ShapeStyle::from(&WHITE).stroke_width(px(1.0, s) as u32);
        match self {
            Marker::Dot(color) => {
                area.draw(&Circle::new(at, r, color.filled())).map_err(e)?;
                area.draw(&Circle::new(at, r, outline)).map_err(e)
            }
            Marker::Grey => area.draw(&Circle::new(at, r, OTHER.mix(0.8).filled())).map_err(e),
            Marker::Star => {
                let points: Vec<(i32, i32)> = (0..10)
                    .map(|k| {
                        let angle = -std::f64::consts::FRAC_PI_2 + k as f64 * std::f64::consts::PI / 5.0;
                        let radius = if k % 2 == 0 { r as f64 } else { r as f64 * 0.45 };
                        (
                            at.0 + (radius * angle.cos()).round() as i32,
                            at.1 + (radius * angle.sin()).round() as i32,
                        )
                    })
                    .collect();
                area.draw(&Polygon::new(points.clone(), ZERO_SHOT.filled())).map_err(e)?;
                let mut closed = points;
                closed.push(closed[0]);
                area.draw(&PathElement::new(closed, BLACK.stroke_width(1))).map_err(e)
            }
            Marker::Square => {
                let corners = [(at.0 - r, at.1 - r), (at.0 + r, at.1 + r)];
                area.draw(&Rectangle::new(corners, FINE_TUNED.filled())).map_err(e)?;
                area.draw(&Rectangle::new(corners, BLACK.stroke_width(1))).map_err(e)
            }
            Marker::Dashes => {
                let dash = ShapeStyle::from(&BLACK.mix(0.45)).stroke_width(px(1.5, s) as u32);
                for (a, b) in [(-r, -r / 3), (r / 3, r)] {
                    area.draw(&PathElement::new(vec![(at.0 + a, at.1), (at.0 + b, at.1)], dash))
                        .map_err(e)?;
                }
                Ok(())
            }
        }
    }
}

/// Pixels at the default size, scaled.
fn px(v: f64, s: f64) -> i32 {
    (v * s).round().max(1.0) as i32
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    sel: &Selection,
    options: &PlotOptions,
) -> std::result::Result<(), String> {
    let (w, _) = root.dim_in_pixel();
    let s = w as f64 / 1000.0;
    let font = |size: f64| ("sans-serif", size * s).into_font().color(&TEXT);
    root.fill(&WHITE).map_err(e)?;

    let points: Vec<&Point> = sel.sweep.iter().chain(&sel.others).collect();
    let x_axis = LogitAxis::around(points.iter().map(|p| p.reference), 11);
    let y_axis = LogitAxis::around(points.iter().map(|p| p.shift_mean), 9);
    let (x0, x1) = x_axis.logit_range();
    let (y0, y1) = y_axis.logit_range();

    // The y label names every shift when it fits along the axis; otherwise it counts them
    // and a footnote under the figure lists them.
    let (_, h) = root.dim_in_pixel();
    let plot_height = h as f64 - 200.0 * s;
    let full_y = format!("mean of {} top-1 (%)", sel.shifts.join(", "));
    let fits = |text: &str, size: f64| {
        root.estimate_text_size(text, &font(size)).map(|(tw, _)| (tw as f64) < plot_height).unwrap_or(false)
    };
    let (y_desc, y_desc_size, footnote) = if fits(&full_y, 20.0) {
        (full_y, 20.0, None)
    } else if fits(&full_y, 16.0) {
        (full_y, 16.0, None)
    } else {
        let short = format!("mean of {} shifted datasets, top-1 (%)", sel.shifts.len());
        (short, 20.0, Some(shifts_footnote(&sel.shifts)))
    };
    let footer_font = font(14.0);
    let footer_margin = px(20.0, s);
    let footer = match &footnote {
        Some(note) => footer_lines(root, note, &footer_font, w as i32 - 2 * footer_margin)?,
        None => Vec::new(),
    };
    // Lines past the first push the plot up; a one-line footer leaves it where it was.
    let footer_line = px(18.0, s);
    let footer_extra = footer_line * footer.len().saturating_sub(1) as i32;

    let title =
        options.title.clone().unwrap_or_else(|| format!("WiSE-FT: {} vs. distribution shift", sel.reference));
    let mut chart = ChartBuilder::on(root)
        .caption(title, font(26.0))
        .margin(px(20.0, s))
        .margin_right(px(36.0, s))
        .margin_bottom(if footer.is_empty() { px(16.0, s) } else { px(44.0, s) + footer_extra })
        .x_label_area_size(px(64.0, s))
        .y_label_area_size(px(86.0, s))
        .build_cartesian_2d(x_axis, y_axis)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(format!("{} top-1 (%)", sel.reference))
        .y_desc(y_desc)
        .x_label_formatter(&|x| percent_label(*x))
        .y_label_formatter(&|y| percent_label(*y))
        .label_style(font(16.0))
        .axis_desc_style(font(y_desc_size))
        .bold_line_style(BLACK.mix(0.1))
        .axis_style(BLACK.mix(0.6))
        .draw()
        .map_err(e)?;
    let footer_top = h as i32 - px(30.0, s) - footer_extra;
    for (i, line) in footer.iter().enumerate() {
        let at = (footer_margin, footer_top + footer_line * i as i32);
        root.draw(&Text::new(line.as_str(), at, footer_font.clone())).map_err(e)?;
    }

    // y = x where the ranges overlap: models above it lose less than nothing under shift.
    // (Drawn here, not with plotters' DashedLineSeries, whose last dash overshoots the end.)
    let (d0, d1) = (x0.max(y0), x1.min(y1));
    // What is drawn in the plot, as pixel samples, for placing the legend where least is.
    let mut ink: Vec<(i32, i32)> = Vec::new();
    if d0 < d1 {
        let dash = ShapeStyle::from(&BLACK.mix(0.45)).stroke_width(px(1.5, s) as u32);
        let (a, b) = (sigmoid(d0), sigmoid(d1));
        let (from, to) = (chart.backend_coord(&(a, a)), chart.backend_coord(&(b, b)));
        draw_dashed(root, from, to, (px(8.0, s), px(6.0, s)), dash)?;
        ink.extend(sample_polyline(&[from, to], 4));
    }

    let at = |p: &Point| chart.backend_coord(&(p.reference, p.shift_mean));
    let (xr, yr) = chart.plotting_area().get_pixel_range();
    let frame = Rect { x0: xr.start, y0: yr.start, x1: xr.end, y1: yr.end };
    let mut placer = LabelPlacer::new(frame);

    for p in &sel.others {
        Marker::Grey.draw(root, at(p), s)?;
        placer.block_point(at(p), Marker::Grey.radius(s));
        ink.extend([at(p); MARKER_INK]);
    }

    let curve: Vec<(i32, i32)> = sel.sweep.iter().map(at).collect();
    if curve.len() > 1 {
        let line = ShapeStyle::from(&CURVE).stroke_width(px(2.5, s) as u32);
        root.draw(&PathElement::new(curve.clone(), line)).map_err(e)?;
        placer.block_polyline(&curve, px(3.0, s));
    }
    let marker_of = |p: &Point| match p.alpha {
        Some(0.0) => Marker::Star,
        Some(1.0) => Marker::Square,
        _ => Marker::Dot(CURVE),
    };
    ink.extend(sample_polyline(&curve, 4));
    for p in &sel.sweep {
        placer.block_point(at(p), marker_of(p).radius(s));
        ink.extend([at(p); MARKER_INK]);
    }
    // Ends last, so they sit on top of the curve.
    let mut order: Vec<&Point> = sel.sweep.iter().collect();
    order.sort_by_key(|p| matches!(marker_of(p), Marker::Star | Marker::Square));
    for p in &order {
        marker_of(p).draw(root, at(p), s)?;
    }
    let has = |alpha: f64| sel.sweep.iter().any(|p| p.alpha == Some(alpha));
    let entries = [
        (
            sel.sweep.iter().any(|p| matches!(marker_of(p), Marker::Dot(_))) || curve.len() > 1,
            Marker::Dot(CURVE),
            "WiSE-FT, α from 0 to 1",
        ),
        (has(0.0), Marker::Star, "zero-shot (α=0)"),
        (has(1.0), Marker::Square, "fine-tuned (α=1)"),
        (!sel.others.is_empty(), Marker::Grey, "other models (no α)"),
        (d0 < d1, Marker::Dashes, "y = x"),
    ];
    let legend: Vec<(Marker, String)> = entries
        .into_iter()
        .filter(|(shown, ..)| *shown)
        .map(|(_, m, label)| (m, label.to_string()))
        .collect();
    let legend_box = draw_legend(root, &legend, frame, &ink, s, &font(16.0))?;
    placer.block(legend_box);

    // α labels: the ends first, then the rest in order; a label that cannot be placed
    // without covering a marker, the curve, the legend or another label is left out.
    let label_font = font(15.0);
    let mut labelled: Vec<&Point> =
        sel.sweep.iter().filter(|p| p.alpha.is_some_and(|a| labels_alpha(sel, a))).collect();
    labelled.sort_by_key(|p| !matches!(marker_of(p), Marker::Star | Marker::Square));
    for p in labelled {
        let Some(alpha) = p.alpha else { continue };
        let text = format!("α={}", format_alpha(alpha));
        let (tw, th) = root.estimate_text_size(&text, &label_font).map_err(e)?;
        if let Some(pos) = placer.place(at(p), marker_of(p).radius(s) + px(3.0, s), (tw as i32, th as i32)) {
            root.draw(&Text::new(text, pos, label_font.clone())).map_err(e)?;
        }
    }
    Ok(())
}

/// The footnote naming the shifted datasets when the y label only counts them.
fn shifts_footnote(shifts: &[String]) -> String {
    format!("Shifted datasets: {}.", shifts.join(", "))
}

/// `text` in lines at most `max_width` pixels wide in `font`, broken only after ", " so that
/// no dataset name is split; a footnote listing many shifts (CIFAR-10-C's 15 corruptions)
/// would otherwise run off the figure's right edge. Each line keeps its trailing ", ", so the
/// lines concatenated give back `text`. A piece wider than `max_width` by itself gets a line
/// of its own rather than being cut.
fn footer_lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    text: &str,
    font: &TextStyle,
    max_width: i32,
) -> std::result::Result<Vec<String>, String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for piece in text.split_inclusive(", ") {
        let longer = format!("{line}{piece}");
        let (width, _) = root.estimate_text_size(&longer, font).map_err(e)?;
        if line.is_empty() || width as i32 <= max_width {
            line = longer;
        } else {
            lines.push(std::mem::replace(&mut line, piece.to_string()));
        }
    }
    lines.push(line);
    Ok(lines)
}

/// Whether the point at `alpha` gets an "α=…" label. Every point does in sweeps of up to
/// 11 points; in denser ones (α every 0.05, 0.02) only multiples of 0.1 do, as in the paper's
/// figures, unless that leaves fewer than three labels.
fn labels_alpha(sel: &Selection, alpha: f64) -> bool {
    let round = |a: f64| ((a * 10.0).round() - a * 10.0).abs() < 1e-6;
    sel.sweep.len() <= 11
        || sel.sweep.iter().filter_map(|p| p.alpha).filter(|&a| round(a)).count() < 3
        || round(alpha)
}

/// A dashed straight line from `from` to `to` (pixels), `dash` on and `gap` off, the last
/// dash cut at `to`.
fn draw_dashed<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    from: (i32, i32),
    to: (i32, i32),
    (dash, gap): (i32, i32),
    style: ShapeStyle,
) -> std::result::Result<(), String> {
    let (dx, dy) = ((to.0 - from.0) as f64, (to.1 - from.1) as f64);
    let length = dx.hypot(dy);
    let point =
        |d: f64| (from.0 + (dx * d / length).round() as i32, from.1 + (dy * d / length).round() as i32);
    let mut start = 0.0;
    while start < length {
        let end = (start + dash as f64).min(length);
        root.draw(&PathElement::new(vec![point(start), point(end)], style)).map_err(e)?;
        start = end + gap.max(1) as f64;
    }
    Ok(())
}

/// The legend, in the plot corner holding the fewest points of the curve; returns its box.
fn draw_legend<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    entries: &[(Marker, String)],
    frame: Rect,
    ink: &[(i32, i32)],
    s: f64,
    font: &TextStyle,
) -> std::result::Result<Rect, String> {
    let pad = px(10.0, s);
    let key = px(36.0, s);
    let line = px(26.0, s);
    let mut text_w = 0;
    for (_, label) in entries {
        text_w = text_w.max(root.estimate_text_size(label, font).map_err(e)?.0 as i32);
    }
    let (bw, bh) = (pad * 2 + key + text_w, pad * 2 + line * entries.len() as i32);
    let inset = px(12.0, s);
    let corners = [
        (frame.x0 + inset, frame.y0 + inset),
        (frame.x1 - inset - bw, frame.y0 + inset),
        (frame.x0 + inset, frame.y1 - inset - bh),
        (frame.x1 - inset - bw, frame.y1 - inset - bh),
    ];
    let boxes = corners.map(|(x, y)| Rect { x0: x, y0: y, x1: x + bw, y1: y + bh });
    // Crowding: ink inside the box, grown a little so the legend also keeps its distance.
    let crowding = |b: &Rect| {
        let grown = b.grow(px(20.0, s));
        ink.iter().filter(|&&pt| grown.contains(pt)).count()
    };
    let best = boxes.iter().min_by_key(|b| crowding(b)).copied().unwrap_or(boxes[0]);

    root.draw(&Rectangle::new([(best.x0, best.y0), (best.x1, best.y1)], WHITE.mix(0.9).filled()))
        .map_err(e)?;
    root.draw(&Rectangle::new([(best.x0, best.y0), (best.x1, best.y1)], BLACK.mix(0.3))).map_err(e)?;
    for (i, (marker, label)) in entries.iter().enumerate() {
        let cy = best.y0 + pad + line * i as i32 + line / 2;
        let cx = best.x0 + pad + key / 2;
        if let Marker::Dot(color) = marker {
            let style = ShapeStyle::from(color).stroke_width(px(2.5, s) as u32);
            root.draw(&PathElement::new(vec![(cx - key / 2, cy), (cx + key / 2, cy)], style)).map_err(e)?;
        }
        marker.draw(root, (cx, cy), s * 0.9)?;
        let (_, th) = root.estimate_text_size(label, font).map_err(e)?;
        root.draw(&Text::new(
            label.as_str(),
            (best.x0 + pad + key + px(6.0, s), cy - th as i32 / 2),
            font.clone(),
        ))
        .map_err(e)?;
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The footer's font at the default width. The embedded font is registered first:
    /// plotters looks a font up when the style is made, not when it is drawn.
    fn footer_font() -> TextStyle<'static> {
        fonts::register().unwrap();
        ("sans-serif", 14.0).into_font().color(&TEXT)
    }

    /// A 1000×750 bitmap, the default figure size, to measure text on.
    fn with_default_canvas<T>(f: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> T) -> T {
        let mut pixels = vec![255u8; 1000 * 750 * 3];
        let root = BitMapBackend::with_buffer(&mut pixels, (1000, 750)).into_drawing_area();
        f(&root)
    }

    #[test]
    fn long_footnote_wraps_within_the_figure() {
        let corruptions = [
            "brightness",
            "contrast",
            "defocus_blur",
            "elastic_transform",
            "fog",
            "frost",
            "gaussian_noise",
            "glass_blur",
            "impulse_noise",
            "jpeg_compression",
            "motion_blur",
            "pixelate",
            "shot_noise",
            "snow",
            "zoom_blur",
        ];
        let note = shifts_footnote(&corruptions.map(String::from));
        let font = footer_font();
        // 1000 pixels less the 20-pixel margin on either side.
        let max_width = 960;
        with_default_canvas(|root| {
            let width = |text: &str| root.estimate_text_size(text, &font).unwrap().0;
            assert!(width(&note) > 1000, "the one-line footnote is {} px wide", width(&note));
            let lines = footer_lines(root, &note, &font, max_width).unwrap();
            assert_eq!(lines.len(), 2, "{lines:?}");
            for line in &lines {
                assert!(width(line) <= max_width as u32, "{line:?} is {} px wide", width(line));
            }
            assert!(lines[0].ends_with("motion_blur, "), "{lines:?}");
            assert_eq!(lines.concat(), note);
        });
    }

    #[test]
    fn short_footnote_stays_one_line() {
        let note = shifts_footnote(&["ImageNetV2".to_string(), "ImageNet-R".to_string()]);
        let font = footer_font();
        let lines = with_default_canvas(|root| footer_lines(root, &note, &font, 960).unwrap());
        assert_eq!(lines, [note]);
    }
}
