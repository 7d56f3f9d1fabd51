//! Training Sorrel's own models (the embedded default): the optimiser, the weight average that is
//! shipped, and checkpoints that let a long run stop and continue exactly where it was.
//!
//! candle-nn has an AdamW, but its moments are private, so a run could not be resumed without restarting
//! the optimiser; this one keeps its state in named tensors that a checkpoint saves and restores.

pub mod adamw;
pub mod checkpoint;
pub mod ema;
pub mod toyworld;

pub use adamw::{AdamW, AdamWConfig};
pub use checkpoint::{load_checkpoint, save_checkpoint, Checkpoint};
pub use ema::Ema;

/// What can go wrong while training or checkpointing.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A checkpoint could not be read or written.
    #[error("checkpoint {path}: {why}")]
    Checkpoint {
        /// The file.
        path: std::path::PathBuf,
        /// What was wrong, and what to do.
        why: String,
    },
    /// A file of the run could not be read or written.
    #[error("{path}: {why}")]
    Io {
        /// The file or folder.
        path: std::path::PathBuf,
        /// What went wrong.
        why: String,
    },
    /// A setting or input is unusable; the message says what to change.
    #[error("{0}")]
    Invalid(String),
}

impl TrainError {
    /// A failed read or write of `path`.
    pub fn io(path: &std::path::Path, why: impl std::fmt::Display) -> Self {
        TrainError::Io {
            path: path.to_path_buf(),
            why: why.to_string(),
        }
    }
}

/// Result with [`TrainError`].
pub type Result<T> = std::result::Result<T, TrainError>;
