//! Errors of the provenance layer; each says what was wrong and what to do.

use std::path::PathBuf;

/// What can go wrong signing or reading content credentials.
#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    /// A certificate, key or credentials file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The signing identity is unusable; the message names the fix.
    #[error("{0}")]
    Identity(String),
    /// This kind of file cannot carry a C2PA manifest.
    #[error("{0}")]
    Unsupported(String),
    /// The C2PA library refused.
    #[error("C2PA: {0}")]
    C2pa(#[from] c2pa::Error),
}

/// Result with [`ProvenanceError`].
pub type Result<T> = std::result::Result<T, ProvenanceError>;

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ProvenanceError + '_ {
    move |source| ProvenanceError::Io {
        path: path.to_path_buf(),
        source,
    }
}
