//! Encode speed of every writer, in frames per second (median of several runs), at 256x256 and 832x480,
//! 81 frames at 16 fps (a Wan2.1 clip). A benchmark, not a test: numbers go to docs/benchmarks.md.
//!
//! `cargo run --release -p sorrel-media --example encode_bench [RUNS] [FRAMES_DIR]`
//!
//! With FRAMES_DIR, the frames are also written there as `frames_WxH.npy` (uint8, F x H x W x 3) so
//! `tools/reference/bench_encode.py` can time diffusers' `export_to_video` on the very same pictures,
//! and the 832x480 clip as `sorrel_q{40,55,75}.mp4`, so the script can compare quality at each size.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use sorrel_media::{encode, Clip, EncodeOptions, Format, VideoCodec};

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args
        .next()
        .map_or(3, |r| r.parse().expect("RUNS is a number"));
    let dump = args.next();
    let formats: Vec<(&str, Format, EncodeOptions)> = vec![
        ("mp4 h264 q75", Format::Mp4, EncodeOptions::default()),
        (
            "mp4 av1 q75 speed10",
            Format::Mp4,
            EncodeOptions {
                codec: VideoCodec::Av1,
                ..Default::default()
            },
        ),
        (
            "webm av1 q75 speed10",
            Format::Webm,
            EncodeOptions::default(),
        ),
        ("gif", Format::Gif, EncodeOptions::default()),
        ("apng", Format::Apng, EncodeOptions::default()),
        ("webp lossy q75", Format::WebP, EncodeOptions::default()),
    ];
    println!("| size | format | frames/s (median of {runs}) | ms/frame | file kB |");
    println!("|---|---|---|---|---|");
    for (w, h) in [(256u32, 256u32), (832, 480)] {
        let clip = common::moving_clip(w, h, 81, 16);
        if let Some(dir) = &dump {
            write_npy_u8(&format!("{dir}/frames_{w}x{h}.npy"), &clip);
            for quality in [40, 55, 75] {
                let opts = EncodeOptions {
                    quality,
                    ..Default::default()
                };
                let path = format!("{dir}/sorrel_q{quality}_{w}x{h}.mp4");
                sorrel_media::write_video(path.as_ref(), &clip, &opts).expect("write mp4");
            }
        }
        for (name, format, opts) in &formats {
            let mut times = Vec::with_capacity(runs);
            let mut size = 0;
            for _ in 0..runs {
                let t = Instant::now();
                size = encode(format, &clip, opts).expect("encode").len();
                times.push(t.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            let median = times[runs / 2];
            println!(
                "| {w}x{h} | {name} | {:.1} | {:.1} | {:.1} |",
                clip.len() as f64 / median,
                median * 1000.0 / clip.len() as f64,
                size as f64 / 1000.0
            );
        }
    }
}

/// The frames as a NumPy uint8 array (F, H, W, 3), for the side-by-side Python run.
fn write_npy_u8(path: &str, clip: &Clip) {
    let shape = [clip.len(), clip.height() as usize, clip.width() as usize, 3];
    let mut out = sorrel_media::npy_header("|u1", &shape);
    for f in clip.frames() {
        out.extend_from_slice(&f.rgb);
    }
    std::fs::write(path, out).expect("write frames");
}
