//! Where `-o` sends the frames: any video or image format of `sorrel-media`, or a float32 `.npy` for
//! exact numbers. Every output is checked before generation starts and written atomically.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Tensor;
use sorrel_media::{write_video, Clip, EncodeOptions, Format, Frame, FrameFeed, VideoStream};
use sorrel_provenance::watermark::Embedder;

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

    /// Starts writing a video at `fps` whose frames will arrive a few at a time ([`OutputStream::push`]),
    /// each marked by `mark` when given.
    pub fn stream(
        &self,
        fps: u32,
        opts: &EncodeOptions,
        mark: Option<Embedder>,
    ) -> Result<OutputStream<'_>> {
        let sink = match self {
            OutputTarget::Npy(_) => Sink::Floats(Vec::new(), None),
            OutputTarget::Media {
                format: Format::PngSequence(_),
                ..
            } => Sink::Frames(Vec::new()),
            OutputTarget::Media { format, .. } => Sink::Video(VideoStream::new(format, fps, opts)?),
        };
        Ok(OutputStream {
            target: self,
            opts: opts.clone(),
            fps,
            mark,
            feed: FrameFeed::default(),
            sink,
        })
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

/// Where a stream's frames go until it is finished.
enum Sink {
    /// `.npy`: the exact floats, and the frame size (H, W).
    Floats(Vec<f32>, Option<(usize, usize)>),
    /// A PNG sequence: the frames, written as files at the end.
    Frames(Vec<Frame>),
    /// A single-file video, encoded as frames arrive.
    Video(VideoStream),
}

/// A video being written from frames that arrive a few at a time: each frame is quantised, watermarked
/// and encoded as it comes (MP4 and WebM hold compressed pictures only), and the frames the thumbnail
/// and sprite sheet need are kept. Nothing is written before [`OutputStream::finish`], so an interrupted
/// run leaves no file.
pub struct OutputStream<'a> {
    target: &'a OutputTarget,
    opts: EncodeOptions,
    fps: u32,
    mark: Option<Embedder>,
    feed: FrameFeed,
    sink: Sink,
}

/// The stills of a finished stream: the thumbnail frame and the sprite sheet.
pub struct Stills {
    /// The middle frame.
    pub thumbnail: Frame,
    /// Evenly spaced frames in a grid.
    pub sprite_sheet: Frame,
}

impl OutputStream<'_> {
    /// Adds frames (n, H, W, 3) f32 in [0, 1] of a video that will have `total` frames.
    pub fn push(&mut self, frames: &Tensor, total: usize) -> Result<()> {
        let (f, h, w, _) = frames.dims4()?;
        let data = frames.flatten_all()?.to_vec1::<f32>()?;
        if let Sink::Floats(all, size) = &mut self.sink {
            anyhow::ensure!(
                size.is_none_or(|s| s == (h, w)),
                "frames of {w}x{h} arrived in a video of another size"
            );
            *size = Some((h, w));
            all.extend_from_slice(&data);
        }
        // .npy keeps the exact floats; the stills are made from marked 8-bit frames all the same.
        let mark = self.mark.as_ref();
        let marked = self.feed.feed(&data, (f, h, w), total, |frame| {
            if let Some(mark) = mark {
                mark.mark_frame(&mut frame.rgb, w, h);
            }
        })?;
        for frame in marked {
            match &mut self.sink {
                Sink::Frames(all) => all.push(frame),
                Sink::Video(stream) => stream.push(frame)?,
                Sink::Floats(..) => {}
            }
        }
        Ok(())
    }

    /// Writes the file (atomically, signed by `signer` where the format carries credentials) and returns
    /// the paths written, how they carry their credentials, and the stills.
    pub fn finish(self, signer: &Signer) -> Result<(Vec<PathBuf>, Signature, Stills)> {
        let stills = |feed: FrameFeed| -> Result<Stills> {
            let (thumbnail, sprite_sheet) = feed.stills()?;
            Ok(Stills {
                thumbnail,
                sprite_sheet,
            })
        };
        match (self.sink, self.target) {
            (Sink::Floats(data, size), OutputTarget::Npy(path)) => {
                let (h, w) = size.context("no frames were made")?;
                let f = data.len() / (h * w * 3);
                let shape = [f, h, w, 3];
                let mut bytes = sorrel_media::npy_header("<f4", &shape);
                bytes.reserve(data.len() * 4);
                for v in &data {
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
                sorrel_media::write_file(path, &bytes)?;
                Ok((vec![path.clone()], Signature::Unsigned, stills(self.feed)?))
            }
            (Sink::Frames(frames), OutputTarget::Media { path, .. }) => {
                let written = write_video(path, &Clip::new(frames, self.fps)?, &self.opts)?;
                Ok((written, Signature::Unsigned, stills(self.feed)?))
            }
            (Sink::Video(stream), OutputTarget::Media { path, .. }) => {
                let bytes = stream.finish()?;
                let signed = signer.write(path, &bytes)?;
                Ok((vec![path.clone()], signed, stills(self.feed)?))
            }
            _ => unreachable!("the sink is chosen from the target"),
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
