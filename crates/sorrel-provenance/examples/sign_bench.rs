//! Time to sign and to verify C2PA credentials on a typical output: an 81-frame 832x480 H.264 MP4 (and its
//! WebP thumbnail), median of 5.
//!
//! `cargo run --release -p sorrel-provenance --example sign_bench`

use std::time::Instant;

use sorrel_media::{Clip, EncodeOptions, Format, Frame, StillFormat};
use sorrel_provenance::{sign, verify, Generation, SigningIdentity};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let (w, h) = (832u32, 480u32);
    let frames = (0..81u32)
        .map(|t| Frame {
            width: w,
            height: h,
            rgb: (0..w * h)
                .flat_map(|i| {
                    let (x, y) = (i % w + 4 * t, i / w);
                    [(x / 3) as u8, (y / 2) as u8, ((x ^ y) & 255) as u8]
                })
                .collect(),
        })
        .collect();
    let clip = Clip::new(frames, 16).unwrap();
    let mp4 = sorrel_media::encode(&Format::Mp4, &clip, &EncodeOptions::default()).unwrap();
    let thumb = sorrel_media::encode_still(&clip.frames()[40], StillFormat::WebP).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let id = SigningIdentity::local(dir.path()).unwrap();
    let anchor = id.anchor_pem.clone();
    let g = Generation {
        model: "bench".into(),
        seed: 1,
        steps: 50,
        prompt: None,
        watermark: None,
    };
    for (name, bytes, mime, frames) in [
        ("MP4 832x480x81", &mp4, "video/mp4", 81.0),
        ("WebP thumbnail", &thumb, "image/webp", 1.0),
    ] {
        let mut s = Vec::new();
        let mut v = Vec::new();
        let mut signed = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            signed = sign(bytes, mime, "x", &g, &id).unwrap();
            s.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            verify(&signed, mime, anchor.as_deref()).unwrap();
            v.push(t.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "{name}: {:.0} kB -> +{:.1} kB; sign {:.1} ms ({:.3} ms per frame), verify {:.1} ms",
            bytes.len() as f64 / 1e3,
            (signed.len() - bytes.len()) as f64 / 1e3,
            median(s.clone()),
            median(s) / frames,
            median(v)
        );
    }
}
