//! Every failure names the file it concerns, so a message printed by `wise plot` alone says
//! what to fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },

    /// A line that is not a results record: bad JSON, a missing or mistyped key.
    #[error("{}:{line}: {message}", path.display())]
    Parse { path: PathBuf, line: usize, message: String },

    /// No record of the file has the reference dataset (often a misspelt `--reference`).
    #[error(
        "{} has no results for the reference dataset '{reference}'; {}",
        path.display(),
        present_list(present)
    )]
    NoReference { path: PathBuf, reference: String, present: Vec<String> },

    /// A requested shifted dataset that no record has.
    #[error(
        "{} has no results for the shifted dataset '{shift}'; {}",
        path.display(),
        present_list(present)
    )]
    UnknownShift { path: PathBuf, shift: String, present: Vec<String> },

    /// The shift list is empty, or names the reference itself.
    #[error("{}: {message}", path.display())]
    BadShifts { path: PathBuf, message: String },

    /// Every record lacks the reference or one of the shifted datasets.
    #[error(
        "{}: no model was evaluated on '{reference}' and all of {}; {}",
        path.display(),
        shifts.join(", "),
        skipped.join("; ")
    )]
    NothingToPlot { path: PathBuf, reference: String, shifts: Vec<String>, skipped: Vec<String> },

    /// The output's extension is neither `.png` nor `.svg`.
    #[error("{}: unsupported figure format; use a .png or .svg file name", path.display())]
    UnsupportedFormat { path: PathBuf },

    /// plotters failed while drawing (it reports font and backend problems here).
    #[error("drawing {}: {message}", path.display())]
    Draw { path: PathBuf, message: String },

    #[error("writing {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

fn present_list(present: &[String]) -> String {
    if present.is_empty() {
        "it has no dataset results at all".to_string()
    } else {
        format!("datasets present: {}", present.join(", "))
    }
}

pub type Result<T> = std::result::Result<T, ReportError>;
