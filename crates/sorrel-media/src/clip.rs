//! Frames in memory: one RGB8 image ([`Frame`]) and a checked sequence of them at a frame rate ([`Clip`]).

use crate::error::{MediaError, Result};

/// The highest frame rate any writer accepts. Above it, GIF and WebP delays round to nothing.
pub const MAX_FPS: u32 = 240;

/// One image: 8-bit RGB, row-major, no padding (`rgb.len() == width * height * 3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Pixels, `[r, g, b]` per pixel, rows top to bottom.
    pub rgb: Vec<u8>,
}

impl Frame {
    /// Wraps `rgb`, checking that it holds exactly `width * height` pixels.
    pub fn new(width: u32, height: u32, rgb: Vec<u8>) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(MediaError::Invalid(format!(
                "a frame of {width}x{height} pixels is empty: width and height must be at least 1"
            )));
        }
        let want = width as usize * height as usize * 3;
        if rgb.len() != want {
            return Err(MediaError::Invalid(format!(
                "a {width}x{height} RGB frame needs {want} bytes, got {}",
                rgb.len()
            )));
        }
        Ok(Frame { width, height, rgb })
    }

    /// Frames from floats `(F, H, W, 3)` in [0, 1], row-major, quantising each value the way diffusers'
    /// `numpy_to_pil` does: `round(clamp(x, 0, 1) * 255)`.
    pub fn from_f32(data: &[f32], (f, h, w): (usize, usize, usize)) -> Result<Vec<Frame>> {
        if data.len() != f * h * w * 3 {
            return Err(MediaError::Invalid(format!(
                "{} floats cannot hold {f} frames of {w}x{h} RGB ({} needed)",
                data.len(),
                f * h * w * 3
            )));
        }
        data.chunks_exact((h * w * 3).max(1))
            .take(f)
            .map(|px| Frame::new(w as u32, h as u32, px.iter().map(|&v| to_u8(v)).collect()))
            .collect()
    }

    /// The pixel at (x, y) as `[r, g, b]`.
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }
}

/// A video in memory: at least one frame, all of one size, shown at `fps` frames per second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clip {
    frames: Vec<Frame>,
    fps: u32,
}

impl Clip {
    /// Checks and wraps `frames`. Fails on no frames, frames of different sizes, or `fps` outside
    /// 1..=[`MAX_FPS`].
    pub fn new(frames: Vec<Frame>, fps: u32) -> Result<Self> {
        let Some(first) = frames.first() else {
            return Err(MediaError::Invalid(
                "there are no frames to write: a video needs at least one frame".into(),
            ));
        };
        if !(1..=MAX_FPS).contains(&fps) {
            return Err(MediaError::Invalid(format!(
                "a frame rate of {fps} fps is not supported: use a whole number from 1 to {MAX_FPS}"
            )));
        }
        let (w, h) = (first.width, first.height);
        if let Some((i, f)) = frames
            .iter()
            .enumerate()
            .find(|(_, f)| (f.width, f.height) != (w, h))
        {
            return Err(MediaError::Invalid(format!(
                "frame {i} is {}x{} but frame 0 is {w}x{h}: all frames of a video must have one size",
                f.width, f.height
            )));
        }
        Ok(Clip { frames, fps })
    }

    /// Builds a clip from float frames `(F, H, W, 3)` in [0, 1], row-major, quantised as
    /// [`Frame::from_f32`] does.
    pub fn from_f32(data: &[f32], shape: (usize, usize, usize), fps: u32) -> Result<Self> {
        Clip::new(Frame::from_f32(data, shape)?, fps)
    }

    /// The frames, in display order.
    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }

    /// Each frame's pixels, to change in place (a frame's size cannot change through it).
    pub fn pixels_mut(&mut self) -> impl Iterator<Item = &mut [u8]> {
        self.frames.iter_mut().map(|f| &mut f.rgb[..])
    }

    /// Frames per second.
    pub fn fps(&self) -> u32 {
        self.fps
    }

    /// Frame width in pixels.
    pub fn width(&self) -> u32 {
        self.frames[0].width
    }

    /// Frame height in pixels.
    pub fn height(&self) -> u32 {
        self.frames[0].height
    }

    /// Number of frames (at least 1).
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Always false: a clip holds at least one frame. Present because clippy expects it beside `len`.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Length in seconds: every frame is shown for `1 / fps`, the last one included.
    pub fn duration_seconds(&self) -> f64 {
        self.frames.len() as f64 / self.fps as f64
    }
}

/// Frames between key frames for the video codecs at `fps`: one every two seconds, cheap to seek in and
/// costing little at these clip lengths.
pub(crate) fn keyframe_interval(fps: u32) -> u32 {
    fps * 2
}

/// Fails, naming the codec, if a 4:2:0 codec cannot hold frames of `w`x`h`.
pub(crate) fn require_even_size(w: u32, h: u32, codec: &str) -> Result<()> {
    if !w.is_multiple_of(2) || !h.is_multiple_of(2) {
        return Err(MediaError::Invalid(format!(
            "{codec} stores colour at half resolution, so it needs an even width and height; the \
             frames are {w}x{h}. Generate an even size (Wan sizes are multiples of 16), or write \
             .png, .gif or .webp, which take any size"
        )));
    }
    if w < 16 || h < 16 {
        return Err(MediaError::Invalid(format!(
            "{codec} needs frames of at least 16x16 pixels; the frames are {w}x{h}. Write .png, \
             .gif or .webp for smaller frames"
        )));
    }
    Ok(())
}

/// `round(clamp(x, 0, 1) * 255)`; NaN becomes 0.
pub fn to_u8(x: f32) -> u8 {
    if x.is_nan() {
        return 0;
    }
    (x.clamp(0.0, 1.0) * 255.0).round() as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_mismatched_and_bad_fps() {
        let f = |w, h| Frame::new(w, h, vec![0; (w * h * 3) as usize]).unwrap();
        let e = Clip::new(vec![], 16).unwrap_err().to_string();
        assert!(e.contains("no frames"), "{e}");
        let e = Clip::new(vec![f(4, 4), f(4, 4), f(6, 4)], 16)
            .unwrap_err()
            .to_string();
        assert!(e.contains("frame 2 is 6x4 but frame 0 is 4x4"), "{e}");
        let e = Clip::new(vec![f(4, 4)], 0).unwrap_err().to_string();
        assert!(e.contains("0 fps"), "{e}");
        let e = Frame::new(2, 2, vec![0; 11]).unwrap_err().to_string();
        assert!(e.contains("needs 12 bytes, got 11"), "{e}");
    }

    #[test]
    fn float_frames_quantise_like_diffusers() {
        let c = Clip::from_f32(&[0.0, 0.5, 1.0, -1.0, 2.0, f32::NAN], (2, 1, 1), 8).unwrap();
        assert_eq!(c.frames()[0].rgb, vec![0, 128, 255]);
        assert_eq!(c.frames()[1].rgb, vec![0, 255, 0]);
        assert_eq!(c.duration_seconds(), 0.25);
    }
}
