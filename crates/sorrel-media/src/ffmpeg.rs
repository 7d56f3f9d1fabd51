//! The optional system-ffmpeg path: decoding video formats this crate does not decode itself (AV1,
//! VP9, HEVC, ProRes, ...) when an `ffmpeg` and `ffprobe` are on the PATH. Sorrel never needs them to
//! write files; this only widens what it can read.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::clip::{Clip, Frame};
use crate::error::{MediaError, Result};

/// Whether `ffmpeg` and `ffprobe` can be run.
pub fn available() -> bool {
    ["ffmpeg", "ffprobe"].iter().all(|p| {
        Command::new(p)
            .arg("-version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Decodes the first video stream of `path` to RGB frames with ffmpeg.
pub(crate) fn read(path: &Path) -> Result<Clip> {
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["stream=width,height,r_frame_rate", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .map_err(|e| MediaError::io("cannot run ffprobe on", path, e))?;
    let text = String::from_utf8_lossy(&probe.stdout);
    let fields: Vec<&str> = text.trim().split(',').collect();
    let parsed = match fields.as_slice() {
        [w, h, rate] => w
            .parse::<u32>()
            .ok()
            .zip(h.parse::<u32>().ok())
            .zip(parse_rate(rate)),
        _ => None,
    };
    let Some(((w, h), fps)) = parsed else {
        return Err(MediaError::codec(
            "ffprobe",
            format!(
                "found no video stream in {}: {}",
                path.display(),
                String::from_utf8_lossy(&probe.stderr).trim()
            ),
        ));
    };
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(path)
        .args(["-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .map_err(|e| MediaError::io("cannot run ffmpeg on", path, e))?;
    if !out.status.success() {
        return Err(MediaError::codec(
            "ffmpeg",
            format!(
                "could not decode {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let size = w as usize * h as usize * 3;
    let frames = out
        .stdout
        .chunks_exact(size)
        .map(|px| Frame::new(w, h, px.to_vec()))
        .collect::<Result<Vec<_>>>()?;
    Clip::new(frames, fps)
}

/// `"16/1"` to 16; rates that are not whole are rounded.
fn parse_rate(rate: &str) -> Option<u32> {
    let (n, d) = rate.split_once('/').unwrap_or((rate, "1"));
    let (n, d) = (n.parse::<f64>().ok()?, d.parse::<f64>().ok()?);
    (d > 0.0 && n > 0.0).then(|| (n / d).round().max(1.0) as u32)
}
