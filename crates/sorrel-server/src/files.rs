//! The data folder: `jobs.db`, `sorrel.lock`, and one folder per video under `videos/<id>/` holding
//! `video.mp4`, `thumbnail.webp`, `spritesheet.jpg` and `log.txt`.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::StoreError;
use crate::job::is_valid_id;

/// Paths inside the data folder.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Creates the folder (and `videos/`) if needed.
    pub fn create(root: &Path) -> Result<Self, StoreError> {
        let videos = root.join("videos");
        std::fs::create_dir_all(&videos).map_err(|source| StoreError::Io {
            path: videos.clone(),
            source,
        })?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// The data folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The job database.
    pub fn database(&self) -> PathBuf {
        self.root.join("jobs.db")
    }

    /// The lock file that keeps a second server off this folder.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("sorrel.lock")
    }

    /// A job's folder. Only ever called with ids that passed [`is_valid_id`].
    pub fn job_dir(&self, id: &str) -> PathBuf {
        assert!(
            is_valid_id(id),
            "job ids are validated before they reach the file system"
        );
        self.root.join("videos").join(id)
    }

    /// Where a job's uploaded inputs live: apart from its output folder, which each attempt empties.
    pub fn input_dir(&self, id: &str) -> PathBuf {
        assert!(
            is_valid_id(id),
            "job ids are validated before they reach the file system"
        );
        self.root.join("inputs").join(id)
    }

    /// Removes everything a job has on disk: its outputs and its inputs.
    pub fn remove_job(&self, id: &str) -> Result<(), StoreError> {
        self.remove_job_dir(id)?;
        let dir = self.input_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io { path: dir, source }),
        }
    }

    /// Empties and recreates a job's folder, so a retried job never serves a file from an earlier attempt.
    pub fn fresh_job_dir(&self, id: &str) -> Result<PathBuf, StoreError> {
        let dir = self.job_dir(id);
        self.remove_job_dir(id)?;
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(dir)
    }

    /// Removes a job's folder; a missing one is fine.
    pub fn remove_job_dir(&self, id: &str) -> Result<(), StoreError> {
        let dir = self.job_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io { path: dir, source }),
        }
    }
}

/// A job's log file: one timestamped line per event.
pub struct JobLog {
    file: Option<std::fs::File>,
}

impl JobLog {
    /// Appends to `dir/log.txt`; if it cannot be opened, logging is skipped (it must never fail a job).
    pub fn open(dir: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("log.txt"))
            .map_err(|e| tracing::warn!("cannot open job log in {}: {e}", dir.display()))
            .ok();
        Self { file }
    }

    /// Writes one line.
    pub fn line(&mut self, msg: &str) {
        if let Some(f) = &mut self.file {
            let _ = writeln!(f, "{} {msg}", crate::job::now());
        }
    }
}
