//! The checkpoints a merge reads: memory-mapped safetensors files, and the check that they
//! can be merged at all.
//!
//! wise-clip's `SafetensorsFile` maps files the same way; this one also lets the merge give
//! pages back ([`Input::release`]) once a chunk is done. Without that, every page of every
//! input stays mapped into the process until the end, and the resident set of a merge of
//! two 1.7 GB checkpoints grows to 3.4 GB even though the data is in the page cache
//! anyway. With it, the resident set stays a few chunks wide whatever the model size.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};

use crate::{Error, Result};

/// Marks a wise image-classifier checkpoint (`wise.kind`), as `wise_zeroshot` writes it.
pub const CLASSIFIER_KIND: &str = "image_classifier";

/// The classifier metadata keys that describe the model itself (not its history); a merged
/// classifier carries those of its first input, so `ImageClassifier::load` reads it.
pub const CLASSIFIER_KEYS: [&str; 8] = [
    "format",
    "wise.kind",
    "wise.class_names",
    "wise.templates",
    "wise.source_model",
    "wise.vision_config",
    "wise.projection_dim",
    "wise.preprocessing",
];

/// How far ahead of the merge each input is asked to be read ([`Input::read_ahead`]).
const READ_AHEAD: usize = 64 << 20;

/// How far behind a released range is released again ([`Input::release`]).
pub const RELEASE_BEHIND: usize = 2 << 20;

/// One memory-mapped safetensors file with its validated header.
pub struct Input {
    path: PathBuf,
    mmap: Mmap,
    /// Where tensor data starts: 8 (header length) + the header.
    data_start: usize,
    metadata: Metadata,
    /// The file offset up to which reading ahead has been requested.
    read_ahead_to: Cell<usize>,
}

impl Input {
    /// Maps `path` and validates its header (offsets inside the file, no gaps or overlaps,
    /// exact size), so a truncated or corrupt file is an error naming it, not a panic.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; like every mmap reader we rely on nobody
        // truncating the file while it is open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| Error::File {
            path: path.to_path_buf(),
            msg: format!("invalid safetensors: {e}"),
        })?;
        // Sequential access: the kernel reads ahead further on page faults.
        #[cfg(unix)]
        let _ = mmap.advise(memmap2::Advice::Sequential);
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            data_start: 8 + header_len,
            metadata,
            read_ahead_to: Cell::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the file in bytes.
    pub fn len(&self) -> usize {
        self.mmap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mmap.is_empty()
    }

    /// Tensor names in the order their data lies in the file.
    pub fn names_in_file_order(&self) -> Vec<String> {
        self.metadata.offset_keys()
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.metadata.info(name)
    }

    /// The header's `__metadata__` map.
    pub fn user_metadata(&self) -> Option<&HashMap<String, String>> {
        self.metadata.metadata().as_ref()
    }

    /// Bytes `range` (relative to the start of tensor `name`'s data).
    pub fn bytes(&self, name: &str, range: Range<usize>) -> Result<&[u8]> {
        let abs = self.absolute(name, range)?;
        Ok(&self.mmap[abs])
    }

    /// Lets the kernel drop the pages of `range` of tensor `name` from this process (they
    /// stay in the page cache). Reading them again afterwards is still correct: the map is
    /// file-backed and read-only, so a later access faults the same bytes back in.
    ///
    /// The [`RELEASE_BEHIND`] bytes before `range` are released again: a page fault maps a
    /// whole window of cached pages around the faulting address ("fault-around", whole
    /// large folios), including pages of the previous chunk that were already released.
    /// Without this, those re-mapped pages pile up, ~100 KB per chunk.
    pub fn release(&self, name: &str, range: Range<usize>) {
        #[cfg(unix)]
        if let Ok(abs) = self.absolute(name, range) {
            let start = abs.start.saturating_sub(RELEASE_BEHIND);
            // SAFETY: MADV_DONTNEED on a read-only, file-backed shared mapping only unmaps
            // pages; their content is the file's, so no borrow can observe a change.
            let _ = unsafe {
                self.mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, abs.end - start)
            };
        }
        #[cfg(not(unix))]
        let _ = (name, range);
    }

    /// Asks the kernel to start reading the next `READ_AHEAD` bytes after byte `upto` of
    /// tensor `name`, without waiting (`MADV_WILLNEED`). With a cold page cache this keeps
    /// the disk busy while the current chunk is being mixed, instead of stalling on a page
    /// fault at the start of every readahead window. Requests go out in half-window steps.
    pub fn read_ahead(&self, name: &str, upto: usize) {
        #[cfg(unix)]
        if let Ok(abs) = self.absolute(name, 0..upto) {
            let here = abs.end;
            let mut to = self.read_ahead_to.get();
            if to < here || to > here + 2 * READ_AHEAD {
                // First call, or the merge jumped (an input laid out in another order).
                to = here;
            }
            if to - here < READ_AHEAD / 2 {
                let end = (here + READ_AHEAD).min(self.mmap.len());
                if end > to {
                    let _ = self.mmap.advise_range(memmap2::Advice::WillNeed, to, end - to);
                }
                to = end;
            }
            self.read_ahead_to.set(to);
        }
        #[cfg(not(unix))]
        let _ = (name, upto);
    }

    fn absolute(&self, name: &str, range: Range<usize>) -> Result<Range<usize>> {
        let info = self.info(name).ok_or_else(|| self.bad(format!("no tensor named '{name}'")))?;
        let (start, end) = info.data_offsets;
        if range.start > range.end || range.end > end - start {
            return Err(self.bad(format!("tensor '{name}': byte range {range:?} out of bounds")));
        }
        Ok(self.data_start + start + range.start..self.data_start + start + range.end)
    }

    fn bad(&self, msg: String) -> Error {
        Error::File { path: self.path.clone(), msg }
    }

    /// The classifier's class names, if this is a wise classifier checkpoint.
    pub fn class_names(&self) -> Result<Option<Vec<String>>> {
        let Some(m) = self.user_metadata() else { return Ok(None) };
        if m.get("wise.kind").map(String::as_str) != Some(CLASSIFIER_KIND) {
            return Ok(None);
        }
        let raw =
            m.get("wise.class_names").ok_or_else(|| self.bad("metadata has no 'wise.class_names'".into()))?;
        let names =
            serde_json::from_str(raw).map_err(|e| self.bad(format!("metadata 'wise.class_names': {e}")))?;
        Ok(Some(names))
    }
}

/// What the inputs of a merge share: tensor names in the order of the first input's file,
/// with dtype and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub tensors: Vec<(String, Dtype, Vec<usize>)>,
    /// The class names when the inputs are wise classifiers.
    pub class_names: Option<Vec<String>>,
}

/// How many differences of one kind an error lists before "… and N more".
const LIST_AT_MOST: usize = 20;

/// Checks that the inputs hold the same tensors (names, shapes, dtypes) and, when they are
/// classifiers, the same classes in the same order; otherwise an error listing every
/// difference, each against the first input. Interpolating a head whose rows are different
/// classes, or in a different order, would silently mix unrelated classes.
pub fn check_compatible(inputs: &[Input]) -> Result<Layout> {
    let Some(first) = inputs.first() else {
        return Err(Error::Invalid("no input checkpoints".into()));
    };
    let names = first.names_in_file_order();
    let first_names: BTreeSet<&String> = names.iter().collect();
    let mut problems = Vec::new();
    let first_classes = first.class_names()?;
    for other in &inputs[1..] {
        let (a, b) = (first.path().display(), other.path().display());
        let other_names = other.names_in_file_order();
        let other_set: BTreeSet<&String> = other_names.iter().collect();
        list(&mut problems, &format!("tensors in {a} but not in {b}"), first_names.difference(&other_set));
        list(&mut problems, &format!("tensors in {b} but not in {a}"), other_set.difference(&first_names));
        let mut shapes = Vec::new();
        let mut dtypes = Vec::new();
        for name in first_names.intersection(&other_set) {
            let (Some(x), Some(y)) = (first.info(name), other.info(name)) else { continue };
            if x.shape != y.shape {
                shapes.push(format!("{name}: {:?} vs {:?}", x.shape, y.shape));
            }
            if x.dtype != y.dtype {
                dtypes.push(format!("{name}: {:?} vs {:?}", x.dtype, y.dtype));
            }
        }
        list(&mut problems, &format!("shapes differ ({a} vs {b})"), shapes.iter());
        list(&mut problems, &format!("dtypes differ ({a} vs {b})"), dtypes.iter());
        match (&first_classes, other.class_names()?) {
            (None, None) => {}
            (Some(_), None) => problems.push(format!("{a} is a wise classifier, {b} is not")),
            (None, Some(_)) => problems.push(format!("{b} is a wise classifier, {a} is not")),
            (Some(x), Some(y)) => class_differences(&mut problems, x, &y, &a.to_string(), &b.to_string()),
        }
        for key in ["wise.vision_config", "wise.projection_dim"] {
            let parse = |i: &Input| {
                i.user_metadata()
                    .and_then(|m| m.get(key))
                    .map(|v| serde_json::from_str::<serde_json::Value>(v).unwrap_or(v.clone().into()))
            };
            if first_classes.is_some() && parse(first) != parse(other) {
                problems.push(format!("metadata '{key}' differs between {a} and {b}"));
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::Incompatible { report: problems.join("\n") });
    }
    let tensors =
        names.iter().filter_map(|n| first.info(n).map(|i| (n.clone(), i.dtype, i.shape.clone()))).collect();
    Ok(Layout { tensors, class_names: first_classes })
}

fn class_differences(problems: &mut Vec<String>, x: &[String], y: &[String], a: &str, b: &str) {
    let xs: BTreeSet<&String> = x.iter().collect();
    let ys: BTreeSet<&String> = y.iter().collect();
    if xs != ys || x.len() != y.len() {
        list(problems, &format!("classes in {a} but not in {b}"), xs.difference(&ys));
        list(problems, &format!("classes in {b} but not in {a}"), ys.difference(&xs));
        if xs == ys {
            problems.push(format!("{a} has {} classes, {b} has {} (repeated names)", x.len(), y.len()));
        }
        return;
    }
    if let Some(i) = x.iter().zip(y).position(|(p, q)| p != q) {
        problems.push(format!(
            "same classes in a different order: class {i} is '{}' in {a} but '{}' in {b} \
             (the head's rows would mix different classes)",
            x[i], y[i]
        ));
    }
}

/// Appends "title (n):" and up to [`LIST_AT_MOST`] items, when there are any.
fn list<T: std::fmt::Display>(problems: &mut Vec<String>, title: &str, items: impl Iterator<Item = T>) {
    let items: Vec<String> = items.map(|i| i.to_string()).collect();
    if items.is_empty() {
        return;
    }
    let mut s = format!("{title} ({}):", items.len());
    for item in items.iter().take(LIST_AT_MOST) {
        s.push_str(&format!("\n  {item}"));
    }
    if items.len() > LIST_AT_MOST {
        s.push_str(&format!("\n  ... and {} more", items.len() - LIST_AT_MOST));
    }
    problems.push(s);
}

/// The Fisher files of a Fisher merge, one per input: each holds a subset of the model's
/// tensors, with the model's shapes; a tensor has a Fisher in every file or in none
/// (wise-ft asserts the same), and those without one are merged plainly.
pub fn check_fishers(fishers: &[Input], inputs: &[Input], layout: &Layout) -> Result<BTreeSet<String>> {
    if fishers.len() != inputs.len() {
        return Err(Error::Invalid(format!(
            "{} Fisher files for {} models: give one per model, in the same order",
            fishers.len(),
            inputs.len()
        )));
    }
    let shapes: BTreeMap<&str, (&Dtype, &Vec<usize>)> =
        layout.tensors.iter().map(|(n, d, s)| (n.as_str(), (d, s))).collect();
    let mut problems = Vec::new();
    let mut covered: Option<BTreeSet<String>> = None;
    for (f, model) in fishers.iter().zip(inputs) {
        let names: BTreeSet<String> = f.names_in_file_order().into_iter().collect();
        let mut unknown = Vec::new();
        let mut wrong = Vec::new();
        for name in &names {
            let Some(info) = f.info(name) else { continue };
            match shapes.get(name.as_str()) {
                None => unknown.push(name.clone()),
                Some((_, shape)) if **shape != info.shape => {
                    wrong.push(format!("{name}: Fisher {:?}, model {:?}", info.shape, shape))
                }
                Some((dtype, _)) if !crate::mix::is_mixable(**dtype) => {
                    wrong.push(format!("{name}: the model's tensor is {dtype:?}, which is not merged"))
                }
                Some(_) if !crate::mix::is_mixable(info.dtype) => {
                    wrong.push(format!("{name}: Fisher dtype {:?} is not a float", info.dtype))
                }
                Some(_) => {}
            }
        }
        let p = f.path().display();
        list(
            &mut problems,
            &format!("{p}: tensors that {} does not have", model.path().display()),
            unknown.iter(),
        );
        list(&mut problems, &format!("{p}: tensors that do not fit the model"), wrong.iter());
        match &covered {
            None => covered = Some(names),
            Some(first) if *first != names => {
                let f0 = fishers[0].path().display();
                list(&mut problems, &format!("Fisher in {f0} but not in {p}"), first.difference(&names));
                list(&mut problems, &format!("Fisher in {p} but not in {f0}"), names.difference(first));
            }
            Some(_) => {}
        }
    }
    if !problems.is_empty() {
        return Err(Error::Incompatible { report: problems.join("\n") });
    }
    Ok(covered.unwrap_or_default())
}
