//! The handwritten-digit sources: four text or binary formats, one output shape (grey PNGs
//! in class folders `0`…`9`, bright ink on black as in MNIST).
//!
//! Every parser checks what it reads (header magic, counts, value ranges, labels) and names
//! the file and line of the first problem, so a truncated download is an error, not a
//! smaller dataset.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{locate, read_maybe_gz, Source, SplitSummary, Written};
use crate::{Error, Result};

/// Readable names of the digit classes, used for prompts ("a photo of the number three").
pub const DIGIT_NAMES: [&str; 10] =
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"];

/// One decoded digit: 8-bit grey pixels, row-major.
struct Digit {
    label: u8,
    pixels: Vec<u8>,
}

/// All digits of one split, at one resolution.
struct Split {
    /// `None`: the classes go directly into the output folder.
    name: Option<&'static str>,
    side: u32,
    digits: Vec<Digit>,
}

pub(super) fn import(source: Source, from: &Path, out: &Path) -> Result<Written> {
    let splits = match source {
        Source::Mnist => vec![read_mnist_test(source, from)?],
        Source::Mnist5k => {
            let path = locate(source, from, &["mnist_5k.csv.gz"])?;
            vec![Split {
                name: Some("train"),
                side: 28,
                digits: read_csv_digits(&path, 28 * 28, 255, |v| v as u8)?,
            }]
        }
        Source::Usps => read_usps(source, from)?,
        Source::Semeion => {
            let path = locate(source, from, &["semeion.data"])?;
            vec![Split { name: None, side: 16, digits: read_semeion(&path)? }]
        }
        Source::Optdigits => {
            let path = locate(source, from, &["digits.csv.gz", "optdigits.csv.gz"])?;
            // Values count ink in 4×4 blocks (0–16): spread them over 0–255.
            let digits = read_csv_digits(&path, 8 * 8, 16, |v| (f64::from(v) * 255.0 / 16.0).round() as u8)?;
            vec![Split { name: None, side: 8, digits }]
        }
        Source::Cifar10 => return Err(Error::Config("cifar10 is not a digit dataset".to_string())),
    };
    let classes: Vec<String> = (0..10).map(|d: u8| d.to_string()).collect();
    let class_names = DIGIT_NAMES.iter().map(|s| s.to_string()).collect();
    let splits = splits.iter().map(|split| write_split(out, split)).collect::<Result<_>>()?;
    Ok(Written { classes, class_names, splits })
}

/// Writes `out/<split>/<label>/<row>.png` for every digit, in parallel.
fn write_split(out: &Path, split: &Split) -> Result<SplitSummary> {
    let root = match split.name {
        Some(name) => out.join(name),
        None => out.to_path_buf(),
    };
    let mut counts = vec![0usize; 10];
    for d in &split.digits {
        counts[usize::from(d.label)] += 1;
    }
    for (label, &n) in counts.iter().enumerate() {
        if n == 0 {
            return Err(Error::invalid(
                &root,
                format!("the source has no images of class {label} in this split; is the file complete?"),
            ));
        }
        let dir = root.join(label.to_string());
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    let width = split.digits.len().to_string().len().max(5);
    split.digits.par_iter().enumerate().try_for_each(|(row, digit)| {
        let path = root.join(digit.label.to_string()).join(format!("{row:0width$}.png"));
        write_grey_png(&path, split.side, &digit.pixels)
    })?;
    Ok(SplitSummary { split: split.name.map(str::to_string), counts })
}

fn write_grey_png(path: &Path, side: u32, pixels: &[u8]) -> Result<()> {
    let img = image::GrayImage::from_raw(side, side, pixels.to_vec())
        .ok_or_else(|| Error::invalid(path, "pixel count does not match the image size"))?;
    img.save_with_format(path, image::ImageFormat::Png).map_err(|e| match e {
        image::ImageError::IoError(io) => Error::io(path, io),
        other => Error::invalid(path, format!("cannot write PNG: {other}")),
    })
}

/// MNIST's test set from its two IDX files (big-endian headers: magic, count, then rows and
/// columns for images).
fn read_mnist_test(source: Source, from: &Path) -> Result<Split> {
    let (images_path, labels_path) = if from.is_file() {
        mnist_pair(from)?
    } else {
        let images = locate(source, from, &["t10k-images-idx3-ubyte.gz"])?;
        let labels = locate(source, from, &["t10k-labels-idx1-ubyte.gz"])?;
        (images, labels)
    };
    let images = read_maybe_gz(&images_path)?;
    let labels = read_maybe_gz(&labels_path)?;
    let header = |bytes: &[u8], path: &Path, words: usize| -> Result<Vec<usize>> {
        if bytes.len() < 4 * words {
            return Err(Error::invalid(path, "too short for an IDX header"));
        }
        Ok((0..words)
            .map(|i| {
                u32::from_be_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]])
                    as usize
            })
            .collect())
    };
    let ih = header(&images, &images_path, 4)?;
    if ih[0] != 0x0803 {
        return Err(Error::invalid(
            &images_path,
            format!("not an IDX image file (magic {:#010x}, expected 0x00000803)", ih[0]),
        ));
    }
    let lh = header(&labels, &labels_path, 2)?;
    if lh[0] != 0x0801 {
        return Err(Error::invalid(
            &labels_path,
            format!("not an IDX label file (magic {:#010x}, expected 0x00000801)", lh[0]),
        ));
    }
    let (n, rows, cols) = (ih[1], ih[2], ih[3]);
    if rows != cols || rows == 0 || rows > 4096 {
        return Err(Error::invalid(&images_path, format!("{rows}×{cols} images; expected square digits")));
    }
    let per_image = rows * cols;
    if n.checked_mul(per_image).and_then(|b| b.checked_add(16)) != Some(images.len()) {
        return Err(Error::invalid(
            &images_path,
            format!(
                "{} bytes of pixels for {n} images of {rows}×{cols}: truncated or corrupt",
                images.len() - 16
            ),
        ));
    }
    if lh[1] != n || labels.len() != 8 + n {
        return Err(Error::invalid(
            &labels_path,
            format!("{} labels for {n} images", labels.len().saturating_sub(8)),
        ));
    }
    let digits = images[16..]
        .chunks_exact(per_image)
        .zip(&labels[8..])
        .enumerate()
        .map(|(i, (pixels, &label))| {
            if label > 9 {
                return Err(Error::invalid(
                    &labels_path,
                    format!("label {label} of image {i} is not a digit"),
                ));
            }
            Ok(Digit { label, pixels: pixels.to_vec() })
        })
        .collect::<Result<_>>()?;
    Ok(Split { name: Some("test"), side: rows as u32, digits })
}

/// The images and labels files of MNIST when `--from` names one of them.
fn mnist_pair(file: &Path) -> Result<(PathBuf, PathBuf)> {
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let sibling = |from: &str, to: &str| file.with_file_name(name.replace(from, to));
    let (images, labels) = if name.contains("images-idx3") {
        (file.to_path_buf(), sibling("images-idx3", "labels-idx1"))
    } else if name.contains("labels-idx1") {
        (sibling("labels-idx1", "images-idx3"), file.to_path_buf())
    } else {
        return Err(Error::invalid(
            file,
            "expected an MNIST t10k-images-idx3-ubyte or t10k-labels-idx1-ubyte file",
        ));
    };
    for path in [&images, &labels] {
        if !path.is_file() {
            return Err(Error::invalid(
                path,
                "no such file (MNIST needs the images and the labels file side by side)",
            ));
        }
    }
    Ok((images, labels))
}

/// Lines of a text file with their 1-based numbers, blank lines and trailing `\r` dropped.
fn text_lines<'a>(path: &'a Path, bytes: &'a [u8]) -> Result<impl Iterator<Item = (usize, &'a str)>> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| Error::invalid(path, format!("not text (invalid UTF-8 at byte {})", e.valid_up_to())))?;
    Ok(text.lines().enumerate().map(|(i, l)| (i + 1, l.trim_end())).filter(|(_, l)| !l.is_empty()))
}

fn parse_label(path: &Path, line: usize, s: &str) -> Result<u8> {
    match s.trim().parse::<u8>() {
        Ok(d) if d <= 9 => Ok(d),
        _ => Err(Error::line(path, line, format!("label '{s}' is not a digit 0–9"))),
    }
}

/// CSV rows of `pixels` integer values in `0..=max` then the label (mnist_5k, optdigits),
/// each value mapped to 0–255 by `to_byte`.
fn read_csv_digits(path: &Path, pixels: usize, max: u16, to_byte: impl Fn(u16) -> u8) -> Result<Vec<Digit>> {
    let bytes = read_maybe_gz(path)?;
    let mut digits = Vec::new();
    for (line, text) in text_lines(path, &bytes)? {
        let fields: Vec<&str> = text.split(',').collect();
        if fields.len() != pixels + 1 {
            return Err(Error::line(
                path,
                line,
                format!("{} values; expected {pixels} pixels then the label", fields.len()),
            ));
        }
        let mut row = Vec::with_capacity(pixels);
        for (col, field) in fields[..pixels].iter().enumerate() {
            match field.trim().parse::<u16>() {
                Ok(v) if v <= max => row.push(to_byte(v)),
                _ => {
                    return Err(Error::line(
                        path,
                        line,
                        format!("value '{field}' in column {} is not an integer 0–{max}", col + 1),
                    ))
                }
            }
        }
        digits.push(Digit { label: parse_label(path, line, fields[pixels])?, pixels: row });
    }
    if digits.is_empty() {
        return Err(Error::invalid(path, "no rows"));
    }
    Ok(digits)
}

/// USPS from ESL: `zip.train` → `train/`, `zip.test` → `test/`; or the one split named by
/// a file given as `--from`.
fn read_usps(source: Source, from: &Path) -> Result<Vec<Split>> {
    if from.is_file() {
        let name = from.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let split = if name.contains("test") {
            "test"
        } else if name.contains("train") {
            "train"
        } else {
            return Err(Error::invalid(
                from,
                "cannot tell the split: expected zip.train(.gz) or zip.test(.gz)",
            ));
        };
        return Ok(vec![Split { name: Some(split), side: 16, digits: read_usps_file(from)? }]);
    }
    let train = locate(source, from, &["zip.train.gz"])?;
    let test = locate(source, from, &["zip.test.gz"])?;
    Ok(vec![
        Split { name: Some("train"), side: 16, digits: read_usps_file(&train)? },
        Split { name: Some("test"), side: 16, digits: read_usps_file(&test)? },
    ])
}

/// Rows of a label (`6` or `6.0000`) then 256 values in [-1, 1], whitespace-separated;
/// (v + 1) · 127.5 gives 0–255 with bright ink.
fn read_usps_file(path: &Path) -> Result<Vec<Digit>> {
    let bytes = read_maybe_gz(path)?;
    let mut digits = Vec::new();
    for (line, text) in text_lines(path, &bytes)? {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 257 {
            return Err(Error::line(
                path,
                line,
                format!("{} values; expected a label then 256 pixels", fields.len()),
            ));
        }
        let label = match fields[0].parse::<f64>() {
            Ok(v) if v.fract() == 0.0 && (0.0..=9.0).contains(&v) => v as u8,
            _ => return Err(Error::line(path, line, format!("label '{}' is not a digit 0–9", fields[0]))),
        };
        let mut pixels = Vec::with_capacity(256);
        for (col, field) in fields[1..].iter().enumerate() {
            match field.parse::<f64>() {
                // A little slack: the published values are rounded to three decimals.
                Ok(v) if (-1.01..=1.01).contains(&v) => {
                    pixels.push(((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8)
                }
                _ => {
                    return Err(Error::line(
                        path,
                        line,
                        format!("value '{field}' in column {} is not a number in [-1, 1]", col + 2),
                    ))
                }
            }
        }
        digits.push(Digit { label, pixels });
    }
    if digits.is_empty() {
        return Err(Error::invalid(path, "no rows"));
    }
    Ok(digits)
}

/// Semeion: per line 256 pixels (1 = ink) then a one-hot label of 10, either as 266
/// characters `0`/`1` (the copy in `shared/datasets`) or as 266 whitespace-separated numbers
/// (`1.0000 0.0000 … 0 1 0 …`, the file as UCI serves it).
fn read_semeion(path: &Path) -> Result<Vec<Digit>> {
    let bytes = read_maybe_gz(path)?;
    let mut digits = Vec::new();
    for (line, text) in text_lines(path, &bytes)? {
        let values: Vec<bool> = if text.contains(char::is_whitespace) {
            text.split_whitespace()
                .map(|f| match f.parse::<f64>() {
                    Ok(v) if v == 0.0 || v == 1.0 => Ok(v == 1.0),
                    _ => Err(Error::line(path, line, format!("value '{f}' is not 0 or 1"))),
                })
                .collect::<Result<_>>()?
        } else {
            text.chars()
                .map(|c| match c {
                    '0' | '1' => Ok(c == '1'),
                    _ => Err(Error::line(path, line, format!("character '{c}' is not 0 or 1"))),
                })
                .collect::<Result<_>>()?
        };
        if values.len() != 266 {
            return Err(Error::line(
                path,
                line,
                format!("{} values; expected 256 pixels then 10 label bits", values.len()),
            ));
        }
        let hot: Vec<usize> = (0..10).filter(|&d| values[256 + d]).collect();
        let [label] = hot[..] else {
            return Err(Error::line(
                path,
                line,
                format!("the label is not one-hot ({} of 10 bits set)", hot.len()),
            ));
        };
        let pixels = values[..256].iter().map(|&ink| if ink { 255 } else { 0 }).collect();
        digits.push(Digit { label: label as u8, pixels });
    }
    if digits.is_empty() {
        return Err(Error::invalid(path, "no rows"));
    }
    Ok(digits)
}
