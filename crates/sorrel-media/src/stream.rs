//! Writing a video whose frames arrive a few at a time (a long generation, window by window): MP4 and WebM
//! encode each frame as it comes, so memory grows by compressed pictures, not raw ones; the still-image
//! animations (GIF, APNG, WebP), whose encoders want the whole clip, hold 8-bit frames until the end.

use crate::clip::{Clip, Frame, MAX_FPS};
use crate::error::{MediaError, Result};
use crate::h264::{AccessUnit, H264Encoder};
use crate::mp4::MuxCodec;
use crate::options::{EncodeOptions, VideoCodec};
use crate::output::{encode, Format};
use crate::{av1::Av1Encoder, mp4, webm};

/// A single-file video being written: frames in with [`VideoStream::push`], the file's bytes out of
/// [`VideoStream::finish`]. Nothing reaches the disk here, so an interrupted stream leaves no file.
pub struct VideoStream {
    format: Format,
    opts: EncodeOptions,
    fps: u32,
    size: Option<(u32, u32)>,
    frames: usize,
    state: State,
}

enum State {
    /// No frame yet: the encoders need the frame size.
    Waiting,
    // The encoders are large (OpenH264's state is several kB); boxed so the other states stay small.
    H264(Box<H264Encoder>, Vec<AccessUnit>),
    Av1(Box<Av1Encoder>),
    /// Frames kept for a format encoded all at once.
    Held(Vec<Frame>),
}

impl VideoStream {
    /// A stream of `format` (any single-file format: not a PNG sequence) at `fps`.
    pub fn new(format: &Format, fps: u32, opts: &EncodeOptions) -> Result<Self> {
        opts.check()?;
        if let Format::PngSequence(_) = format {
            return Err(MediaError::Unsupported(
                "a PNG sequence is many files: write it with write_video".into(),
            ));
        }
        if !(1..=MAX_FPS).contains(&fps) {
            return Err(MediaError::Invalid(format!(
                "a frame rate of {fps} fps is not supported: use a whole number from 1 to {MAX_FPS}"
            )));
        }
        Ok(Self {
            format: format.clone(),
            opts: opts.clone(),
            fps,
            size: None,
            frames: 0,
            state: State::Waiting,
        })
    }

    /// Frames pushed so far.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Adds the next frame; every frame must have the first one's size.
    pub fn push(&mut self, frame: Frame) -> Result<()> {
        let size = (frame.width, frame.height);
        match self.size {
            None => {
                self.state = self.start(size)?;
                self.size = Some(size);
            }
            Some(first) if first != size => {
                return Err(MediaError::Invalid(format!(
                "frame {} is {}x{} but frame 0 is {}x{}: all frames of a video must have one size",
                self.frames, size.0, size.1, first.0, first.1
            )))
            }
            Some(_) => {}
        }
        match &mut self.state {
            State::Waiting => unreachable!("started above"),
            State::H264(enc, units) => units.push(enc.encode(&frame)?),
            State::Av1(enc) => enc.push(&frame)?,
            State::Held(frames) => frames.push(frame),
        }
        self.frames += 1;
        Ok(())
    }

    fn start(&self, (w, h): (u32, u32)) -> Result<State> {
        Ok(match (&self.format, self.opts.codec) {
            (Format::Mp4, VideoCodec::H264) => State::H264(
                Box::new(H264Encoder::new(w, h, self.fps, &self.opts)?),
                Vec::new(),
            ),
            (Format::Mp4, VideoCodec::Av1) | (Format::Webm, _) => {
                State::Av1(Box::new(Av1Encoder::new(w, h, self.fps, &self.opts)?))
            }
            _ => State::Held(Vec::new()),
        })
    }

    /// Finishes the file and returns its bytes. Fails if no frame was pushed.
    pub fn finish(self) -> Result<Vec<u8>> {
        let Some(size) = self.size else {
            return Err(MediaError::Invalid(
                "there are no frames to write: a video needs at least one frame".into(),
            ));
        };
        match self.state {
            State::Waiting => unreachable!("a frame was pushed"),
            State::H264(_, units) => mp4::mux(
                MuxCodec::H264,
                units.into_iter().map(|u| (u.data, u.keyframe)),
                size,
                self.fps,
            ),
            State::Av1(enc) => {
                let stream = (*enc).finish()?;
                match self.format {
                    Format::Webm => webm::mux(&stream, size, self.fps),
                    _ => mp4::mux(
                        MuxCodec::Av1,
                        stream.units.into_iter().map(|u| (u.data, u.keyframe)),
                        size,
                        self.fps,
                    ),
                }
            }
            State::Held(frames) => encode(&self.format, &Clip::new(frames, self.fps)?, &self.opts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(i: usize, w: u32, h: u32) -> Frame {
        let rgb = (0..(w * h) as usize)
            .flat_map(|p| {
                let x = (p % w as usize + i * 3) as u8;
                [x.wrapping_mul(7), (p / w as usize) as u8 * 5, 128]
            })
            .collect();
        Frame::new(w, h, rgb).unwrap()
    }

    /// A streamed file is byte for byte the file the whole-clip writer makes, for every single-file format.
    #[test]
    fn streaming_writes_the_same_file_as_the_whole_clip() {
        let clip = Clip::new((0..9).map(|i| frame(i, 48, 32)).collect(), 12).unwrap();
        for (format, codec) in [
            (Format::Mp4, VideoCodec::H264),
            (Format::Mp4, VideoCodec::Av1),
            (Format::Webm, VideoCodec::Av1),
            (Format::Gif, VideoCodec::H264),
            (Format::Apng, VideoCodec::H264),
            (Format::WebP, VideoCodec::H264),
        ] {
            let opts = EncodeOptions {
                codec,
                av1_speed: 10,
                ..EncodeOptions::default()
            };
            let mut s = VideoStream::new(&format, 12, &opts).unwrap();
            for f in clip.frames() {
                s.push(f.clone()).unwrap();
            }
            assert_eq!(s.frames(), 9);
            let whole = encode(&format, &clip, &opts).unwrap();
            assert_eq!(s.finish().unwrap(), whole, "{format:?} {codec:?}");
        }
    }

    #[test]
    fn mismatched_sizes_and_empty_streams_are_refused() {
        let opts = EncodeOptions::default();
        let mut s = VideoStream::new(&Format::Mp4, 16, &opts).unwrap();
        s.push(frame(0, 32, 32)).unwrap();
        let e = s.push(frame(1, 48, 32)).unwrap_err().to_string();
        assert!(e.contains("frame 1 is 48x32 but frame 0 is 32x32"), "{e}");
        let e = VideoStream::new(&Format::Mp4, 16, &opts)
            .unwrap()
            .finish()
            .unwrap_err()
            .to_string();
        assert!(e.contains("no frames"), "{e}");
        let e = VideoStream::new(&Format::Gif, 0, &opts)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("0 fps"), "{e}");
    }
}
