//! Animated GIF through the `gif` crate, 256 colours per frame (NeuQuant).
//!
//! GIF delays count hundredths of a second. Each frame's delay is the difference of rounded start
//! times ([`crate::timing::tick`]), so the clip as a whole keeps its length: 16 fps plays as delays of
//! 6, 6, 6, 7 cs (6.25 on average) rather than drifting to 16.7 fps. Browsers show any delay under
//! 2 cs as 10 cs, so above 50 fps every delay is raised to 2 cs and the clip plays at 50 fps.

use crate::clip::Clip;
use crate::error::{MediaError, Result};
use crate::timing::tick;

/// NeuQuant's sampling factor: 1 is best and slowest, 30 fastest. 10 is the crate's own default.
const QUANTIZE_SPEED: i32 = 10;

/// The delays, in centiseconds, that [`encode`] writes for each frame of `clip`.
pub fn gif_delays(clip: &Clip) -> Vec<u16> {
    (0..clip.len())
        .map(|i| {
            let d = tick(i + 1, clip.fps(), 100) - tick(i, clip.fps(), 100);
            d.clamp(2, u16::MAX as u64) as u16
        })
        .collect()
}

/// Writes `clip` as a GIF that loops forever.
pub(crate) fn encode(clip: &Clip) -> Result<Vec<u8>> {
    let (w, h) = dims_u16(clip)?;
    let err = |e: gif::EncodingError| MediaError::codec("GIF encoder", e);
    let mut out = Vec::new();
    {
        let mut enc = gif::Encoder::new(&mut out, w, h, &[]).map_err(err)?;
        enc.set_repeat(gif::Repeat::Infinite).map_err(err)?;
        for (frame, delay) in clip.frames().iter().zip(gif_delays(clip)) {
            let mut g = gif::Frame::from_rgb_speed(w, h, &frame.rgb, QUANTIZE_SPEED);
            g.delay = delay;
            enc.write_frame(&g).map_err(err)?;
        }
    }
    Ok(out)
}

fn dims_u16(clip: &Clip) -> Result<(u16, u16)> {
    match (u16::try_from(clip.width()), u16::try_from(clip.height())) {
        (Ok(w), Ok(h)) => Ok((w, h)),
        _ => Err(MediaError::Invalid(format!(
            "GIF holds at most 65535x65535 pixels; the frames are {}x{}",
            clip.width(),
            clip.height()
        ))),
    }
}
