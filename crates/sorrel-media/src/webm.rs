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

/// The length libwebm's TrackUID almost always has: 56 random bits.
const UID_BYTES: usize = 7;

/// Writes an AV1 stream of `width`x`height` frames at `fps` as a WebM file into memory.
pub(crate) fn mux(stream: &Av1Stream, size: (u32, u32), fps: u32) -> Result<Vec<u8>> {
    // The TrackUID's length is part of the layout and [`pin_track_uid`] cannot change it: libwebm's 56 random
    // bits take 6 bytes when the top 8 are zero (one second in 256, as the seed is the clock's second), and
    // then every byte after it moves. Such a file is written again in the next second, whose seed draws
    // another UID, so the same clip always gives the same bytes.
    for _ in 0..4 {
        let (file, uid_len) = mux_once(stream, size, fps)?;
        if uid_len == UID_BYTES {
            return Ok(file);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        std::thread::sleep(std::time::Duration::from_millis(
            1005 - u64::from(now.subsec_millis()),
        ));
    }
    Err(MediaError::codec(
        "WebM muxer",
        format!("libwebm wrote a TrackUID of other than {UID_BYTES} bytes four seconds running"),
    ))
}

/// One write of [`mux`], with the length of libwebm's TrackUID.
fn mux_once(stream: &Av1Stream, (width, height): (u32, u32), fps: u32) -> Result<(Vec<u8>, usize)> {
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
    let mut file = writer.into_inner().into_inner();
    let uid_len = pin_track_uid(&mut file, stream)?;
    Ok((file, uid_len))
}

/// Track elements' IDs, as written in the file (their length marker included).
const TRACKS: u32 = 0x1654_AE6B;
const TRACK_ENTRY: u32 = 0xAE;
const TRACK_UID: u32 = 0x73C5;

/// Replaces libwebm's random TrackUID with one made from the stream itself.
///
/// libwebm draws the UID from `rand_r` seeded with the current second and `webm` offers no way to set it,
/// so the same clip written twice gave different bytes whenever the writes straddled a second: a render
/// was not reproducible and the streamed and whole-clip writers disagreed. The value keeps the element's
/// length, so nothing else in the file moves; hashing the stream keeps different clips' UIDs distinct.
/// Returns that length.
fn pin_track_uid(file: &mut [u8], stream: &Av1Stream) -> Result<usize> {
    let missing = || MediaError::codec("WebM muxer", "libwebm wrote no TrackUID to pin");
    // Level-1 elements follow the EBML header and the Segment's ID and size.
    let mut pos = element_end(file, 0).ok_or_else(missing)?;
    let (_, _, segment_data) = element(file, pos).ok_or_else(missing)?;
    pos = segment_data;
    let (_, tracks_data) = find_child(file, &mut pos, TRACKS).ok_or_else(missing)?;
    pos = tracks_data;
    let (_, entry_data) = find_child(file, &mut pos, TRACK_ENTRY).ok_or_else(missing)?;
    pos = entry_data;
    let (uid_len, uid_data) = find_child(file, &mut pos, TRACK_UID).ok_or_else(missing)?;
    let uid = file
        .get_mut(uid_data..uid_data + uid_len)
        .filter(|v| (1..=8).contains(&v.len()))
        .ok_or_else(missing)?;
    let hash = fnv1a(stream.units.iter().map(|u| u.data.as_slice())).to_be_bytes();
    uid.copy_from_slice(&hash[8 - uid_len..]);
    // A TrackUID must not be 0, and a leading zero byte would make the value shorter than its length.
    uid[0] |= 1;
    Ok(uid_len)
}

/// Walks siblings from `*pos` to the element with `id`; returns its data length and start.
fn find_child(file: &[u8], pos: &mut usize, id: u32) -> Option<(usize, usize)> {
    loop {
        let (found, len, data) = element(file, *pos)?;
        if found == id {
            return Some((len, data));
        }
        *pos = data.checked_add(len)?;
    }
}

/// The end of the element starting at `pos`.
fn element_end(file: &[u8], pos: usize) -> Option<usize> {
    let (_, len, data) = element(file, pos)?;
    data.checked_add(len)
}

/// The element at `pos` as (ID, data length, data start); an unknown size reads as the rest of the file.
fn element(file: &[u8], pos: usize) -> Option<(u32, usize, usize)> {
    let (id, size_at) = vint(file, pos, true)?;
    let (len, data) = vint(file, size_at, false)?;
    let len = usize::try_from(len)
        .ok()?
        .min(file.len().saturating_sub(data));
    Some((u32::try_from(id).ok()?, len, data))
}

/// An EBML variable-length integer at `pos` and where the next field starts. IDs keep their length marker;
/// sizes drop it, and an all-ones size (unknown) reads as `u64::MAX`.
fn vint(file: &[u8], pos: usize, keep_marker: bool) -> Option<(u64, usize)> {
    let first = *file.get(pos)?;
    let len = first.leading_zeros() as usize + 1;
    let bytes = file.get(pos..pos + len).filter(|_| len <= 8)?;
    let mut value = bytes.iter().fold(0u64, |v, &b| (v << 8) | u64::from(b));
    if !keep_marker {
        let bits = 7 * len as u32;
        value &= (1u64 << bits) - 1;
        if value == (1u64 << bits) - 1 {
            value = u64::MAX;
        }
    }
    Some((value, pos + len))
}

/// 64-bit FNV-1a over the stream's bytes: a cheap, stable fingerprint, not a security hash.
fn fnv1a<'a>(parts: impl Iterator<Item = &'a [u8]>) -> u64 {
    parts.flatten().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::Frame;

    /// libwebm seeds its UIDs with the clock; two writes a second apart must still be the same file.
    #[test]
    fn the_same_clip_gives_the_same_file_a_second_later() {
        let frames = (0..3u8)
            .map(|i| Frame::new(32, 16, vec![i * 60; 32 * 16 * 3]).unwrap())
            .collect();
        let clip = Clip::new(frames, 8).unwrap();
        let opts = EncodeOptions {
            av1_speed: 10,
            ..EncodeOptions::default()
        };
        let first = encode(&clip, &opts).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(first, encode(&clip, &opts).unwrap());
        let other =
            Clip::new(vec![Frame::new(32, 16, vec![200; 32 * 16 * 3]).unwrap()], 8).unwrap();
        assert_ne!(
            track_uid(&first),
            track_uid(&encode(&other, &opts).unwrap())
        );
    }

    fn track_uid(file: &[u8]) -> Vec<u8> {
        let at = file.windows(2).position(|w| w == [0x73, 0xC5]).unwrap();
        let len = (file[at + 2] & 0x7F) as usize;
        file[at + 3..at + 3 + len].to_vec()
    }
}
