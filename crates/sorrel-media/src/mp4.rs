//! MP4 files: muxing H.264 or AV1 with muxide (fast-start, 90 kHz timescale), and reading H.264 MP4s
//! back with the `mp4` crate and OpenH264.
//!
//! Frame times are exact when `90000 / fps` is whole (1, 2, 3, 4, 5, 6, 8, 9, 10, 12, 15, 16, 18, 20,
//! 24, 25, 30, 36, 40, 45, 48, 50, 60, 72, 75, 80, 90, 100, 120, ... fps); otherwise each time is
//! rounded to the nearest 1/90000 s.

use std::io::Cursor;

use muxide::api::MuxerBuilder;
pub(crate) use muxide::api::VideoCodec as MuxCodec;

use crate::clip::{Clip, Frame};
use crate::error::{MediaError, Result};
use crate::options::{EncodeOptions, VideoCodec};
use crate::{av1, h264};

/// Encodes `clip` and muxes it into a fast-start MP4 (the index before the data, so playback starts
/// before the whole file has arrived).
pub(crate) fn encode(clip: &Clip, opts: &EncodeOptions) -> Result<Vec<u8>> {
    let size = (clip.width(), clip.height());
    match opts.codec {
        VideoCodec::H264 => mux(
            MuxCodec::H264,
            h264::encode(clip, opts)?
                .into_iter()
                .map(|u| (u.data, u.keyframe)),
            size,
            clip.fps(),
        ),
        VideoCodec::Av1 => mux(
            MuxCodec::Av1,
            av1::encode(clip, opts)?
                .units
                .into_iter()
                .map(|u| (u.data, u.keyframe)),
            size,
            clip.fps(),
        ),
    }
}

/// Muxes encoded samples (data, keyframe), one per frame in display order, into a fast-start MP4 of
/// `width`x`height` at `fps`.
pub(crate) fn mux(
    codec: MuxCodec,
    samples: impl IntoIterator<Item = (Vec<u8>, bool)>,
    (width, height): (u32, u32),
    fps: u32,
) -> Result<Vec<u8>> {
    let mut muxer = MuxerBuilder::new(Cursor::new(Vec::new()))
        .video(codec, width, height, fps as f64)
        .with_fast_start(true)
        .build()
        .map_err(|e| MediaError::codec("MP4 muxer", e))?;
    for (i, (data, key)) in samples.into_iter().enumerate() {
        let pts = i as f64 / fps as f64;
        muxer
            .write_video(pts, &data, key)
            .map_err(|e| MediaError::codec("MP4 muxer", format!("frame {i}: {e}")))?;
    }
    muxer
        .finish_in_place()
        .map_err(|e| MediaError::codec("MP4 muxer", e))?;
    let mut bytes = muxer.into_writer().into_inner();
    set_movie_timescale(&mut bytes)?;
    Ok(bytes)
}

/// muxide writes the movie header (`mvhd`), track headers (`tkhd`) and edit lists (`elst`) in
/// milliseconds, so 81 frames at 16 fps (5.0625 s) show as 5.062 s in players. This rewrites those
/// fields in place with the video track's own media timescale and duration (its `mdhd`, the sum of the
/// sample durations), so the container's duration is exactly the track's. Field sizes do not change,
/// so no offset moves.
fn set_movie_timescale(bytes: &mut [u8]) -> Result<()> {
    let bad = |what: &str| MediaError::codec("MP4 muxer", format!("unexpected box layout: {what}"));
    let moov = find_box(bytes, 0, bytes.len(), b"moov").ok_or_else(|| bad("no moov"))?;
    let (start, end) = (moov.0 + 8, moov.1);
    let (timescale, duration) = media_header(bytes, start, end).ok_or_else(|| bad("no mdhd"))?;
    let mvhd = find_box(bytes, start, end, b"mvhd").ok_or_else(|| bad("no mvhd"))?;
    let body = mvhd.0 + 8;
    match bytes[body] {
        0 => {
            let d =
                u32::try_from(duration).map_err(|_| bad("clip too long for a version-0 mvhd"))?;
            bytes[body + 12..body + 16].copy_from_slice(&timescale.to_be_bytes());
            bytes[body + 16..body + 20].copy_from_slice(&d.to_be_bytes());
        }
        1 => {
            bytes[body + 20..body + 24].copy_from_slice(&timescale.to_be_bytes());
            bytes[body + 24..body + 32].copy_from_slice(&duration.to_be_bytes());
        }
        _ => return Err(bad("unknown mvhd version")),
    }
    let mut at = start;
    while let Some(trak) = find_box(bytes, at, end, b"trak") {
        at = trak.1;
        let (ts, te) = (trak.0 + 8, trak.1);
        if let Some(tkhd) = find_box(bytes, ts, te, b"tkhd") {
            let body = tkhd.0 + 8;
            match bytes[body] {
                0 => {
                    let d = u32::try_from(duration).map_err(|_| bad("clip too long for tkhd"))?;
                    bytes[body + 20..body + 24].copy_from_slice(&d.to_be_bytes());
                }
                1 => bytes[body + 28..body + 36].copy_from_slice(&duration.to_be_bytes()),
                _ => return Err(bad("unknown tkhd version")),
            }
        }
        if let Some(edts) = find_box(bytes, ts, te, b"edts") {
            if let Some(elst) = find_box(bytes, edts.0 + 8, edts.1, b"elst") {
                let body = elst.0 + 8;
                let version = bytes[body];
                let count = u32::from_be_bytes(bytes[body + 4..body + 8].try_into().unwrap());
                if count == 1 {
                    let e = body + 8;
                    match version {
                        0 => {
                            let d = u32::try_from(duration)
                                .map_err(|_| bad("clip too long for elst"))?;
                            bytes[e..e + 4].copy_from_slice(&d.to_be_bytes());
                        }
                        1 => bytes[e..e + 8].copy_from_slice(&duration.to_be_bytes()),
                        _ => return Err(bad("unknown elst version")),
                    }
                }
            }
        }
    }
    Ok(())
}

/// Timescale and duration of the first track's media header (`moov/trak/mdia/mdhd`).
fn media_header(bytes: &[u8], start: usize, end: usize) -> Option<(u32, u64)> {
    let trak = find_box(bytes, start, end, b"trak")?;
    let mdia = find_box(bytes, trak.0 + 8, trak.1, b"mdia")?;
    let mdhd = find_box(bytes, mdia.0 + 8, mdia.1, b"mdhd")?;
    let body = mdhd.0 + 8;
    let u32_at = |i: usize| Some(u32::from_be_bytes(bytes.get(i..i + 4)?.try_into().ok()?));
    match bytes[body] {
        0 => Some((u32_at(body + 12)?, u64::from(u32_at(body + 16)?))),
        1 => Some((
            u32_at(body + 20)?,
            u64::from_be_bytes(bytes.get(body + 24..body + 32)?.try_into().ok()?),
        )),
        _ => None,
    }
}

/// The first box of type `kind` among the boxes in `bytes[start..end]`: its (start, end).
fn find_box(bytes: &[u8], start: usize, end: usize, kind: &[u8; 4]) -> Option<(usize, usize)> {
    let mut at = start;
    while at + 8 <= end {
        let size = u32::from_be_bytes(bytes[at..at + 4].try_into().ok()?) as usize;
        let size = match size {
            0 => end - at,
            1 => usize::try_from(u64::from_be_bytes(
                bytes.get(at + 8..at + 16)?.try_into().ok()?,
            ))
            .ok()?,
            n => n,
        };
        if size < 8 || at + size > end {
            return None;
        }
        if &bytes[at + 4..at + 8] == kind {
            return Some((at, at + size));
        }
        at += size;
    }
    None
}

/// What [`read`] found in an MP4.
pub(crate) enum Mp4Contents {
    /// An H.264 track, decoded.
    Decoded(Clip),
    /// A video track in a codec this reader does not decode (named).
    OtherCodec(String),
}

/// Reads the first video track of an MP4 holding H.264 and decodes every frame.
pub(crate) fn read(bytes: &[u8]) -> Result<Mp4Contents> {
    let size = bytes.len() as u64;
    let mut reader = ::mp4::Mp4Reader::read_header(Cursor::new(bytes), size)
        .map_err(|e| MediaError::codec("MP4 reader", e))?;
    let mut tracks: Vec<_> = reader
        .tracks()
        .values()
        .filter(|t| matches!(t.track_type(), Ok(::mp4::TrackType::Video)))
        .collect();
    tracks.sort_by_key(|t| t.track_id());
    let Some(track) = tracks.first() else {
        return Err(MediaError::Invalid("the MP4 holds no video track".into()));
    };
    if !matches!(track.media_type(), Ok(::mp4::MediaType::H264)) {
        let name = track
            .box_type()
            .map(|b| b.to_string())
            .unwrap_or_else(|_| sample_entry_name(bytes).unwrap_or_else(|| "unknown".into()));
        return Ok(Mp4Contents::OtherCodec(name));
    }
    let (id, timescale, count) = (track.track_id(), track.timescale(), track.sample_count());
    let sps = track
        .sequence_parameter_set()
        .map_err(|e| MediaError::codec("MP4 reader", e))?
        .to_vec();
    let pps = track
        .picture_parameter_set()
        .map_err(|e| MediaError::codec("MP4 reader", e))?
        .to_vec();
    let mut units = Vec::with_capacity(count as usize);
    let mut first_duration = None;
    for sample_id in 1..=count {
        let sample = reader
            .read_sample(id, sample_id)
            .map_err(|e| MediaError::codec("MP4 reader", format!("sample {sample_id}: {e}")))?
            .ok_or_else(|| {
                MediaError::codec("MP4 reader", format!("sample {sample_id} is missing"))
            })?;
        first_duration.get_or_insert(sample.duration);
        let mut unit = Vec::with_capacity(sample.bytes.len() + sps.len() + pps.len() + 8);
        if sample_id == 1 {
            for ps in [&sps, &pps] {
                unit.extend_from_slice(&[0, 0, 0, 1]);
                unit.extend_from_slice(ps);
            }
        }
        avcc_to_annexb(&sample.bytes, &mut unit)?;
        units.push(unit);
    }
    let frames: Vec<Frame> = h264::decode(&units)?;
    let fps = match first_duration {
        Some(d) if d > 0 => (timescale as f64 / d as f64).round().max(1.0) as u32,
        _ => 1,
    };
    Ok(Mp4Contents::Decoded(Clip::new(frames, fps)?))
}

/// MP4 stores NAL units with 4-byte big-endian lengths; OpenH264 wants start codes.
fn avcc_to_annexb(mut sample: &[u8], out: &mut Vec<u8>) -> Result<()> {
    while !sample.is_empty() {
        if sample.len() < 4 {
            return Err(MediaError::codec("MP4 reader", "truncated NAL length"));
        }
        let n = u32::from_be_bytes([sample[0], sample[1], sample[2], sample[3]]) as usize;
        let nal = sample
            .get(4..4 + n)
            .ok_or_else(|| MediaError::codec("MP4 reader", "a NAL unit runs past its sample"))?;
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(nal);
        sample = &sample[4 + n..];
    }
    Ok(())
}

/// The four-character code of the first visual sample entry, for naming codecs `mp4` does not parse.
fn sample_entry_name(bytes: &[u8]) -> Option<String> {
    let at = bytes.windows(4).position(|w| w == b"stsd")?;
    let entry = bytes.get(at + 16..at + 20)?;
    Some(String::from_utf8_lossy(entry).into_owned())
}
