//! WebM with AV1: rav1e's temporal units in a Matroska container written by libwebm (through `webm`).
//!
//! Matroska timestamps here are whole milliseconds (libwebm's fixed timestamp unit), so a frame time
//! such as 62.5 ms at 16 fps is stored as 62 ms; players derive the frame rate from the average, and the
//! segment duration is written as the rounded total (`round(frames * 1000 / fps)` ms).

use std::io::Cursor;

use webm::mux::{
    ColorPrimaries, ColorRange, ColorSubsampling, MatrixCoefficients, SegmentBuilder,
    TransferCharacteristics, VideoCodecId, Writer,
};

use crate::av1::{self, Av1Stream};
use crate::clip::Clip;
use crate::error::{MediaError, Result};
use crate::options::EncodeOptions;
use crate::timing::tick;

fn err(e: impl std::fmt::Debug) -> MediaError {
    MediaError::codec("WebM muxer", format!("{e:?}"))
}

/// Encodes `clip` as AV1 and writes a WebM file into memory.
pub(crate) fn encode(clip: &Clip, opts: &EncodeOptions) -> Result<Vec<u8>> {
    let stream = av1::encode(clip, opts)?;
    mux(&stream, (clip.width(), clip.height()), clip.fps())
}

/// Writes an AV1 stream of `width`x`height` frames at `fps` as a WebM file into memory.
pub(crate) fn mux(stream: &Av1Stream, (width, height): (u32, u32), fps: u32) -> Result<Vec<u8>> {
    let writer = Writer::new(Cursor::new(Vec::new()));
    let (builder, track) = SegmentBuilder::new(writer)
        .map_err(err)?
        .set_writing_app("sorrel")
        .map_err(err)?
        .add_video_track(width, height, VideoCodecId::AV1, None)
        .map_err(err)?;
    let mut segment = builder
        .set_codec_private(track, &stream.config_record)
        .map_err(err)?
        .set_color(
            track,
            8,
            ColorSubsampling {
                chroma_horizontal: 1,
                chroma_vertical: 1,
            },
            ColorRange::Broadcast,
        )
        .map_err(err)?
        .set_primaries(track, ColorPrimaries::Bt601)
        .map_err(err)?
        .set_transfer_characteristics(track, TransferCharacteristics::Bt601)
        .map_err(err)?
        .set_matrix_coefficients(track, MatrixCoefficients::Bt601)
        .map_err(err)?
        .build();
    let frames = stream.units.len();
    let fps = u64::from(fps);
    for (i, unit) in stream.units.iter().enumerate() {
        let ns = i as u64 * 1_000_000_000 / fps;
        segment
            .add_frame(track, &unit.data, ns, unit.keyframe)
            .map_err(|e| MediaError::codec("WebM muxer", format!("frame {i}: {e:?}")))?;
    }
    let duration_ms = tick(frames, fps as u32, 1000);
    let writer = segment
        .finalize(Some(duration_ms))
        .map_err(|_| MediaError::codec("WebM muxer", "libwebm could not finish the file"))?;
    Ok(writer.into_inner().into_inner())
}
