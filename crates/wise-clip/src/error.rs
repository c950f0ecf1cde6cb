//! One error type for the crate. Every variant that comes from a file names it, so a user
//! with a corrupt checkpoint or image sees *which* file and *why*.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: invalid config: {msg}", path.display())]
    Config { path: PathBuf, msg: String },

    #[error("{}: cannot read image: {msg}", path.display())]
    Image { path: PathBuf, msg: String },

    #[error("{}: invalid safetensors: {msg}", path.display())]
    Safetensors { path: PathBuf, msg: String },

    /// Missing, unexpected or mis-shaped tensors, all of them at once.
    #[error("{source_name}: checkpoint does not match the model:\n{report}")]
    Weights { source_name: String, report: String },

    #[error("tokenizer {source_name}: {msg}")]
    Tokenizer { source_name: String, msg: String },

    #[error("model '{id}' from the Hugging Face hub: {msg}")]
    Hub { id: String, msg: String },

    #[error("{0}")]
    Invalid(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
