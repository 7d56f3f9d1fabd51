//! H.264 through OpenH264 (built from its bundled source): RGB frames to Annex-B access units, and back.

use openh264::decoder::{Decoder, DecoderConfig, Flush};
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, QpRange,
    RateControlMode, UsageType, VuiConfig,
};
use openh264::formats::{YUVSlices, YUVSource};
use openh264::OpenH264API;

use crate::clip::{keyframe_interval, require_even_size, Clip, Frame};
use crate::error::{MediaError, Result};
use crate::options::EncodeOptions;
use crate::yuv::Yuv420;

/// One encoded picture in decode (= display) order: OpenH264 writes no B-frames.
pub(crate) struct AccessUnit {
    /// Annex-B NAL units (start-code prefixed); the first one carries SPS and PPS.
    pub data: Vec<u8>,
    /// An IDR picture, where playback and seeking can start.
    pub keyframe: bool,
}

/// The constant quantiser (0 best ..= 51 worst) that `quality` (1..=100) asks for.
pub(crate) fn qp_for_quality(quality: u8) -> u8 {
    (((100 - quality.min(100) as u32) * 51 + 50) / 100) as u8
}

/// Encodes every frame of `clip`.
pub(crate) fn encode(clip: &Clip, opts: &EncodeOptions) -> Result<Vec<AccessUnit>> {
    let mut enc = H264Encoder::new(clip.width(), clip.height(), clip.fps(), opts)?;
    clip.frames().iter().map(|f| enc.encode(f)).collect()
}

/// OpenH264 fed one frame at a time: each frame comes straight back as its access unit, so a caller holds
/// compressed pictures, not raw ones.
pub(crate) struct H264Encoder {
    encoder: Encoder,
    yuv: Yuv420,
    dims: (usize, usize),
    opts: EncodeOptions,
    index: usize,
}

impl H264Encoder {
    /// An encoder for `width`x`height` frames at `fps`. Without a bitrate the quantiser is pinned (min =
    /// max) so quality is steady across the clip; with one, OpenH264's bitrate control aims for it. Frame
    /// skipping stays off in both cases: every input frame must come out as a picture, or the timing would
    /// be wrong.
    pub(crate) fn new(width: u32, height: u32, fps: u32, opts: &EncodeOptions) -> Result<Self> {
        require_even_size(width, height, "H.264")?;
        // The planes are BT.601 limited range (see yuv.rs), and OpenH264's own YUV to RGB conversion,
        // used when reading back, assumes the same; the stream declares it for players.
        let mut config = EncoderConfig::new()
            .usage_type(UsageType::CameraVideoRealTime)
            .max_frame_rate(FrameRate::from_hz(fps as f32))
            .skip_frames(false)
            .intra_frame_period(IntraFramePeriod::from_num_frames(keyframe_interval(fps)))
            .vui(VuiConfig::bt601());
        config = match opts.bitrate_kbps {
            Some(kbps) => config
                .rate_control_mode(RateControlMode::Bitrate)
                .bitrate(BitRate::from_bps(kbps.saturating_mul(1000))),
            None => {
                let qp = qp_for_quality(opts.quality);
                // Buffer-based mode follows the pinned quantiser exactly like quality mode does, without
                // OpenH264's start-up warning that quality mode cannot hit a bitrate without skipping.
                config
                    .rate_control_mode(RateControlMode::Bufferbased)
                    // A target above what the pinned quantiser produces at these sizes, so rate control
                    // never fights it; OpenH264 rejects targets over its level's ceiling (288 Mbit/s).
                    .bitrate(BitRate::from_bps(200_000_000))
                    .qp(QpRange::new(qp, qp))
            }
        };
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| MediaError::codec("H.264 encoder", e))?;
        let dims = (width as usize, height as usize);
        Ok(Self {
            encoder,
            yuv: Yuv420::new(dims.0, dims.1),
            dims,
            opts: opts.clone(),
            index: 0,
        })
    }

    /// Encodes the next frame, which has the encoder's size (a [`Clip`] or `VideoStream` has checked it).
    pub(crate) fn encode(&mut self, frame: &Frame) -> Result<AccessUnit> {
        let (i, dims) = (self.index, self.dims);
        debug_assert_eq!((frame.width as usize, frame.height as usize), dims);
        self.yuv.read_rgb(&frame.rgb);
        if i == 0 {
            self.encoder.force_intra_frame();
        }
        let bits = self
            .encoder
            .encode(&YUVSlices::new(
                (&self.yuv.y, &self.yuv.u, &self.yuv.v),
                dims,
                (dims.0, dims.0 / 2, dims.0 / 2),
            ))
            .map_err(|e| too_detailed(e, i, dims, &self.opts))?;
        let kind = bits.frame_type();
        if !matches!(kind, FrameType::IDR | FrameType::I | FrameType::P) {
            return Err(MediaError::codec(
                "H.264 encoder",
                format!("frame {i} came out as {kind:?} instead of a picture"),
            ));
        }
        self.index += 1;
        Ok(AccessUnit {
            data: bits.to_vec(),
            keyframe: kind == FrameType::IDR,
        })
    }
}

/// OpenH264's "out of memory" (native code 3) while encoding a frame means the frame's bitstream outgrew the
/// encoder's fixed frame buffer: nearly incompressible pictures (grain, noise) at a low quantiser on a small
/// frame. Says so, and what to change, instead of the bare code.
fn too_detailed(
    e: openh264::Error,
    frame: usize,
    (w, h): (usize, usize),
    opts: &EncodeOptions,
) -> MediaError {
    let text = e.to_string();
    if !text.contains("Native:3") {
        return MediaError::codec("H.264 encoder", e);
    }
    let how = match opts.bitrate_kbps {
        Some(kbps) => format!("at {kbps} kbit/s"),
        None => format!("at quality {}", opts.quality),
    };
    MediaError::codec(
        "H.264 encoder",
        format!(
            "frame {frame} ({w}x{h}) is too detailed for OpenH264's frame buffer {how} ({text}); use a lower \
             --quality (for example {}), a --bitrate, or another format (.webm, .gif, .png)",
            opts.quality.saturating_sub(10).max(1)
        ),
    )
}

/// Decodes Annex-B access units (SPS/PPS included in the first) to RGB frames, one per unit.
pub(crate) fn decode(units: &[Vec<u8>]) -> Result<Vec<Frame>> {
    let config = DecoderConfig::new().flush_after_decode(Flush::NoFlush);
    let mut decoder = Decoder::with_api_config(OpenH264API::from_source(), config)
        .map_err(|e| MediaError::codec("H.264 decoder", e))?;
    let mut frames = Vec::with_capacity(units.len());
    for (i, unit) in units.iter().enumerate() {
        let decoded = decoder
            .decode(unit)
            .map_err(|e| MediaError::codec("H.264 decoder", format!("sample {i}: {e}")))?;
        if let Some(yuv) = decoded {
            frames.push(to_frame(&yuv)?);
        }
    }
    for yuv in decoder
        .flush_remaining()
        .map_err(|e| MediaError::codec("H.264 decoder", e))?
    {
        frames.push(to_frame(&yuv)?);
    }
    Ok(frames)
}

fn to_frame(yuv: &openh264::decoder::DecodedYUV<'_>) -> Result<Frame> {
    let (w, h) = yuv.dimensions();
    let mut rgb = vec![0u8; w * h * 3];
    yuv.write_rgb8(&mut rgb);
    Frame::new(w as u32, h as u32, rgb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_maps_onto_the_quantiser_range() {
        assert_eq!(qp_for_quality(100), 0);
        assert_eq!(qp_for_quality(1), 50);
        assert_eq!(qp_for_quality(75), 13);
    }

    /// Noise at a low quantiser on a small frame outgrows OpenH264's frame buffer; the error says what to
    /// change, and the suggested quality works.
    #[test]
    fn incompressible_frames_get_an_error_that_names_the_fix() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let frames = (0..3)
            .map(|_| {
                let rgb = (0..96 * 64 * 3)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        (state >> 56) as u8
                    })
                    .collect();
                Frame::new(96, 64, rgb).unwrap()
            })
            .collect();
        let clip = Clip::new(frames, 24).unwrap();
        let opts = EncodeOptions {
            quality: 95,
            ..EncodeOptions::default()
        };
        let Err(e) = encode(&clip, &opts) else {
            panic!("noise at quality 95 fitted OpenH264's buffer; pick a harder case")
        };
        let e = e.to_string();
        assert!(e.contains("too detailed") && e.contains("--quality"), "{e}");
        let lower = EncodeOptions {
            quality: 40,
            ..EncodeOptions::default()
        };
        assert_eq!(encode(&clip, &lower).unwrap().len(), 3);
    }
}
