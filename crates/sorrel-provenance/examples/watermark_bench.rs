//! Cost of the invisible watermark at 480p: embedding per frame, and detecting in a whole clip (frame
//! averaging, then the 101-scale tile search and decoding), on 49 textured 832x480 frames; median of 5.
//!
//! `cargo run --release -p sorrel-provenance --example watermark_bench`

use std::time::Instant;

use sorrel_provenance::watermark::{Detector, Embedder, WatermarkKey, DEFAULT_STRENGTH};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let (w, h, n) = (832, 480, 49);
    let original = sorrel_testkit::textured_frames(w, h, n, 3);
    let key = WatermarkKey::default();
    let embedder = Embedder::new(&key, 0x0123_4567_89ab_cdef, DEFAULT_STRENGTH);
    let detector = Detector::new(&key);

    let mut embed_ms = Vec::new();
    let mut detect_ms = Vec::new();
    let mut marked = original.clone();
    for _ in 0..5 {
        marked = original.clone();
        let t = Instant::now();
        for f in marked.iter_mut() {
            embedder.mark_frame(f, w, h);
        }
        embed_ms.push(t.elapsed().as_secs_f64() * 1e3 / n as f64);
        let t = Instant::now();
        let d = detector.detect(marked.iter().map(|f| &f[..]), w, h);
        detect_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(d.payload, Some(0x0123_4567_89ab_cdef));
    }
    let psnr = original
        .iter()
        .zip(&marked)
        .map(|(a, b)| sorrel_testkit::psnr(a, b))
        .fold(f64::INFINITY, f64::min);
    println!("{w}x{h}, {n} frames, median of 5");
    println!("embed:  {:.2} ms per frame", median(embed_ms));
    let d = median(detect_ms);
    println!(
        "detect: {d:.0} ms per clip ({:.2} ms per frame)",
        d / n as f64
    );
    println!("worst-frame PSNR of the marked clip: {psnr:.2} dB");
}
