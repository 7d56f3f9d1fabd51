//! Writing files so that a reader never sees half of one: data goes to a temporary file beside the
//! destination (same file system), is flushed to disk, and is renamed into place only when complete.

use std::io::Write;
use std::path::Path;

use crate::error::{MediaError, Result};

/// The folder `path` lives in (`.` for a bare file name).
pub(crate) fn containing_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Fails early, before minutes of generation, if nothing can be created next to `path`.
pub fn check_writable(path: &Path) -> Result<()> {
    let dir = containing_dir(path);
    if !dir.is_dir() {
        return Err(MediaError::Invalid(format!(
            "cannot write {}: folder {} does not exist; create it first",
            path.display(),
            dir.display()
        )));
    }
    if let Err(e) = tempfile::Builder::new()
        .prefix(".sorrel-probe")
        .tempfile_in(dir)
    {
        return Err(MediaError::Invalid(format!(
            "cannot write {}: folder {} is not writable ({e})",
            path.display(),
            dir.display()
        )));
    }
    if path.is_dir() {
        return Err(MediaError::Invalid(format!(
            "cannot write {}: a folder of that name is in the way",
            path.display()
        )));
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = containing_dir(path);
    let mut builder = tempfile::Builder::new();
    builder.prefix(".sorrel-").suffix(".tmp");
    // Temporary files are private (0600) by default; a finished video is an ordinary file (0644).
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    let mut tmp = builder
        .tempfile_in(dir)
        .map_err(|e| MediaError::io("cannot create a file in", dir, e))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| MediaError::io("cannot write", tmp.path(), e))?;
    tmp.persist(path)
        .map_err(|e| MediaError::io("cannot move the finished file to", path, e.error))?;
    Ok(())
}
