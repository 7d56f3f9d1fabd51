//! Knobs shared by the encoders.

use crate::error::{MediaError, Result};

/// The video codec inside an MP4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VideoCodec {
    /// H.264 (OpenH264, constrained baseline): plays everywhere. The default.
    #[default]
    H264,
    /// AV1 (rav1e): royalty-free, smaller files, slower to encode, needs a recent player.
    Av1,
}

impl std::str::FromStr for VideoCodec {
    type Err = MediaError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "h264" | "h.264" | "avc" => Ok(VideoCodec::H264),
            "av1" => Ok(VideoCodec::Av1),
            other => Err(MediaError::Unsupported(format!(
                "unknown video codec {other:?}: use h264 or av1"
            ))),
        }
    }
}

/// The highest bitrate OpenH264 accepts (its level 5.2 ceiling, 288 Mbit/s).
pub const MAX_BITRATE_KBPS: u32 = 288_000;

/// How to encode. `quality` runs from 1 (smallest file) to 100 (best picture); each format maps it onto
/// its own scale (H.264 quantiser, AV1 quantiser, WebP quality). GIF, APNG and PNG ignore it: GIF is
/// always 256 colours per frame, PNG always lossless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Codec for `.mp4` (`.webm` is always AV1).
    pub codec: VideoCodec,
    /// 1..=100, default 75 (H.264 quantiser 13: visually lossless at these sizes).
    pub quality: u8,
    /// A target bitrate in kbit/s for H.264 and AV1 instead of a fixed quality.
    pub bitrate_kbps: Option<u32>,
    /// rav1e's speed preset, 0 (slowest, smallest) ..= 10 (fastest). Default 10: on a CPU, speed matters
    /// more than the last few percent of size.
    pub av1_speed: u8,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            codec: VideoCodec::H264,
            quality: 75,
            bitrate_kbps: None,
            av1_speed: 10,
        }
    }
}

impl EncodeOptions {
    /// Rejects out-of-range values before any encoding starts.
    pub fn check(&self) -> Result<()> {
        if !(1..=100).contains(&self.quality) {
            return Err(MediaError::Invalid(format!(
                "quality {} is out of range: use 1 (smallest file) to 100 (best picture)",
                self.quality
            )));
        }
        match self.bitrate_kbps {
            Some(0) => {
                return Err(MediaError::Invalid(
                    "a bitrate of 0 kbit/s cannot hold a picture: give a positive bitrate or leave it \
                     out"
                    .into(),
                ))
            }
            Some(k) if k > MAX_BITRATE_KBPS => {
                return Err(MediaError::Invalid(format!(
                    "a bitrate of {k} kbit/s is above OpenH264's ceiling of {MAX_BITRATE_KBPS} kbit/s: \
                     ask for less, or leave it out and set the quality instead"
                )))
            }
            _ => {}
        }
        if self.av1_speed > 10 {
            return Err(MediaError::Invalid(format!(
                "AV1 speed {} is out of range: use 0 (slowest) to 10 (fastest)",
                self.av1_speed
            )));
        }
        Ok(())
    }
}
