//! AV1 through rav1e: RGB frames to temporal units (one per shown frame, low-overhead OBU format).

use rav1e::color::{ColorDescription, ColorPrimaries, MatrixCoefficients, TransferCharacteristics};
use rav1e::config::SpeedSettings;
use rav1e::prelude::{
    ChromaSampling, Config, Context, EncoderConfig, EncoderStatus, FrameType, PixelRange, Rational,
};

use crate::clip::{keyframe_interval, require_even_size, Clip, Frame};
use crate::error::{MediaError, Result};
use crate::options::EncodeOptions;
use crate::yuv::Yuv420;

/// One temporal unit: everything a decoder needs to show the next frame.
pub(crate) struct TemporalUnit {
    /// OBUs with size fields; a keyframe's unit starts with the sequence header.
    pub data: Vec<u8>,
    /// A key frame, where playback and seeking can start.
    pub keyframe: bool,
}

/// Encoded stream plus the `av1C` configuration record containers carry.
pub(crate) struct Av1Stream {
    pub units: Vec<TemporalUnit>,
    pub config_record: Vec<u8>,
}

/// rav1e's quantiser (0 best ..= 255 worst) for `quality` (1..=100). 0 would be lossless and huge.
fn quantizer_for_quality(quality: u8) -> usize {
    (((100 - quality.min(100) as usize) * 255 + 50) / 100).max(1)
}

/// Encodes every frame of `clip` with rav1e at `opts.av1_speed`.
pub(crate) fn encode(clip: &Clip, opts: &EncodeOptions) -> Result<Av1Stream> {
    let mut enc = Av1Encoder::new(clip.width(), clip.height(), clip.fps(), opts)?;
    for frame in clip.frames() {
        enc.push(frame)?;
    }
    enc.finish()
}

/// rav1e fed one frame at a time; packets are taken as soon as its look-ahead lets them go, so a caller
/// holds compressed pictures plus rav1e's bounded look-ahead, not the raw clip.
pub(crate) struct Av1Encoder {
    ctx: Context<u8>,
    yuv: Yuv420,
    dims: (usize, usize),
    units: Vec<TemporalUnit>,
    sent: usize,
}

impl Av1Encoder {
    /// An encoder for `width`x`height` frames at `fps`.
    pub(crate) fn new(width: u32, height: u32, fps: u32, opts: &EncodeOptions) -> Result<Self> {
        require_even_size(width, height, "AV1 (4:2:0)")?;
        let (w, h) = (width as usize, height as usize);
        let mut enc = EncoderConfig {
            width: w,
            height: h,
            time_base: Rational::new(1, fps as u64),
            bit_depth: 8,
            chroma_sampling: ChromaSampling::Cs420,
            // The planes are BT.601 limited range (yuv.rs), like the H.264 path's.
            pixel_range: PixelRange::Limited,
            color_description: Some(ColorDescription {
                color_primaries: ColorPrimaries::BT601,
                transfer_characteristics: TransferCharacteristics::BT601,
                matrix_coefficients: MatrixCoefficients::BT601,
            }),
            speed_settings: SpeedSettings::from_preset(opts.av1_speed),
            quantizer: quantizer_for_quality(opts.quality),
            bitrate: opts
                .bitrate_kbps
                .map_or(0, |k| k.saturating_mul(1000).min(i32::MAX as u32) as i32),
            ..Default::default()
        };
        let keyframe_every = u64::from(keyframe_interval(fps));
        enc.set_key_frame_interval(keyframe_every.min(12), keyframe_every);
        let config = Config::new().with_encoder_config(enc).with_threads(0);
        let ctx: Context<u8> = config
            .new_context()
            .map_err(|e| MediaError::codec("AV1 encoder", e))?;
        Ok(Self {
            ctx,
            yuv: Yuv420::new(w, h),
            dims: (w, h),
            units: Vec::new(),
            sent: 0,
        })
    }

    /// Sends the next frame, which has the encoder's size (a [`Clip`] or `VideoStream` has checked it).
    pub(crate) fn push(&mut self, frame: &Frame) -> Result<()> {
        let (w, h) = self.dims;
        debug_assert_eq!((frame.width as usize, frame.height as usize), (w, h));
        self.yuv.read_rgb(&frame.rgb);
        let mut pic = self.ctx.new_frame();
        pic.planes[0].copy_from_raw_u8(&self.yuv.y, w, 1);
        pic.planes[1].copy_from_raw_u8(&self.yuv.u, w / 2, 1);
        pic.planes[2].copy_from_raw_u8(&self.yuv.v, w / 2, 1);
        self.sent += 1;
        send(&mut self.ctx, pic, &mut self.units)
    }

    /// Flushes the look-ahead and returns every unit, one per frame sent.
    pub(crate) fn finish(mut self) -> Result<Av1Stream> {
        self.ctx.flush();
        drain_ready(&mut self.ctx, &mut self.units)?;
        if self.units.len() != self.sent {
            return Err(MediaError::codec(
                "AV1 encoder",
                format!(
                    "{} frames went in but {} came out",
                    self.sent,
                    self.units.len()
                ),
            ));
        }
        Ok(Av1Stream {
            units: self.units,
            config_record: self.ctx.container_sequence_header(),
        })
    }
}

/// Sends one frame, draining packets whenever the encoder's look-ahead is full.
fn send(ctx: &mut Context<u8>, pic: rav1e::Frame<u8>, units: &mut Vec<TemporalUnit>) -> Result<()> {
    match ctx.send_frame(pic) {
        Ok(()) => drain_ready(ctx, units),
        Err(e) => Err(MediaError::codec("AV1 encoder", e)),
    }
}

/// Takes every packet that is ready now (after `flush`: every packet left).
fn drain_ready(ctx: &mut Context<u8>, units: &mut Vec<TemporalUnit>) -> Result<()> {
    loop {
        match ctx.receive_packet() {
            Ok(p) => units.push(TemporalUnit {
                keyframe: p.frame_type == FrameType::KEY,
                data: p.data,
            }),
            Err(EncoderStatus::Encoded) => continue,
            Err(EncoderStatus::NeedMoreData | EncoderStatus::LimitReached) => return Ok(()),
            Err(e) => return Err(MediaError::codec("AV1 encoder", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_maps_onto_the_quantiser_range() {
        assert_eq!(quantizer_for_quality(100), 1);
        assert_eq!(quantizer_for_quality(1), 252);
    }
}
