//! Helpers for the media tests: synthetic clips, ffprobe/ffmpeg as independent judges, PSNR.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use sorrel_media::{Clip, Frame};

/// A clip that looks like video rather than noise: a smooth diagonal gradient that drifts, with a
/// saturated disc (soft over 3 pixels) crossing the frame. Every frame differs, so no encoder may merge
/// two of them. The disc's colour edge is where 4:2:0 chroma (what every H.264 player decodes) loses
/// most, so quality tests use frames large enough for that edge to be a realistic share of the picture.
pub fn moving_clip(w: u32, h: u32, frames: usize, fps: u32) -> Clip {
    let frames = (0..frames)
        .map(|t| {
            let mut rgb = Vec::with_capacity((w * h * 3) as usize);
            let (cx, cy) = (
                w as f32 * (0.2 + 0.6 * t as f32 / frames.max(2) as f32),
                h as f32 * 0.5,
            );
            let r = w.min(h) as f32 * 0.25;
            for y in 0..h {
                for x in 0..w {
                    let g = (x + y) as f32 / (w + h) as f32;
                    let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
                    let disc = (1.0 - ((d - r) / 3.0).clamp(0.0, 1.0)) * 0.8;
                    let base = [
                        40.0 + 150.0 * g + t as f32 * 1.5,
                        60.0 + 100.0 * (1.0 - g),
                        90.0 + 60.0 * g,
                    ];
                    let fg = [230.0, 200.0, 40.0];
                    for c in 0..3 {
                        rgb.push(
                            (base[c] * (1.0 - disc) + fg[c] * disc)
                                .round()
                                .clamp(0.0, 255.0) as u8,
                        );
                    }
                }
            }
            Frame::new(w, h, rgb).unwrap()
        })
        .collect();
    Clip::new(frames, fps).unwrap()
}

/// Peak signal-to-noise ratio over all frames and channels, in dB.
pub fn psnr(a: &Clip, b: &Clip) -> f64 {
    assert_eq!(a.len(), b.len(), "frame counts differ");
    let mut se = 0.0f64;
    let mut n = 0usize;
    for (fa, fb) in a.frames().iter().zip(b.frames()) {
        assert_eq!((fa.width, fa.height), (fb.width, fb.height));
        for (x, y) in fa.rgb.iter().zip(&fb.rgb) {
            se += (*x as f64 - *y as f64).powi(2);
        }
        n += fa.rgb.len();
    }
    let mse = se / n as f64;
    if mse == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

/// PSNR of each frame on its own, in dB: catches quality that drifts over a clip.
pub fn frame_psnrs(a: &Clip, b: &Clip) -> Vec<f64> {
    assert_eq!(a.len(), b.len(), "frame counts differ");
    a.frames()
        .iter()
        .zip(b.frames())
        .map(|(fa, fb)| {
            let one = |f: &Frame| Clip::new(vec![f.clone()], 1).unwrap();
            psnr(&one(fa), &one(fb))
        })
        .collect()
}

/// Presentation time and duration of every video packet, in seconds, as ffprobe reads them. For
/// containers without a stored total (APNG), the end of the last packet is the clip's length.
pub fn packet_times(path: &Path) -> Vec<(f64, f64)> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["packet=pts_time,duration_time", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe is needed by these tests: apt-get install ffmpeg (.ci/run does)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut it = l.split(',').map(|x| x.trim().parse::<f64>().unwrap());
            (it.next().unwrap(), it.next().unwrap())
        })
        .collect()
}

/// Decodes the whole file with ffmpeg and returns what it printed at `-v error` (empty = clean).
pub fn ffmpeg_decode_errors(path: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg is needed by these tests: apt-get install ffmpeg (.ci/run does)");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Frames as ffmpeg decodes them (RGB24), for comparing what a player shows.
pub fn ffmpeg_frames(path: &Path, w: u32, h: u32, fps: u32) -> Clip {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(path)
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .expect("ffmpeg is needed by these tests");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size = (w * h * 3) as usize;
    assert_eq!(out.stdout.len() % size, 0);
    let frames = out
        .stdout
        .chunks_exact(size)
        .map(|px| Frame::new(w, h, px.to_vec()).unwrap())
        .collect();
    Clip::new(frames, fps).unwrap()
}

/// Names of the files in `dir`, sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
