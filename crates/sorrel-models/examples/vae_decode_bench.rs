//! Times one decode of a Wan VAE folder (Wan2.1's or Wan2.2's) on the latents `tools/reference/bench_wan22.py`
//! saved, and compares the video with diffusers' on the same weights. Run it in its own process
//! (`/usr/bin/time -v` for peak RSS).
//!
//! `cargo run --release -p sorrel-models --example vae_decode_bench -- VAE_DIR INPUTS OTHER RUNS [bf16] [tiled]`:
//! INPUTS holds `z` (de-normalised latents), OTHER diffusers' video (`out`); `bf16` loads the weights in bf16 and
//! decodes with bf16 activations (f32 sums); `tiled` decodes in diffusers' default tiles (256 pixels every 192).

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device};
use sorrel_core::TensorSource;
use sorrel_models::wan::vae::{AutoencoderKLWan, VaeConfig};

fn main() -> anyhow::Result<()> {
    // As the `sorrel` binary runs, so the benchmark measures what users get.
    // SAFETY: first thing in `main`, before any thread exists.
    unsafe { sorrel_core::threads::pin_thread_counts() };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: vae_decode_bench VAE_DIR INPUTS OTHER RUNS [bf16] [tiled]";
    let [dir, inputs, other, runs, options @ ..] = &args[..] else {
        anyhow::bail!(usage);
    };
    if options.iter().any(|o| o != "bf16" && o != "tiled") {
        anyhow::bail!(usage);
    }
    let dtype = if options.iter().any(|o| o == "bf16") {
        DType::BF16
    } else {
        DType::F32
    };
    let tiling = options
        .iter()
        .any(|o| o == "tiled")
        .then(sorrel_models::wan::vae::Tiling::default);
    let dev = Device::Cpu;
    let t0 = Instant::now();
    let cfg = VaeConfig::from_file(&Path::new(dir).join("config.json"))?;
    let vb = TensorSource::open_dir(Path::new(dir), "diffusion_pytorch_model")?
        .into_var_builder(dtype, &dev);
    let vae = AutoencoderKLWan::new(&cfg, vb)?;
    println!("load {:.2}s", t0.elapsed().as_secs_f64());
    let z = candle_core::safetensors::load(inputs, &dev)?["z"].clone();
    let mut times = vec![];
    let mut y = None;
    for _ in 0..runs.parse::<usize>()? {
        let t1 = Instant::now();
        y = Some(match &tiling {
            Some(t) => vae.decode_tiled(&z, t)?,
            None => vae.decode(&z)?,
        });
        times.push(t1.elapsed().as_secs_f64());
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "decode median {:.2}s (runs {times:.2?})",
        sorted[sorted.len() / 2]
    );
    if let Some(y) = y {
        let theirs = candle_core::safetensors::load(other, &dev)?["out"].clone();
        let diff = (&y - &theirs)?;
        let err = diff.abs()?.max_all()?.to_scalar::<f32>()?;
        // PSNR over [-1, 1] (peak-to-peak 2), for lossy (bf16) decodes.
        let mse = diff.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
        let psnr = 10.0 * (4.0 / mse).log10();
        println!(
            "video {:?}, max abs error vs diffusers: {err:e}, PSNR {psnr:.1} dB",
            y.dims()
        );
    }
    Ok(())
}
