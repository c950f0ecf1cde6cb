//! One error type for the crate. Every error that comes from a file names it: a corrupt JPEG
//! among 10,000 test images should not need a bisection to find.

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

    /// A problem with a file or folder as a whole (an output folder that is not empty, two
    /// images that would be written to the same PNG).
    #[error("{}: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },

    /// An image that does not decode; the message comes from wise-clip and names the file.
    #[error(transparent)]
    Image(#[from] wise_clip::Error),

    /// A dataset that cannot be opened (no class folders, an empty class, a bad
    /// `classnames.txt`); the message names the file or folder.
    #[error(transparent)]
    Data(#[from] wise_data::Error),

    /// Refused settings: an unknown corruption name, a severity outside 1..5, an empty image.
    #[error("{0}")]
    Config(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub fn invalid(path: &Path, msg: impl Into<String>) -> Self {
        Error::Invalid { path: path.to_path_buf(), msg: msg.into() }
    }
}
