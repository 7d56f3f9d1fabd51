//! AV1 through rav1e: RGB frames to temporal units (one per shown frame, low-overhead OBU format).

use rav1e::color::{ColorDescription, ColorPrimaries, MatrixCoefficients, TransferCharacteristics};
use rav1e::config::SpeedSettings;
use rav1e::prelude::{
    ChromaSampling, Config, Context, EncoderConfig, EncoderStatus, FrameType, PixelRange, Rational,
};

use crate::clip::Clip;
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
    clip.require_even_size("AV1 (4:2:0)")?;
    let (w, h) = (clip.width() as usize, clip.height() as usize);
    let mut enc = EncoderConfig {
        width: w,
        height: h,
        time_base: Rational::new(1, clip.fps() as u64),
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
    let keyframe_every = u64::from(clip.keyframe_interval());
    enc.set_key_frame_interval(keyframe_every.min(12), keyframe_every);
    let config = Config::new().with_encoder_config(enc).with_threads(0);
    let mut ctx: Context<u8> = config
        .new_context()
        .map_err(|e| MediaError::codec("AV1 encoder", e))?;

    let mut yuv = Yuv420::new(w, h);
    let mut units = Vec::with_capacity(clip.len());
    for frame in clip.frames() {
        yuv.read_rgb(&frame.rgb);
        let mut pic = ctx.new_frame();
        pic.planes[0].copy_from_raw_u8(&yuv.y, w, 1);
        pic.planes[1].copy_from_raw_u8(&yuv.u, w / 2, 1);
        pic.planes[2].copy_from_raw_u8(&yuv.v, w / 2, 1);
        send(&mut ctx, pic, &mut units)?;
    }
    ctx.flush();
    drain_ready(&mut ctx, &mut units)?;
    if units.len() != clip.len() {
        return Err(MediaError::codec(
            "AV1 encoder",
            format!("{} frames went in but {} came out", clip.len(), units.len()),
        ));
    }
    Ok(Av1Stream {
        units,
        config_record: ctx.container_sequence_header(),
    })
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
