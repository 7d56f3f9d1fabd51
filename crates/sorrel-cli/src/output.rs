//! Writing frames to disk: a PNG sequence or a float32 `.npy`, always staged in a temporary location and
//! moved into place only when complete, so a failure never leaves a half-written output.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Where and how to write frames, decided (and checked) before any work is done.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputTarget {
    /// PNG files in a folder: `dir/<prefix>NNNN.png` (`digits` wide, zero-padded).
    PngSequence {
        /// The folder.
        dir: PathBuf,
        /// File name before the number.
        prefix: String,
        /// Width of the number.
        digits: usize,
        /// File name after the number.
        suffix: String,
    },
    /// One `.npy` file holding float32 (F, H, W, 3) in [0, 1].
    Npy(PathBuf),
}

impl OutputTarget {
    /// Interprets `-o PATH`: a folder (existing, or ending in `/`, or without extension) or a `.png`
    /// pattern (`clip_%04d.png`, or `clip.png` meaning `clip_0000.png`, ...) gives a PNG sequence; `.npy` a
    /// float array.
    pub fn parse(path: &Path) -> Result<Self> {
        let s = path.to_string_lossy();
        let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase());
        let target = if s.ends_with('/') || path.is_dir() || ext.is_none() {
            OutputTarget::PngSequence {
                dir: path.to_path_buf(),
                prefix: "frame_".into(),
                digits: 4,
                suffix: ".png".into(),
            }
        } else {
            match ext.as_deref() {
                Some("png") => {
                    let dir = containing_dir(path).to_path_buf();
                    let name = path.file_name().unwrap_or_default().to_string_lossy().to_string();
                    let (prefix, digits, suffix) = match split_pattern(&name) {
                        Some(p) => p,
                        None => (format!("{}_", name.trim_end_matches(".png").trim_end_matches(".PNG")), 4, ".png".into()),
                    };
                    OutputTarget::PngSequence { dir, prefix, digits, suffix }
                }
                Some("npy") => OutputTarget::Npy(path.to_path_buf()),
                Some(e @ ("mp4" | "webm" | "gif" | "webp" | "apng" | "mov" | "mkv")) => bail!(
                    "output format .{e} is not supported yet: write a PNG sequence (-o DIR/ or -o clip_%04d.png) or \
                     .npy, and encode it with another tool for now"
                ),
                Some(e) => bail!(
                    "unknown output extension .{e} in {}: use a folder or .png pattern (PNG sequence) or .npy",
                    path.display()
                ),
                None => unreachable!("handled above"),
            }
        };
        target.check_writable()?;
        Ok(target)
    }

    /// Where the output is staged before the final rename: the folder holding the PNG folder or the
    /// `.npy` file, so the rename never crosses file systems.
    fn staging_dir(&self) -> &Path {
        match self {
            OutputTarget::PngSequence { dir, .. } => containing_dir(dir),
            OutputTarget::Npy(path) => containing_dir(path),
        }
    }

    /// Fails early, before minutes of generation, if the output cannot be written.
    fn check_writable(&self) -> Result<()> {
        let parent = self.staging_dir();
        if !parent.is_dir() {
            bail!(
                "cannot write the output: folder {} does not exist",
                parent.display()
            );
        }
        let probe = tempfile::Builder::new()
            .prefix(".sorrel-probe")
            .tempfile_in(parent);
        if probe.is_err() {
            bail!(
                "cannot write the output: folder {} is not writable",
                parent.display()
            );
        }
        if let OutputTarget::PngSequence { dir, .. } = self {
            if dir.exists() && !dir.is_dir() {
                bail!(
                    "cannot write a PNG sequence to {}: it is a file, not a folder",
                    dir.display()
                );
            }
        }
        Ok(())
    }

    /// Writes `frames` ((F, H, W, 3) f32 in [0, 1], row-major) atomically. Returns the paths written.
    pub fn write(&self, frames: &[f32], (f, h, w): (usize, usize, usize)) -> Result<Vec<PathBuf>> {
        anyhow::ensure!(
            frames.len() == f * h * w * 3,
            "frame buffer has the wrong size"
        );
        match self {
            OutputTarget::Npy(path) => {
                let mut tmp = tempfile::Builder::new()
                    .prefix(".sorrel-")
                    .suffix(".npy.tmp")
                    .tempfile_in(self.staging_dir())?;
                write_npy(tmp.as_file_mut(), frames, &[f, h, w, 3])?;
                tmp.as_file().sync_all()?;
                tmp.persist(path).with_context(|| {
                    format!("cannot move the output into place at {}", path.display())
                })?;
                Ok(vec![path.clone()])
            }
            OutputTarget::PngSequence {
                dir,
                prefix,
                digits,
                suffix,
            } => {
                // Stage every frame in a sibling temp folder, then move the files in: a failure midway leaves
                // nothing behind at the destination.
                let stage = tempfile::Builder::new()
                    .prefix(".sorrel-frames-")
                    .tempdir_in(self.staging_dir())?;
                let mut names = Vec::with_capacity(f);
                for i in 0..f {
                    let name = format!("{prefix}{i:0digits$}{suffix}");
                    let px = &frames[i * h * w * 3..(i + 1) * h * w * 3];
                    write_png(&stage.path().join(&name), px, w, h)?;
                    names.push(name);
                }
                fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                let mut written = Vec::with_capacity(f);
                for name in names {
                    let dst = dir.join(&name);
                    fs::rename(stage.path().join(&name), &dst)
                        .with_context(|| format!("cannot move a frame into {}", dst.display()))?;
                    written.push(dst);
                }
                Ok(written)
            }
        }
    }
}

/// The folder `path` lives in (`.` for a bare name).
fn containing_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Splits `clip_%04d.png` into ("clip_", 4, ".png"); `%d` means no padding.
fn split_pattern(name: &str) -> Option<(String, usize, String)> {
    let start = name.find('%')?;
    let rest = &name[start + 1..];
    let end = rest.find('d')?;
    let width = &rest[..end];
    let digits = if width.is_empty() {
        1
    } else {
        width.trim_start_matches('0').parse().ok()?
    };
    Some((
        name[..start].to_string(),
        digits,
        rest[end + 1..].to_string(),
    ))
}

/// Quantises [0, 1] to 8 bits the way diffusers' `numpy_to_pil` does: round(x * 255).
pub fn to_u8(x: f32) -> u8 {
    (x.clamp(0.0, 1.0) * 255.0).round() as u8
}

fn write_png(path: &Path, px: &[f32], w: usize, h: usize) -> Result<()> {
    let file =
        fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut enc = png::Encoder::new(BufWriter::new(file), w as u32, h as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header()?;
    let bytes: Vec<u8> = px.iter().map(|&v| to_u8(v)).collect();
    writer.write_image_data(&bytes)?;
    writer.finish()?;
    Ok(())
}

/// NumPy's .npy format, version 1.0, little-endian float32, C order.
fn write_npy(out: &mut fs::File, data: &[f32], shape: &[usize]) -> Result<()> {
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
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert_eq!(
            split_pattern("clip_%04d.png"),
            Some(("clip_".into(), 4, ".png".into()))
        );
        assert_eq!(
            split_pattern("f%d.png"),
            Some(("f".into(), 1, ".png".into()))
        );
        assert_eq!(split_pattern("clip.png"), None);
    }

    #[test]
    fn unknown_and_unsupported_extensions_are_rejected() {
        let e = OutputTarget::parse(Path::new("x.xyz"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown output extension .xyz"), "{e}");
        let e = OutputTarget::parse(Path::new("x.mp4"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not supported yet"), "{e}");
    }

    #[test]
    fn missing_parent_is_rejected_before_work() {
        let e = OutputTarget::parse(Path::new("/nonexistent-dir-sorrel/x.npy"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn npy_header_is_aligned_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let t = OutputTarget::parse(&p).unwrap();
        t.write(&[0.5; 2 * 3 * 4 * 3], (2, 3, 4)).unwrap();
        let bytes = fs::read(&p).unwrap();
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        assert!(std::str::from_utf8(&bytes[10..10 + hlen])
            .unwrap()
            .contains("'shape': (2, 3, 4, 3)"));
        assert_eq!(bytes.len(), 10 + hlen + 2 * 3 * 4 * 3 * 4);
    }
}
