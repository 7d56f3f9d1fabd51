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
        let dir = Self {
            root: root.to_path_buf(),
        };
        dir.sweep_removals();
        Ok(dir)
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
        remove_tree(&self.input_dir(id))
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
        remove_tree(&self.job_dir(id))
    }

    /// Finishes removals a crash interrupted (see [`remove_tree`]).
    fn sweep_removals(&self) {
        for parent in ["videos", "inputs"] {
            let Ok(entries) = std::fs::read_dir(self.root.join(parent)) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(REMOVING) {
                    if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                        tracing::warn!("cannot remove {}: {e}", entry.path().display());
                    }
                }
            }
        }
    }
}

/// The name prefix of a folder being removed.
const REMOVING: &str = ".removing-";

/// Removes folder `dir` and everything in it; a missing one is fine.
///
/// The folder is first renamed out of the way (atomic), then emptied. Removing it in place races with a
/// worker still writing there (a job deleted just as a worker claimed it): a file created between
/// `remove_dir_all`'s listing and its final `rmdir` makes that fail with "directory not empty", and the
/// delete answered 500 (seen on PostgreSQL in CI). After the rename, files the worker creates by path land
/// in a new folder, which it removes itself when it finds its job gone.
fn remove_tree(dir: &Path) -> Result<(), StoreError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = dir
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy());
    let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let doomed = dir.with_file_name(format!("{REMOVING}{name}-{}-{unique}", std::process::id()));
    match std::fs::rename(dir, &doomed) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    }
    std::fs::remove_dir_all(&doomed).map_err(|source| StoreError::Io {
        path: doomed,
        source,
    })
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

#[cfg(test)]
mod tests {
    use super::DataDir;

    /// A job deleted while its worker writes into its folder: every removal succeeds (before the folder was
    /// renamed out of the way, one failed now and then with "directory not empty" and the delete answered 500).
    #[test]
    fn a_folder_is_removed_while_a_worker_writes_into_it() {
        let root = tempfile::tempdir().unwrap();
        let data = DataDir::create(root.path()).unwrap();
        let id = "video_0123456789abcdef0123456789abcdef";
        let dir = data.job_dir(id);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (dir, stop) = (dir.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // As a worker does: the folder, then files in it by path; either may find it gone.
                    let _ = std::fs::create_dir_all(&dir);
                    let _ = std::fs::write(dir.join(format!("f{}", n % 16)), b"frame");
                    n += 1;
                }
            })
        };
        while !dir.exists() {
            std::thread::yield_now();
        }
        let failures: Vec<String> = (0..300)
            .filter_map(|_| data.remove_job(id).err().map(|e| e.to_string()))
            .collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        assert!(
            failures.is_empty(),
            "{} of 300 failed: {:?}",
            failures.len(),
            failures.first()
        );
        data.remove_job(id).unwrap();
        // Nothing is left behind under a temporary name, and the job's folder is gone.
        let left: Vec<_> = std::fs::read_dir(root.path().join("videos"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// A removal a crash interrupted is finished when the data folder is next opened.
    #[test]
    fn an_interrupted_removal_is_finished_at_start() {
        let root = tempfile::tempdir().unwrap();
        let doomed = root.path().join("videos/.removing-video_x-1-0");
        std::fs::create_dir_all(doomed.join("sub")).unwrap();
        std::fs::write(doomed.join("sub/video.mp4"), b"x").unwrap();
        let kept = root
            .path()
            .join("videos/video_0123456789abcdef0123456789abcdef");
        std::fs::create_dir_all(&kept).unwrap();
        DataDir::create(root.path()).unwrap();
        assert!(!doomed.exists());
        assert!(kept.exists());
    }
}
