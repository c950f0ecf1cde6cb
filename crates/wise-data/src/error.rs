//! One error type for the crate. Datasets are files written by people and other tools, so
//! every variant that comes from a file names it, and a problem on one line of a text file
//! names the line: a user with a typo in line 5,123 of a manifest should not have to bisect.

use std::path::{Path, PathBuf};

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A problem with one line of a text file (manifest, class names, raw dataset rows).
    /// `line` counts from 1, as editors do.
    #[error("{}:{line}: {msg}", path.display())]
    Line { path: PathBuf, line: usize, msg: String },

    /// A problem with a file or folder as a whole (a bad header, a missing class folder, an
    /// empty class, an unexpected layout).
    #[error("{}: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },

    /// An image that does not decode or preprocess; the message comes from wise-clip and
    /// names the file.
    #[error(transparent)]
    Image(#[from] wise_clip::Error),

    /// Refused settings (a batch size of 0, an unknown dataset name).
    #[error("{0}")]
    Config(String),

    /// The loader's background thread stopped without finishing (a bug, not bad data).
    #[error("data loader: {0}")]
    Loader(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub fn line(path: &Path, line: usize, msg: impl Into<String>) -> Self {
        Error::Line { path: path.to_path_buf(), line, msg: msg.into() }
    }

    pub fn invalid(path: &Path, msg: impl Into<String>) -> Self {
        Error::Invalid { path: path.to_path_buf(), msg: msg.into() }
    }
}
