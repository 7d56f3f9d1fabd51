//! Time and peak memory of generating one clip with a model folder at its own defaults (the embedded
//! toy-world model: 32x32, 8 frames, 25 Euler steps, guidance 4), median of RUNS after one warm-up.
//!
//! `cargo run --release -p sorrel-pipeline --example generate_bench -- MODEL_DIR [RUNS] [NOISE.safetensors]`
//! diffusers side by side: `tools/reference/run_toyworld_model.py MODEL_DIR OUT.safetensors RUNS`, whose
//! output can be passed as NOISE so both start from the same latents.

use std::time::Instant;

use sorrel_pipeline::{GenerateRequest, LoadOptions, WanPipeline};

/// Peak resident memory of this process (Linux `VmHWM`), in MB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As the `sorrel` binary runs, so the benchmark measures what users get.
    // SAFETY: first thing in `main`, before any thread exists.
    unsafe { sorrel_core::threads::pin_thread_counts() };
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .get(1)
        .ok_or("usage: generate_bench MODEL_DIR [RUNS] [NOISE]")?;
    let runs: usize = args.get(2).map_or(Ok(3), |r| r.parse())?;
    let init_latents = match args.get(3) {
        Some(p) => Some(
            candle_core::safetensors::load(p, &candle_core::Device::Cpu)?
                .remove("latents")
                .ok_or("no `latents` tensor in the noise file")?,
        ),
        None => None,
    };
    let t0 = Instant::now();
    let pipe = WanPipeline::load(std::path::Path::new(dir), &LoadOptions::default())?;
    let load = t0.elapsed().as_secs_f64();
    let d = pipe.info.defaults.clone();
    let req = GenerateRequest {
        prompt: "two small red balls bounce on a blue floor".into(),
        width: d.width,
        height: d.height,
        frames: d.frames,
        steps: d.steps,
        guidance: d.guidance,
        init_latents,
        ..GenerateRequest::default()
    };
    pipe.generate(&req, &mut |_| true)?;
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        pipe.generate(&req, &mut |_| true)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "sorrel: load {load:.3} s; {runs} runs, median {:.3} s per clip ({}x{}, {} frames, {} steps, guidance {}); peak RSS {:.0} MB",
        times[times.len() / 2],
        d.width,
        d.height,
        d.frames,
        d.steps,
        d.guidance,
        peak_rss_mb()
    );
    Ok(())
}
