//! Labelled image datasets: which files, which class each belongs to, and what the classes
//! are called. Two layouts cover what people have on disk:
//!
//! - **ImageFolder** (torchvision's): one folder per class under a root, classes in sorted
//!   folder-name order, images anywhere below their class folder;
//! - **CSV manifest**: a `path,label` table (with a header), for data whose folders do not
//!   say the class, or a subset of a larger tree.
//!
//! Only the file list is built here; decoding happens in the [`Loader`](crate::Loader),
//! batch by batch, so opening a 50k-image dataset costs a directory walk, not 50k decodes.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::classnames::{preview, ClassNames, CLASSNAMES_FILE};
use crate::{Error, Result};

/// File extensions (any letter case) that count as images, in datasets and for `wise embed`.
pub const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "bmp", "webp", "tiff", "tif"];

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub path: PathBuf,
    /// Index into [`Dataset::classes`].
    pub label: usize,
}

/// A labelled image dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// Class keys as stored: folder names, or manifest labels.
    pub classes: Vec<String>,
    /// Readable class names, one per class: what prompts are built from and what classes
    /// of two datasets are matched by. The keys themselves when no class-names file says
    /// otherwise.
    pub class_names: Vec<String>,
    /// In a deterministic order: by class, then by path (ImageFolder); as listed (CSV).
    pub samples: Vec<Sample>,
}

impl Dataset {
    /// Opens `path`: a folder is an ImageFolder (with its own `classnames.txt` when present
    /// and `classnames` is `None`), a `.csv` file a manifest. `classnames` overrides.
    pub fn open(path: &Path, classnames: Option<&Path>) -> Result<Self> {
        if path.is_dir() {
            return Self::image_folder(path, classnames);
        }
        if !path.exists() {
            return Err(Error::invalid(path, "no such file or folder"));
        }
        let is_csv = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        if is_csv {
            return Self::csv(path, classnames);
        }
        Err(Error::invalid(path, "not a dataset: expected an ImageFolder directory or a .csv manifest"))
    }

    /// An ImageFolder rooted at `root`: every non-hidden sub-folder is a class, every image
    /// file below it (nested folders too) a sample. Hidden entries (names starting with
    /// `.`) are skipped: `.ipynb_checkpoints`, `.git` and macOS's `._photo.jpg` resource
    /// forks are not classes or images. An empty class folder is an error rather than a
    /// class the model can never be shown.
    pub fn image_folder(root: &Path, classnames: Option<&Path>) -> Result<Self> {
        if !root.exists() {
            return Err(Error::invalid(root, "no such folder"));
        }
        if !root.is_dir() {
            return Err(Error::invalid(
                root,
                "not a folder (an ImageFolder is a folder with one sub-folder per class)",
            ));
        }
        let mut classes = Vec::new();
        let mut loose_images = 0usize;
        for entry in read_dir_sorted(root)? {
            let name = file_name(&entry)?;
            if name.starts_with('.') {
                continue;
            }
            if entry.is_dir() {
                classes.push(name);
            } else if is_image(&entry) {
                loose_images += 1;
            }
        }
        if classes.is_empty() {
            let hint = if loose_images > 0 {
                format!(" ({loose_images} images lie directly in it; put each class's images in a folder named after the class)")
            } else {
                String::new()
            };
            return Err(Error::invalid(
                root,
                format!("no class folders: an ImageFolder has one sub-folder per class{hint}"),
            ));
        }
        classes.sort();
        let per_class: Vec<Vec<PathBuf>> = classes
            .par_iter()
            .map(|class| {
                let dir = root.join(class);
                let mut files = Vec::new();
                collect_images(&dir, &mut files)?;
                if files.is_empty() {
                    return Err(Error::invalid(
                        &dir,
                        format!("class folder '{class}' has no images ({})", IMAGE_EXTENSIONS.join(", ")),
                    ));
                }
                files.sort();
                Ok(files)
            })
            .collect::<Result<_>>()?;
        let samples = per_class
            .into_iter()
            .enumerate()
            .flat_map(|(label, files)| files.into_iter().map(move |path| Sample { path, label }))
            .collect();

        let own = root.join(CLASSNAMES_FILE);
        let names_file = classnames.map(Path::to_path_buf).or_else(|| own.is_file().then_some(own));
        let class_names = match names_file {
            Some(file) => ClassNames::read(&file)?.names_for(&classes)?,
            None => classes.clone(),
        };
        Ok(Self { classes, class_names, samples })
    }

    /// A CSV manifest with a header naming (at least) the columns `path` and `label`.
    /// Relative paths are relative to the manifest's folder, and every file must exist.
    /// A label is a class key, a readable class name, or an integer class index, tried in
    /// that order.
    ///
    /// The classes come from `classnames` when given (in file order; `key<TAB>name` lines
    /// give keys and names). Otherwise they are the distinct labels, sorted numerically
    /// when all are integers (so `10` comes after `9`), else as text; then a label is its
    /// own class key.
    pub fn csv(manifest: &Path, classnames: Option<&Path>) -> Result<Self> {
        let rows = manifest_rows(manifest, "label")?;
        let (classes, class_names) = match classnames {
            Some(file) => ClassNames::read(file)?.classes(),
            None => {
                let classes = sorted_labels(rows.iter().map(|(_, _, l)| l.as_str()));
                (classes.clone(), classes)
            }
        };
        let by_key: HashMap<&str, usize> = classes.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
        let by_name: HashMap<&str, usize> =
            class_names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        let samples = rows
            .into_iter()
            .map(|(line, path, label)| {
                let index = by_key
                    .get(label.as_str())
                    .or_else(|| by_name.get(label.as_str()))
                    .copied()
                    .or_else(|| label.parse::<usize>().ok().filter(|&i| i < classes.len()));
                match index {
                    Some(label) => Ok(Sample { path, label }),
                    None => Err(Error::line(
                        manifest,
                        line,
                        format!(
                            "unknown label '{label}' (classes: {}; or an index below {})",
                            preview(&classes),
                            classes.len()
                        ),
                    )),
                }
            })
            .collect::<Result<_>>()?;
        Ok(Self { classes, class_names, samples })
    }

    /// A `path,caption` manifest (header required, paths relative to it) for contrastive
    /// pretraining: the images as a one-class dataset, and their captions in order.
    pub fn caption_manifest(manifest: &Path) -> Result<(Self, Vec<String>)> {
        let rows = manifest_rows(manifest, "caption")?;
        let samples = rows.iter().map(|(_, path, _)| Sample { path: path.clone(), label: 0 }).collect();
        let captions = rows.into_iter().map(|(_, _, c)| c).collect();
        let one = vec!["image".to_string()];
        Ok((Self { classes: one.clone(), class_names: one, samples }, captions))
    }

    /// Several datasets as one; classes are matched by readable name (the union, in order
    /// of first appearance), as when pretraining on several digit sources at once.
    pub fn concat(parts: &[Dataset]) -> Self {
        let mut class_names: Vec<String> = Vec::new();
        let mut samples = Vec::new();
        for part in parts {
            for s in &part.samples {
                let name = &part.class_names[s.label];
                let label = match class_names.iter().position(|c| c == name) {
                    Some(i) => i,
                    None => {
                        class_names.push(name.clone());
                        class_names.len() - 1
                    }
                };
                samples.push(Sample { path: s.path.clone(), label });
            }
        }
        Self { classes: class_names.clone(), class_names, samples }
    }

    /// Readable class names from a class-names file, or from a dataset folder / manifest.
    pub fn class_names_of(path: &Path) -> Result<Vec<String>> {
        let is_csv = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        if path.is_dir() || is_csv {
            return Ok(Self::open(path, None)?.class_names);
        }
        Ok(ClassNames::read(path)?.classes().1)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Samples per class, indexed like [`classes`](Self::classes).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for s in &self.samples {
            if let Some(c) = counts.get_mut(s.label) {
                *c += 1;
            }
        }
        counts
    }
}

/// Distinct labels, numerically sorted when every one is a non-negative integer.
fn sorted_labels<'a>(labels: impl Iterator<Item = &'a str>) -> Vec<String> {
    let unique: BTreeSet<&str> = labels.collect();
    let numbers: Option<BTreeSet<u64>> = unique.iter().map(|l| l.parse::<u64>().ok()).collect();
    match numbers {
        // Only when the text round-trips, so "007" and "7" stay two classes as written.
        Some(n) if n.len() == unique.len() && n.iter().all(|v| unique.contains(v.to_string().as_str())) => {
            n.iter().map(u64::to_string).collect()
        }
        _ => unique.into_iter().map(str::to_string).collect(),
    }
}

fn csv_error(manifest: &Path, e: csv::Error) -> Error {
    let msg = e.to_string();
    match (e.position().map(|p| p.line() as usize), e.into_kind()) {
        (_, csv::ErrorKind::Io(io)) => Error::io(manifest, io),
        (Some(line), _) => Error::line(manifest, line, msg),
        (None, _) => Error::invalid(manifest, msg),
    }
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        entries.push(entry.map_err(|e| Error::io(dir, e))?.path());
    }
    entries.sort();
    Ok(entries)
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| Error::invalid(path, "file name is not valid UTF-8"))
}

fn is_image(path: &Path) -> bool {
    let hidden = path.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.starts_with('.'));
    !hidden
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Image files below `dir`, recursively (following symlinks), hidden entries skipped.
fn collect_images(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    for path in read_dir_sorted(dir)? {
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
            continue;
        }
        if path.is_dir() {
            collect_images(&path, found)?;
        } else if is_image(&path) {
            found.push(path);
        }
    }
    Ok(())
}

/// `(line, path, value)` rows of a manifest with a header naming `path` and `column`;
/// every path (relative to the manifest) must exist.
fn manifest_rows(manifest: &Path, column: &str) -> Result<Vec<(usize, PathBuf, String)>> {
    let base = manifest.parent().unwrap_or(Path::new("."));
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_path(manifest)
        .map_err(|e| csv_error(manifest, e))?;
    let header = reader.headers().map_err(|e| csv_error(manifest, e))?.clone();
    let position = |name: &str| header.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(path_col), Some(value_col)) = (position("path"), position(column)) else {
        let found: Vec<String> = header.iter().map(str::to_string).collect();
        return Err(Error::line(
            manifest,
            1,
            format!("the header must name the columns 'path' and '{column}' (found: {})", found.join(", ")),
        ));
    };
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(manifest, e))?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let rel = record.get(path_col).unwrap_or_default();
        let value = record.get(value_col).unwrap_or_default();
        if rel.is_empty() {
            return Err(Error::line(manifest, line, "empty path"));
        }
        if value.is_empty() {
            return Err(Error::line(manifest, line, format!("empty {column}")));
        }
        let path = base.join(rel);
        if !path.is_file() {
            return Err(Error::line(manifest, line, format!("no such file: {}", path.display())));
        }
        rows.push((line, path, value.to_string()));
    }
    if rows.is_empty() {
        return Err(Error::invalid(
            manifest,
            format!("no samples (expected a header line, then one `path,{column}` row per image)"),
        ));
    }
    Ok(rows)
}
