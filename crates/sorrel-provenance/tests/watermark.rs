//! The invisible watermark through real transforms: Sorrel's MP4 re-encoded, resized, cropped, re-timed and
//! trimmed by Debian's ffmpeg, read back the way `sorrel verify` reads files, and decoded exactly. Also:
//! invisibility (PSNR) and no false positives on 200 unmarked clips.

use std::path::Path;

use sorrel_media::{Clip, EncodeOptions, Format, Frame};
use sorrel_provenance::watermark::{
    false_positive_bound, Detector, Embedder, WatermarkKey, DEFAULT_STRENGTH,
};
use sorrel_testkit::{ffmpeg_transcode, psnr, textured_frames};

const PAYLOAD: u64 = 0x5eed_c0de_2026_1202;
const W: usize = 832;
const H: usize = 480;

fn marked(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let e = Embedder::new(&WatermarkKey::default(), PAYLOAD, DEFAULT_STRENGTH);
    frames
        .iter()
        .map(|f| {
            let mut f = f.clone();
            e.mark_frame(&mut f, W, H);
            f
        })
        .collect()
}

fn detect_file(path: &Path) -> sorrel_provenance::watermark::Detection {
    let clip = sorrel_media::read_video(path).unwrap();
    let (w, h) = (clip.width() as usize, clip.height() as usize);
    Detector::new(&WatermarkKey::default()).detect(clip.frames().iter().map(|f| &f.rgb[..]), w, h)
}

/// 65 frames at 16 fps (4.06 s), so that two seconds trimmed off still leave two.
#[test]
fn payload_survives_reencoding_resizing_cropping_retiming_and_trimming() {
    let original = textured_frames(W, H, 65, 11);
    let frames = marked(&original);
    let worst = original
        .iter()
        .zip(&frames)
        .map(|(a, b)| psnr(a, b))
        .fold(f64::INFINITY, f64::min);
    assert!(
        worst >= 40.0,
        "watermark too visible: worst frame {worst:.2} dB"
    );
    eprintln!("PSNR of the marked frames: worst {worst:.2} dB");

    let dir = tempfile::tempdir().unwrap();
    let clip = Clip::new(
        frames
            .into_iter()
            .map(|f| Frame::new(W as u32, H as u32, f).unwrap())
            .collect(),
        16,
    )
    .unwrap();
    let src = dir.path().join("marked.mp4");
    let bytes = sorrel_media::encode(&Format::Mp4, &clip, &EncodeOptions::default()).unwrap();
    std::fs::write(&src, bytes).unwrap();

    let x264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p"];
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("sorrel's own mp4", vec![]),
        ("h264 crf 23", [&x264[..], &["-crf", "23"]].concat()),
        ("h264 crf 28", [&x264[..], &["-crf", "28"]].concat()),
        (
            "75% resize + crf 23",
            [&["-vf", "scale=624:360"][..], &x264, &["-crf", "23"]].concat(),
        ),
        (
            "16 px cropped off every edge",
            [
                &["-vf", "crop=iw-32:ih-32:16:16"][..],
                &x264,
                &["-crf", "23"],
            ]
            .concat(),
        ),
        (
            "16 to 24 fps",
            [&["-vf", "fps=24"][..], &x264, &["-crf", "23"]].concat(),
        ),
        (
            "first 2 s trimmed",
            [&["-ss", "2"][..], &x264, &["-crf", "23"]].concat(),
        ),
    ];
    let mut failures = Vec::new();
    for (i, (name, args)) in cases.iter().enumerate() {
        let path = if args.is_empty() {
            src.clone()
        } else {
            let p = dir.path().join(format!("case{i}.mp4"));
            ffmpeg_transcode(&src, &p, args);
            p
        };
        let d = detect_file(&path);
        eprintln!(
            "{name}: {} frames, sync {:.1}, scale {:.3}, payload {:?}, bit accuracy {:?}",
            d.frames,
            d.sync_score,
            d.scale,
            d.payload.map(|p| format!("{p:016x}")),
            d.bit_accuracy
        );
        if d.payload != Some(PAYLOAD) {
            failures.push(*name);
        }
    }
    assert!(failures.is_empty(), "payload lost after: {failures:?}");
}

/// 200 unmarked clips of different content never give a payload; nor does a clip marked under another key.
#[test]
fn unmarked_clips_are_never_detected() {
    let detector = Detector::new(&WatermarkKey::default());
    let mut scores = Vec::new();
    for seed in 0..200u64 {
        let frames = textured_frames(416, 240, 3, 1000 + seed);
        let d = detector.detect(frames.iter().map(|f| &f[..]), 416, 240);
        assert!(!d.detected, "clip {seed}: false positive {d:?}");
        scores.push(d.sync_score);
    }
    scores.sort_by(f64::total_cmp);
    eprintln!(
        "200 unmarked clips: 0 detected; sync score median {:.2}, max {:.2}; theoretical bound per clip {:.2e}",
        scores[100],
        scores[199],
        3.0 * false_positive_bound()
    );

    // Degenerate pictures: flat frames carry no detail at all.
    for (w, h, v) in [(8, 8, 0u8), (W, H, 128), (W, H, 255)] {
        let flat = vec![v; w * h * 3];
        let d = detector.detect([&flat[..]], w, h);
        assert!(!d.detected, "flat {w}x{h} of {v}: {d:?}");
    }

    let other = Embedder::new(
        &WatermarkKey::new("someone else's key"),
        PAYLOAD,
        DEFAULT_STRENGTH,
    );
    let mut frames = textured_frames(W, H, 8, 5);
    for f in frames.iter_mut() {
        other.mark_frame(f, W, H);
    }
    let d = detector.detect(frames.iter().map(|f| &f[..]), W, H);
    assert!(!d.detected, "another key's mark read as ours: {d:?}");
    let d = Detector::new(&WatermarkKey::new("someone else's key")).detect(
        frames.iter().map(|f| &f[..]),
        W,
        H,
    );
    assert_eq!(d.payload, Some(PAYLOAD), "{d:?}");
}
