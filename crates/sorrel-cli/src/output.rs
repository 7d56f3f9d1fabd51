//! Where `-o` sends the frames: any video or image format of `sorrel-media`, or a float32 `.npy` for
//! exact numbers. Every output is checked before generation starts and written atomically.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Result;
use sorrel_media::{write_video, Clip, EncodeOptions, Format};

use crate::provenance::{Signature, Signer};

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

    /// Writes the generated video atomically: `frames` ((F, H, W, 3) f32 in [0, 1], row-major) for
    /// `.npy`, `clip` (the same frames, quantised, at their frame rate) for everything else, signed by
    /// `signer` (inside the file, or in a sidecar for WebM). Returns the paths written and how they carry
    /// their credentials.
    pub fn write(
        &self,
        frames: &[f32],
        clip: &Clip,
        opts: &EncodeOptions,
        signer: &Signer,
    ) -> Result<(Vec<PathBuf>, Signature)> {
        self.write_with_ingredients(frames, clip, opts, signer, &[])
    }

    /// [`OutputTarget::write`], with `ingredients` (the signed files this one was made of) listed in the
    /// credentials of formats that carry them inside the file.
    pub fn write_with_ingredients(
        &self,
        frames: &[f32],
        clip: &Clip,
        opts: &EncodeOptions,
        signer: &Signer,
        ingredients: &[sorrel_provenance::Ingredient],
    ) -> Result<(Vec<PathBuf>, Signature)> {
        match self {
            OutputTarget::Npy(path) => {
                let shape = [clip.len(), clip.height() as usize, clip.width() as usize, 3];
                anyhow::ensure!(
                    frames.len() == shape.iter().product::<usize>(),
                    "frame buffer has the wrong size"
                );
                let mut bytes = sorrel_media::npy_header("<f4", &shape);
                bytes.reserve(frames.len() * 4);
                for v in frames {
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
                sorrel_media::write_file(path, &bytes)?;
                Ok((vec![path.clone()], Signature::Unsigned))
            }
            OutputTarget::Media {
                path,
                format: Format::PngSequence(_),
            } => Ok((write_video(path, clip, opts)?, Signature::Unsigned)),
            OutputTarget::Media { path, format } => {
                let bytes = sorrel_media::encode(format, clip, opts)?;
                let signed = signer.write_with_ingredients(path, &bytes, ingredients)?;
                Ok((vec![path.clone()], signed))
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
        let frames = [0.5; 2 * 3 * 4 * 3];
        let clip = Clip::from_f32(&frames, (2, 3, 4), 16).unwrap();
        let signer = Signer {
            identity: sorrel_provenance::SigningIdentity::local(&dir.path().join("c2pa")).unwrap(),
            generation: sorrel_provenance::Generation {
                model: "m".into(),
                seed: 0,
                steps: 1,
                prompt: None,
                watermark: None,
            },
        };
        let (_, signed) = t.write(&frames, &clip, &opts, &signer).unwrap();
        assert_eq!(signed, Signature::Unsigned, ".npy carries no credentials");
        let bytes = fs::read(&p).unwrap();
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        assert!(std::str::from_utf8(&bytes[10..10 + hlen])
            .unwrap()
            .contains("'shape': (2, 3, 4, 3)"));
        assert_eq!(bytes.len(), 10 + hlen + 2 * 3 * 4 * 3 * 4);
    }
}
