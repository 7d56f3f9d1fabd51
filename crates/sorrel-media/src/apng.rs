//! Animated PNG through the `png` crate: lossless, with each frame's delay stored exactly as 1/fps.
//! A one-frame clip is written as a plain PNG.

use crate::clip::{Clip, Frame};
use crate::error::{MediaError, Result};

fn err(e: png::EncodingError) -> MediaError {
    MediaError::codec("PNG encoder", e)
}

/// Writes `clip` as an APNG that loops forever.
pub(crate) fn encode(clip: &Clip) -> Result<Vec<u8>> {
    if clip.len() == 1 {
        return encode_png(&clip.frames()[0]);
    }
    let fps = u16::try_from(clip.fps()).expect("fps is checked to be at most MAX_FPS");
    let frames = u32::try_from(clip.len())
        .map_err(|_| MediaError::Invalid(format!("APNG holds at most {} frames", u32::MAX)))?;
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, clip.width(), clip.height());
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_animated(frames, 0).map_err(err)?;
        enc.set_frame_delay(1, fps).map_err(err)?;
        let mut writer = enc.write_header().map_err(err)?;
        for frame in clip.frames() {
            writer.write_image_data(&frame.rgb).map_err(err)?;
        }
        writer.finish().map_err(err)?;
    }
    Ok(out)
}

/// One frame as an ordinary 8-bit RGB PNG.
pub fn encode_png(frame: &Frame) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, frame.width, frame.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(err)?;
        writer.write_image_data(&frame.rgb).map_err(err)?;
        writer.finish().map_err(err)?;
    }
    Ok(out)
}
