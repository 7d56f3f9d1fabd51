//! The one error type of this crate. Every message names what was wrong and what to do about it.

use std::path::PathBuf;

/// What can go wrong reading or writing media.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The frames handed in cannot be written as asked (no frames, sizes that differ, odd sizes for a
    /// 4:2:0 codec, a frame rate out of range, ...).
    #[error("{0}")]
    Invalid(String),
    /// The file name asks for a format this crate does not write or read.
    #[error("{0}")]
    Unsupported(String),
    /// A file could not be read, created or moved into place.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done ("cannot create", ...).
        what: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// An encoder, decoder or container library refused the data.
    #[error("{codec}: {message}")]
    Codec {
        /// Which library or format ("H.264 encoder", "MP4 muxer", ...).
        codec: &'static str,
        /// Its message.
        message: String,
    },
}

impl MediaError {
    pub(crate) fn codec(codec: &'static str, e: impl std::fmt::Display) -> Self {
        MediaError::Codec {
            codec,
            message: e.to_string(),
        }
    }

    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MediaError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// This crate's result type.
pub type Result<T, E = MediaError> = std::result::Result<T, E>;
