//! The error type of the library crates: every variant says what was wrong and what to do about it.

use std::path::PathBuf;

/// Errors raised while loading or running models.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A model folder lacks something it must have, or holds something malformed.
    #[error("{0}")]
    Model(String),
    /// A request (size, frames, option) the model cannot honour.
    #[error("{0}")]
    Invalid(String),
    /// The caller's frame sink could not take the frames (encoding or writing them failed).
    #[error("{0}")]
    Output(String),
    /// The caller's progress callback asked to stop.
    #[error("cancelled")]
    Cancelled,
    /// An error from candle, with no more context available.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A model-folder problem, formatted by the caller.
    pub fn model(msg: impl Into<String>) -> Self {
        Error::Model(msg.into())
    }
    /// A request the model cannot honour, formatted by the caller.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}
