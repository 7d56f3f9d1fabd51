//! Where `-o` sends the frames: any video or image format of `sorrel-media`, or a float32 `.npy` for
//! exact numbers. Every output is checked before generation starts and written atomically.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sorrel_media::{write_video, Clip, EncodeOptions, Format};

/// Where and how to write frames, decided (and checked) before any work is done.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputTarget {
    /// A file or folder in a media format (MP4, WebM, GIF, APNG, WebP, PNG sequence).
    Media {
        /// The path given.
        path: PathBuf,
        /// The format it names.
        format: Format,
    },
    /// One `.npy` file holding float32 (F, H, W, 3) in [0, 1].
    Npy(PathBuf),
}

impl OutputTarget {
    /// Interprets `-o PATH` and checks it can be written with `opts`.
    pub fn parse(path: &Path, opts: &EncodeOptions) -> Result<Self> {
        let is_npy = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
        if is_npy {
            sorrel_media::check_writable(path)?;
            return Ok(OutputTarget::Npy(path.to_path_buf()));
        }
        let format = Format::from_path(path)?;
        format.check(path, opts)?;
        Ok(OutputTarget::Media {
            path: path.to_path_buf(),
            format,
        })
    }

    /// Writes `frames` ((F, H, W, 3) f32 in [0, 1], row-major) atomically. Returns the paths written.
    pub fn write(
        &self,
        frames: &[f32],
        (f, h, w): (usize, usize, usize),
        fps: u32,
        opts: &EncodeOptions,
    ) -> Result<Vec<PathBuf>> {
        anyhow::ensure!(
            frames.len() == f * h * w * 3,
            "frame buffer has the wrong size"
        );
        match self {
            OutputTarget::Npy(path) => {
                let mut bytes = Vec::with_capacity(frames.len() * 4 + 128);
                write_npy(&mut bytes, frames, &[f, h, w, 3])?;
                sorrel_media::write_file(path, &bytes)?;
                Ok(vec![path.clone()])
            }
            OutputTarget::Media { path, .. } => {
                let clip = Clip::from_f32(frames, (f, h, w), fps)?;
                Ok(write_video(path, &clip, opts)?)
            }
        }
    }

    /// What was written, for the closing message.
    pub fn describe(&self, written: &[PathBuf], opts: &EncodeOptions) -> String {
        match self {
            OutputTarget::Npy(p) => format!("{} (float32 .npy)", p.display()),
            OutputTarget::Media {
                format: Format::PngSequence(seq),
                ..
            } => format!("{} ({} PNG frames)", seq.dir.display(), written.len()),
            OutputTarget::Media { path, format } => {
                let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                format!(
                    "{} ({}, {:.1} kB)",
                    path.display(),
                    format.describe(opts),
                    size as f64 / 1000.0
                )
            }
        }
    }
}

/// NumPy's .npy format, version 1.0, little-endian float32, C order.
fn write_npy(out: &mut impl Write, data: &[f32], shape: &[usize]) -> Result<()> {
    let dims = shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let dims = if shape.len() == 1 {
        format!("{dims},")
    } else {
        dims
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}");
    // Magic (6) + version (2) + header length (2) + header + '\n' must be a multiple of 64.
    let pad = 64 - (10 + header.len() + 1) % 64;
    header.push_str(&" ".repeat(pad % 64));
    header.push('\n');
    let mut w = BufWriter::new(out);
    w.write_all(b"\x93NUMPY\x01\x00")?;
    w.write_all(&(header.len() as u16).to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    for v in data {
        w.write_all(&v.to_le_bytes())?;
    }
    w.flush().context("cannot write the .npy data")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_extensions_are_rejected() {
        let e = OutputTarget::parse(Path::new("x.xyz"), &EncodeOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown output extension .xyz"), "{e}");
    }

    #[test]
    fn missing_parent_is_rejected_before_work() {
        for name in [
            "/nonexistent-dir-sorrel/x.npy",
            "/nonexistent-dir-sorrel/x.mp4",
        ] {
            let e = OutputTarget::parse(Path::new(name), &EncodeOptions::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("does not exist"), "{e}");
        }
    }

    #[test]
    fn npy_header_is_aligned_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let opts = EncodeOptions::default();
        let t = OutputTarget::parse(&p, &opts).unwrap();
        t.write(&[0.5; 2 * 3 * 4 * 3], (2, 3, 4), 16, &opts)
            .unwrap();
        let bytes = fs::read(&p).unwrap();
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        assert!(std::str::from_utf8(&bytes[10..10 + hlen])
            .unwrap()
            .contains("'shape': (2, 3, 4, 3)"));
        assert_eq!(bytes.len(), 10 + hlen + 2 * 3 * 4 * 3 * 4);
    }
}
