//! Whole datasets: an ImageFolder tree in, one corrupted ImageFolder tree per corruption
//! and severity out.
//!
//! Layout. With exactly one corruption and one severity, `out` itself is the corrupted
//! ImageFolder; otherwise every pair gets `out/<corruption>/<severity>/`. Each tree has the
//! source's class folders, the same relative paths and file stems, always as PNG (lossless,
//! so only the corruption changes the pixels, not a re-encoding), and a copy of the source's
//! `classnames.txt`. `out/shift.json` records what was made (source, seed, corruptions,
//! severities, layout).
//!
//! Reproducibility. Every image draws from its own generator, seeded from the seed, the
//! corruption's name and the image's relative path ([`crate::image_seed`]): the output does
//! not depend on thread count or order, adding images to a dataset does not change the
//! others, and the five severities of an image share their draws (only the strength
//! changes). Images are processed in parallel (rayon); each is decoded once for all the
//! corruptions and severities asked for.
//!
//! Atomicity. Everything is written to a hidden `.wise-shift-*` folder beside `out` and
//! renamed into place at the end, as `wise data import` does: a run that fails (an image
//! that does not decode, a full disk) or is interrupted leaves no half-written tree. A
//! non-empty `out` is refused unless `overwrite`, and then replaced only once the new tree
//! is complete.

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;
use wise_data::output::{check_out, install, staging_dir};
use wise_data::{Dataset, CLASSNAMES_FILE};

use crate::rng::SeededNoise;
use crate::{corrupt, Corruption, Error, Result, Severity};

/// The record of a run, written at the top of `out`.
pub const SHIFT_MANIFEST: &str = "shift.json";

/// What to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShiftOptions {
    pub corruptions: Vec<Corruption>,
    pub severities: Vec<Severity>,
    pub seed: u64,
    /// Replace a non-empty `out` (only once the new trees are complete).
    pub overwrite: bool,
}

/// What a run wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShiftSummary {
    pub out: PathBuf,
    /// Images per tree.
    pub images: usize,
    pub classes: usize,
    /// Each corrupted ImageFolder: corruption, severity and its folder.
    pub sets: Vec<(Corruption, Severity, PathBuf)>,
}

impl ShiftSummary {
    /// Whether the trees sit in `out/<corruption>/<severity>/` (else `out` is the tree).
    pub fn nested(&self) -> bool {
        self.sets.len() != 1 || self.sets[0].2 != self.out
    }
}

/// Corrupts every image of the ImageFolder at `data` (see the module docs). `progress` is
/// called with the number of images written each time one image's outputs are done.
pub fn shift_dataset(
    data: &Path,
    out: &Path,
    opts: &ShiftOptions,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<ShiftSummary> {
    if opts.corruptions.is_empty() || opts.severities.is_empty() {
        return Err(Error::Config("no corruption or no severity given".to_string()));
    }
    if !data.is_dir() {
        let what = if data.exists() { "is not a folder" } else { "does not exist" };
        return Err(Error::invalid(
            data,
            format!("{what}; wise shift reads an ImageFolder (one folder per class)"),
        ));
    }
    check_out(out, opts.overwrite)?;
    refuse_overlap(data, out)?;
    let dataset = Dataset::image_folder(data, None)?;

    // Where each image goes, relative to a tree's root: same path, `.png`.
    let mut targets: Vec<(PathBuf, String)> = Vec::with_capacity(dataset.len());
    let mut seen: HashMap<PathBuf, &Path> = HashMap::new();
    for sample in &dataset.samples {
        let rel = sample.path.strip_prefix(data).map_err(|_| {
            Error::invalid(&sample.path, format!("is not below the dataset folder {}", data.display()))
        })?;
        let rel_png = rel.with_extension("png");
        if let Some(first) = seen.insert(rel_png.clone(), &sample.path) {
            return Err(Error::invalid(
                &sample.path,
                format!(
                    "would be written to the same {} as {}; rename one of them",
                    rel_png.display(),
                    first.display()
                ),
            ));
        }
        targets.push((rel_png, portable(rel)));
    }

    let nested = !(opts.corruptions.len() == 1 && opts.severities.len() == 1);
    let set_dir = |root: &Path, c: Corruption, s: Severity| {
        if nested {
            root.join(c.name()).join(s.to_string())
        } else {
            root.to_path_buf()
        }
    };
    let pairs: Vec<(Corruption, Severity)> =
        opts.corruptions.iter().flat_map(|&c| opts.severities.iter().map(move |&s| (c, s))).collect();

    let staging = staging_dir(out, "wise-shift")?;
    let root = staging.path();

    // Folders first (sequentially), so the parallel part only writes files.
    let folders: BTreeSet<PathBuf> =
        targets.iter().filter_map(|(rel, _)| rel.parent().map(Path::to_path_buf)).collect();
    for &(c, s) in &pairs {
        let dir = set_dir(root, c, s);
        for folder in &folders {
            let path = dir.join(folder);
            std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
    }

    dataset.samples.par_iter().zip(&targets).try_for_each(|(sample, (rel_png, key))| -> Result<()> {
        let img = wise_clip::preprocess::load_rgb(&sample.path)?;
        for &(c, s) in &pairs {
            let mut noise = SeededNoise::for_image(opts.seed, c.name(), key);
            let shifted = corrupt(&img, c, s, &mut noise)
                .map_err(|e| Error::invalid(&sample.path, format!("{c} {s}: {e}")))?;
            let path = set_dir(root, c, s).join(rel_png);
            shifted.save_with_format(&path, image::ImageFormat::Png).map_err(|e| match e {
                image::ImageError::IoError(io) => Error::io(&path, io),
                other => Error::invalid(&path, format!("cannot write PNG: {other}")),
            })?;
        }
        progress(pairs.len());
        Ok(())
    })?;

    let classnames = data.join(CLASSNAMES_FILE);
    if classnames.is_file() {
        for &(c, s) in &pairs {
            let to = set_dir(root, c, s).join(CLASSNAMES_FILE);
            std::fs::copy(&classnames, &to).map_err(|e| Error::io(&to, e))?;
        }
    }
    write_manifest(root, data, opts, nested, dataset.len())?;

    install(staging, out, opts.overwrite)?;
    Ok(ShiftSummary {
        out: out.to_path_buf(),
        images: dataset.len(),
        classes: dataset.num_classes(),
        sets: pairs.iter().map(|&(c, s)| (c, s, set_dir(out, c, s))).collect(),
    })
}

/// A relative path with `/` separators (the per-image seed must not depend on the OS).
fn portable(rel: &Path) -> String {
    rel.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn write_manifest(root: &Path, data: &Path, opts: &ShiftOptions, nested: bool, images: usize) -> Result<()> {
    let source = data.canonicalize().unwrap_or_else(|_| data.to_path_buf());
    let manifest = serde_json::json!({
        "tool": format!("wise shift {}", env!("CARGO_PKG_VERSION")),
        "source": source.display().to_string(),
        "images": images,
        "seed": opts.seed,
        "corruptions": opts.corruptions.iter().map(|c| c.name()).collect::<Vec<_>>(),
        "severities": opts.severities.iter().map(|s| s.get()).collect::<Vec<_>>(),
        "layout": if nested { "<corruption>/<severity>/<class>/..." } else { "<class>/..." },
        "parameters": "Hendrycks & Dietterich 2019: the CIFAR-10-C table for images whose short side is < 85 px, \
                       the ImageNet-C table otherwise; spatial parameters scaled by side/32 or side/224",
    });
    let path = root.join(SHIFT_MANIFEST);
    let text = serde_json::to_string_pretty(&manifest).unwrap_or_default() + "\n";
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
}

/// `out` must neither hold the dataset (replacing it would delete the source) nor sit inside
/// it (the trees would become classes of the source).
fn refuse_overlap(data: &Path, out: &Path) -> Result<()> {
    let data_abs = data.canonicalize().map_err(|e| Error::io(data, e))?;
    let out_abs = absolute(out);
    if data_abs.starts_with(&out_abs) {
        return Err(Error::invalid(
            out,
            format!("contains the dataset {}; choose another output folder", data.display()),
        ));
    }
    if out_abs.starts_with(&data_abs) {
        return Err(Error::invalid(
            out,
            format!("is inside the dataset {}; its trees would become classes of it", data.display()),
        ));
    }
    Ok(())
}

/// `path` made absolute through its nearest existing ancestor (symlinks resolved there).
fn absolute(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut cur = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    loop {
        if let Ok(real) = cur.canonicalize() {
            return rest.iter().rev().fold(real, |acc, part| acc.join(part));
        }
        match (cur.file_name().map(|n| n.to_os_string()), cur.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                cur = parent.to_path_buf();
            }
            _ => return std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
        }
    }
}
