//! A folder of numbered PNG files, one per frame.

use std::fs;
use std::path::{Path, PathBuf};

use crate::apng::encode_png;
use crate::atomic::containing_dir;
use crate::clip::Clip;
use crate::error::{MediaError, Result};

/// Where the frames go: `dir/<prefix><number, `digits` wide><suffix>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PngSequence {
    /// The folder (created if missing).
    pub dir: PathBuf,
    /// File name before the number.
    pub prefix: String,
    /// Zero-padded width of the number.
    pub digits: usize,
    /// File name after the number.
    pub suffix: String,
}

impl PngSequence {
    /// `dir/frame_0000.png`, `dir/frame_0001.png`, ...
    pub fn in_folder(dir: &Path) -> Self {
        PngSequence {
            dir: dir.to_path_buf(),
            prefix: "frame_".into(),
            digits: 4,
            suffix: ".png".into(),
        }
    }

    /// A printf-style pattern such as `out/clip_%04d.png` (`%d`: no padding); `None` without `%..d`.
    pub fn from_pattern(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_string_lossy().to_string();
        let start = name.find('%')?;
        let rest = &name[start + 1..];
        let end = rest.find('d')?;
        let width = &rest[..end];
        let digits = if width.is_empty() {
            1
        } else {
            width.trim_start_matches('0').parse().ok()?
        };
        Some(PngSequence {
            dir: containing_dir(path).to_path_buf(),
            prefix: name[..start].to_string(),
            digits,
            suffix: rest[end + 1..].to_string(),
        })
    }

    /// The file name of frame `i`.
    pub fn name(&self, i: usize) -> String {
        format!("{}{i:0w$}{}", self.prefix, self.suffix, w = self.digits)
    }

    /// Writes every frame into a staging folder beside `dir`, then moves the files in: a failure
    /// midway leaves nothing at the destination.
    pub(crate) fn write(&self, clip: &Clip) -> Result<Vec<PathBuf>> {
        if self.dir.exists() && !self.dir.is_dir() {
            return Err(MediaError::Invalid(format!(
                "cannot write a PNG sequence into {}: it is a file, not a folder",
                self.dir.display()
            )));
        }
        let parent = containing_dir(&self.dir);
        let stage = tempfile::Builder::new()
            .prefix(".sorrel-frames-")
            .tempdir_in(parent)
            .map_err(|e| MediaError::io("cannot create a staging folder in", parent, e))?;
        let mut names = Vec::with_capacity(clip.len());
        for (i, frame) in clip.frames().iter().enumerate() {
            let name = self.name(i);
            let path = stage.path().join(&name);
            fs::write(&path, encode_png(frame)?)
                .map_err(|e| MediaError::io("cannot write", path, e))?;
            names.push(name);
        }
        fs::create_dir_all(&self.dir).map_err(|e| MediaError::io("cannot create", &self.dir, e))?;
        let mut written = Vec::with_capacity(names.len());
        for name in names {
            let dst = self.dir.join(&name);
            fs::rename(stage.path().join(&name), &dst)
                .map_err(|e| MediaError::io("cannot move a frame to", &dst, e))?;
            written.push(dst);
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = PngSequence::from_pattern(Path::new("out/clip_%04d.png")).unwrap();
        assert_eq!(
            (p.prefix.as_str(), p.digits, p.suffix.as_str()),
            ("clip_", 4, ".png")
        );
        assert_eq!(p.dir, Path::new("out"));
        assert_eq!(p.name(7), "clip_0007.png");
        assert_eq!(
            PngSequence::from_pattern(Path::new("f%d.png"))
                .unwrap()
                .name(12),
            "f12.png"
        );
        assert!(PngSequence::from_pattern(Path::new("clip.png")).is_none());
    }
}
