//! Class names: the keys a dataset stores its classes under (folder names, manifest labels)
//! and the readable names CLIP's prompts are built from ("a photo of a {name}").
//!
//! A zero-shot head is only as good as its class names: a folder called `3` or `n01440764`
//! makes a poor prompt. A `classnames.txt` gives the readable names, one class per line, in
//! one of two forms (the whole file uses one):
//!
//! - `name`: line *i* names the *i*-th class in sorted key order, so the file must have
//!   exactly as many lines as the dataset has classes;
//! - `key<TAB>name`: maps a key to a readable name, e.g. `3\tthree`, in any order; every
//!   key must be a class of the dataset and every class must have a line, so a typo is an
//!   error instead of a class silently keeping its folder name.
//!
//! Blank lines are skipped. A repeated key or name is an error naming the line: two classes
//! with one readable name would get the same text embedding. Readable names are also what
//! matches classes across datasets (MNIST's `three` is USPS's `three`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The usual file name; [`Dataset::open`](crate::Dataset::open) picks it up from an
/// ImageFolder root, and importers write it.
pub const CLASSNAMES_FILE: &str = "classnames.txt";

/// A parsed class-names file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassNames {
    path: PathBuf,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// 1-based line in the file, for error messages.
    line: usize,
    /// `Some` in the `key<TAB>name` form.
    key: Option<String>,
    name: String,
}

impl ClassNames {
    /// Reads and parses `path` (UTF-8).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            Error::invalid(path, format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
        })?;
        Self::parse(path, &text)
    }

    /// Parses the text of a class-names file; `path` is only used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut entries: Vec<Entry> = Vec::new();
        let mut keyed: Option<(bool, usize)> = None; // (form, line that set it)
        let mut seen_keys: HashMap<String, usize> = HashMap::new();
        let mut seen_names: HashMap<String, usize> = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            if raw.trim().is_empty() {
                continue;
            }
            let (key, name) = match raw.split_once('\t') {
                Some((k, n)) => (Some(k.trim().to_string()), n.trim().to_string()),
                None => (None, raw.trim().to_string()),
            };
            let is_keyed = key.is_some();
            match keyed {
                None => keyed = Some((is_keyed, line)),
                Some((form, first)) if form != is_keyed => {
                    let (this, that) =
                        if is_keyed { ("key<TAB>name", "name") } else { ("name", "key<TAB>name") };
                    return Err(Error::line(
                        path,
                        line,
                        format!("this line is `{this}` but line {first} is `{that}`; use one form for the whole file"),
                    ));
                }
                Some(_) => {}
            }
            if let Some(k) = &key {
                if k.is_empty() {
                    return Err(Error::line(path, line, "empty class key before the tab"));
                }
                if name.contains('\t') {
                    return Err(Error::line(path, line, "more than one tab (expected key<TAB>name)"));
                }
                if let Some(prev) = seen_keys.insert(k.clone(), line) {
                    return Err(Error::line(
                        path,
                        line,
                        format!("class '{k}' is already named on line {prev}"),
                    ));
                }
            }
            if name.is_empty() {
                return Err(Error::line(path, line, "empty class name"));
            }
            if let Some(prev) = seen_names.insert(name.clone(), line) {
                return Err(Error::line(
                    path,
                    line,
                    format!(
                        "name '{name}' is already used on line {prev}: two classes would get the same prompt"
                    ),
                ));
            }
            entries.push(Entry { line, key, name });
        }
        if entries.is_empty() {
            return Err(Error::invalid(path, "no class names (expected one class per line)"));
        }
        Ok(Self { path: path.to_path_buf(), entries })
    }

    /// The file these names came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of classes the file names.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Never true for a parsed file (an empty one is an error); here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the file uses the `key<TAB>name` form.
    pub fn is_keyed(&self) -> bool {
        self.entries.first().is_some_and(|e| e.key.is_some())
    }

    /// Readable names for a dataset whose classes are `keys` (sorted, as found on disk), in
    /// that order. Errors say which line or which class does not fit.
    pub fn names_for(&self, keys: &[String]) -> Result<Vec<String>> {
        if !self.is_keyed() {
            if self.entries.len() != keys.len() {
                return Err(Error::invalid(
                    &self.path,
                    format!(
                        "{} class names for {} classes ({}); with one name per line, line i names the \
                         i-th class in sorted order",
                        self.entries.len(),
                        keys.len(),
                        preview(keys)
                    ),
                ));
            }
            return Ok(self.entries.iter().map(|e| e.name.clone()).collect());
        }
        let index: HashMap<&str, usize> = keys.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
        let mut names: Vec<Option<String>> = vec![None; keys.len()];
        for entry in &self.entries {
            let key = entry.key.as_deref().unwrap_or_default();
            let Some(&i) = index.get(key) else {
                return Err(Error::line(
                    &self.path,
                    entry.line,
                    format!("no class '{key}' in the dataset (classes: {})", preview(keys)),
                ));
            };
            names[i] = Some(entry.name.clone());
        }
        keys.iter()
            .zip(names)
            .map(|(key, name)| {
                name.ok_or_else(|| {
                    Error::invalid(&self.path, format!("class '{key}' has no line (key<TAB>name)"))
                })
            })
            .collect()
    }

    /// `(keys, names)` when the file itself is the class list (a CSV manifest with a
    /// class-names file): in file order; in the `name` form each name is its own key.
    pub fn classes(&self) -> (Vec<String>, Vec<String>) {
        let names: Vec<String> = self.entries.iter().map(|e| e.name.clone()).collect();
        let keys = self
            .entries
            .iter()
            .zip(&names)
            .map(|(e, n)| e.key.clone().unwrap_or_else(|| n.clone()))
            .collect();
        (keys, names)
    }
}

/// Writes a class-names file for `keys` → `names`: the short `name` form when every name is
/// its key, else `key<TAB>name` lines. Keys and names must be non-empty single-line text
/// without tabs.
pub fn write_classnames(path: &Path, keys: &[String], names: &[String]) -> Result<()> {
    if keys.len() != names.len() {
        return Err(Error::Config(format!("{} class keys but {} names", keys.len(), names.len())));
    }
    let bad = |s: &str| s.trim().is_empty() || s.trim() != s || s.contains(['\t', '\n', '\r']);
    if let Some(s) = keys.iter().chain(names).find(|s| bad(s)) {
        return Err(Error::invalid(path, format!("cannot write class '{s}': empty, padded or multi-line")));
    }
    let plain = keys == names;
    let mut text = String::new();
    for (key, name) in keys.iter().zip(names) {
        if plain {
            text.push_str(name);
        } else {
            text.push_str(key);
            text.push('\t');
            text.push_str(name);
        }
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// The first few items of a list, for messages about long class lists.
pub(crate) fn preview(items: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut s = items.iter().take(SHOWN).map(String::as_str).collect::<Vec<_>>().join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(", … ({} in all)", items.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClassNames> {
        ClassNames::parse(Path::new("classnames.txt"), text)
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plain_names_follow_sorted_key_order() {
        let names = parse("airplane\r\nautomobile\n\nbird\n").unwrap();
        assert!(!names.is_keyed());
        assert_eq!(
            names.names_for(&strings(&["a", "b", "c"])).unwrap(),
            strings(&["airplane", "automobile", "bird"])
        );
        let err = names.names_for(&strings(&["a", "b"])).unwrap_err().to_string();
        assert!(err.contains("3 class names for 2 classes"), "{err}");
    }

    #[test]
    fn keyed_names_map_keys_in_any_order() {
        let names = parse("\u{feff}1\tone\n0\tzero\n").unwrap();
        assert!(names.is_keyed());
        assert_eq!(names.names_for(&strings(&["0", "1"])).unwrap(), strings(&["zero", "one"]));
        assert_eq!(names.classes(), (strings(&["1", "0"]), strings(&["one", "zero"])));
        let err = names.names_for(&strings(&["0", "2"])).unwrap_err().to_string();
        assert!(err.contains("classnames.txt:1:") && err.contains("no class '1'"), "{err}");
        let err = names.names_for(&strings(&["0", "1", "2"])).unwrap_err().to_string();
        assert!(err.contains("class '2' has no line"), "{err}");
    }

    #[test]
    fn duplicates_and_mixed_forms_name_the_line() {
        let err = parse("zero\none\nzero\n").unwrap_err().to_string();
        assert!(err.starts_with("classnames.txt:3:") && err.contains("line 1"), "{err}");
        let err = parse("0\tzero\n0\tnil\n").unwrap_err().to_string();
        assert!(err.starts_with("classnames.txt:2:") && err.contains("'0'"), "{err}");
        let err = parse("0\tzero\n1\tzero\n").unwrap_err().to_string();
        assert!(err.starts_with("classnames.txt:2:"), "{err}");
        let err = parse("0\tzero\none\n").unwrap_err().to_string();
        assert!(err.starts_with("classnames.txt:2:"), "{err}");
        let err = parse("0\t\n").unwrap_err().to_string();
        assert!(err.contains("empty class name"), "{err}");
        assert!(parse("\n  \n").is_err());
    }

    #[test]
    fn write_then_read_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CLASSNAMES_FILE);
        let keys = strings(&["0", "1"]);
        write_classnames(&path, &keys, &strings(&["zero", "one"])).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "0\tzero\n1\tone\n");
        assert_eq!(ClassNames::read(&path).unwrap().names_for(&keys).unwrap(), strings(&["zero", "one"]));
        write_classnames(&path, &keys, &keys).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "0\n1\n");
        assert!(write_classnames(&path, &keys, &strings(&["a\tb", "c"])).is_err());
    }
}
