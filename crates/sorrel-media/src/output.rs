//! Choosing a writer from the output path, and writing a clip there atomically.

use std::path::{Path, PathBuf};

use crate::clip::Clip;
use crate::error::{MediaError, Result};
use crate::options::{EncodeOptions, VideoCodec};
use crate::png_sequence::PngSequence;
use crate::{apng, atomic, gif, mp4, webm, webp};

/// A file format this crate writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// `.mp4`: H.264 by default, AV1 with [`VideoCodec::Av1`].
    Mp4,
    /// `.webm`: AV1.
    Webm,
    /// `.gif`: 256 colours per frame, centisecond delays.
    Gif,
    /// `.png` / `.apng`: animated PNG, lossless (a plain PNG for one frame).
    Apng,
    /// `.webp`: animated WebP.
    WebP,
    /// A folder (or `%04d.png` pattern) of PNG files.
    PngSequence(PngSequence),
}

impl Format {
    /// The format `path` asks for: by extension, or a PNG sequence for a folder, a path ending in `/`,
    /// a name without extension, or a `name_%04d.png` pattern.
    pub fn from_path(path: &Path) -> Result<Self> {
        let s = path.to_string_lossy();
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        if s.ends_with('/') || path.is_dir() || ext.is_none() {
            return Ok(Format::PngSequence(PngSequence::in_folder(path)));
        }
        if let Some(seq) = PngSequence::from_pattern(path) {
            return Ok(Format::PngSequence(seq));
        }
        Ok(match ext.as_deref().unwrap_or_default() {
            "mp4" | "m4v" => Format::Mp4,
            "webm" => Format::Webm,
            "gif" => Format::Gif,
            "png" | "apng" => Format::Apng,
            "webp" => Format::WebP,
            e @ ("mov" | "mkv" | "avi") => {
                return Err(MediaError::Unsupported(format!(
                    ".{e} is not written: use .mp4 (H.264, plays everywhere) or .webm (AV1)"
                )))
            }
            e => {
                return Err(MediaError::Unsupported(format!(
                    "unknown output extension .{e} in {}: use .mp4, .webm, .gif, .png (animated), \
                     .webp, a folder or a name_%04d.png pattern",
                    path.display()
                )))
            }
        })
    }

    /// A short name for messages ("MP4 (H.264)", ...).
    pub fn describe(&self, opts: &EncodeOptions) -> &'static str {
        match (self, opts.codec) {
            (Format::Mp4, VideoCodec::H264) => "MP4 (H.264)",
            (Format::Mp4, VideoCodec::Av1) => "MP4 (AV1)",
            (Format::Webm, _) => "WebM (AV1)",
            (Format::Gif, _) => "GIF",
            (Format::Apng, _) => "animated PNG",
            (Format::WebP, _) => "animated WebP",
            (Format::PngSequence(_), _) => "PNG sequence",
        }
    }

    /// Checks before any work that `path` can be written and `opts` make sense for this format.
    pub fn check(&self, path: &Path, opts: &EncodeOptions) -> Result<()> {
        opts.check()?;
        match self {
            Format::PngSequence(seq) => {
                if seq.dir.exists() && !seq.dir.is_dir() {
                    return Err(MediaError::Invalid(format!(
                        "cannot write a PNG sequence into {}: it is a file, not a folder",
                        seq.dir.display()
                    )));
                }
                if seq.dir.is_dir() {
                    // Frames are moved into the existing folder: it must take new files.
                    atomic::check_writable(&seq.dir.join("frame.png"))
                } else {
                    // The folder will be created next to its siblings.
                    atomic::check_writable(&seq.dir)
                }
            }
            _ => atomic::check_writable(path),
        }
    }
}

/// Encodes `clip` in a single-file `format` into memory. Fails for [`Format::PngSequence`].
pub fn encode(format: &Format, clip: &Clip, opts: &EncodeOptions) -> Result<Vec<u8>> {
    opts.check()?;
    match format {
        Format::Mp4 => mp4::encode(clip, opts),
        Format::Webm => webm::encode(clip, opts),
        Format::Gif => gif::encode(clip),
        Format::Apng => apng::encode(clip),
        Format::WebP => webp::encode(clip, opts),
        Format::PngSequence(_) => Err(MediaError::Unsupported(
            "a PNG sequence is many files: write it with write_video".into(),
        )),
    }
}

/// Writes `clip` to `path` in the format the path asks for, atomically. Returns the files written.
pub fn write_video(path: &Path, clip: &Clip, opts: &EncodeOptions) -> Result<Vec<PathBuf>> {
    let format = Format::from_path(path)?;
    format.check(path, opts)?;
    match &format {
        Format::PngSequence(seq) => seq.write(clip),
        single => {
            let bytes = encode(single, clip, opts)?;
            atomic::write_file(path, &bytes)?;
            Ok(vec![path.to_path_buf()])
        }
    }
}
