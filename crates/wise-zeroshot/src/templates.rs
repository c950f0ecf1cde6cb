//! Prompt templates: how a class name becomes the texts whose embeddings form its head row.

use std::path::Path;

use wise_clip::{Error, Result};

/// The 80 prompts of CLIP's ImageNet prompt-engineering notebook, as wise-ft and open_clip use them.
const OPENAI_IMAGENET: &str = include_str!("../templates/openai_imagenet.txt");

/// Named template sets shipped with wise.
pub const NAMED: [&str; 2] = ["openai_imagenet", "simple"];

/// Prompt templates, each containing one `{}` where the class name goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Templates {
    /// A set name, or the file the templates came from.
    pub name: String,
    pub items: Vec<String>,
}

impl Templates {
    /// A named set (`openai_imagenet`, `simple`) or, failing that, a file with one
    /// template per line (blank lines and lines starting with `#` are skipped).
    pub fn resolve(name_or_file: &str) -> Result<Self> {
        match name_or_file {
            "openai_imagenet" => Self::parse("openai_imagenet", OPENAI_IMAGENET),
            "simple" => Ok(Self { name: "simple".into(), items: vec!["a photo of a {}.".into()] }),
            path if Path::new(path).exists() => {
                let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
                Self::parse(path, &text)
            }
            other => Err(Error::Invalid(format!(
                "templates '{other}': neither a named set ({}) nor an existing file",
                NAMED.join(", ")
            ))),
        }
    }

    fn parse(name: &str, text: &str) -> Result<Self> {
        let mut items = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            if line.matches("{}").count() != 1 {
                return Err(Error::Invalid(format!(
                    "{name}:{}: a template needs exactly one {{}} for the class name: '{line}'",
                    i + 1
                )));
            }
            items.push(line.to_string());
        }
        if items.is_empty() {
            return Err(Error::Invalid(format!("{name}: no templates")));
        }
        Ok(Self { name: name.to_string(), items })
    }

    /// Every template filled with `class_name`.
    pub fn fill(&self, class_name: &str) -> Vec<String> {
        self.items.iter().map(|t| t.replacen("{}", class_name, 1)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_sets() {
        let t = Templates::resolve("openai_imagenet").unwrap();
        assert_eq!(t.items.len(), 80);
        assert_eq!(t.fill("cat")[0], "a bad photo of a cat.");
        assert_eq!(Templates::resolve("simple").unwrap().fill("dog"), ["a photo of a dog."]);
    }

    #[test]
    fn file_templates_and_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("t.txt");
        std::fs::write(&good, "# digits\nan image of the digit {}\n\nhandwritten {}.\n").unwrap();
        let t = Templates::resolve(good.to_str().unwrap()).unwrap();
        assert_eq!(t.fill("7"), ["an image of the digit 7", "handwritten 7."]);

        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, "a photo of {}\na photo\n").unwrap();
        let err = Templates::resolve(bad.to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains("bad.txt:2") && err.contains("'a photo'"), "{err}");

        let err = Templates::resolve("no_such_set").unwrap_err().to_string();
        assert!(err.contains("no_such_set") && err.contains("openai_imagenet"), "{err}");
    }
}
