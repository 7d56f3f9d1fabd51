//! Measures the working memory of a Wan VAE decode and of one transformer forward: the peak resident memory
//! during the call above what was resident before it, with random full-size weights made in memory (the
//! values do not change how much is allocated). It calibrates `sorrel_pipeline::memory`, which refuses a
//! request too large for the machine before it starts. The kernel's peak counter is reset before each call
//! (`/proc/self/clear_refs`), so each line is that call's own peak.
//!
//! ```sh
//! cargo run --release -p sorrel-models --example memory_probe -- vae WIDTH HEIGHT [f32|bf16]
//! cargo run --release -p sorrel-models --example memory_probe -- transformer LAYERS FRAMES WIDTH HEIGHT f32|bf16 BATCH
//! ```
//! `vae` decodes two latent frames (five frames: the peak is the second piece's four) with Wan2.1's VAE;
//! `transformer` runs Wan2.1-1.3B's width and heads with LAYERS blocks (activations are freed block by block,
//! so the peak does not depend on the count) on FRAMES latent frames at WIDTHxHEIGHT pixels.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sorrel_models::wan::config::WanTransformerConfig;
use sorrel_models::wan::transformer::WanTransformer3DModel;
use sorrel_models::wan::vae::{AutoencoderKLWan, VaeConfig};

fn status(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// Runs `f` and returns its peak resident memory above what was resident before, in bytes.
fn working<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, u64)> {
    std::fs::write("/proc/self/clear_refs", "5")?;
    let before = status("VmRSS:");
    let out = f()?;
    Ok((out, status("VmHWM:").saturating_sub(before)))
}

/// Random weights for whatever `build` asks for, as plain tensors. Built twice: the first pass records the
/// names and shapes in a `VarMap`; the second reads detached copies, because a tensor computed from a `Var`
/// keeps its whole graph alive for backpropagation and would inflate what is measured.
fn random<T>(
    dtype: DType,
    dev: &Device,
    build: impl Fn(VarBuilder) -> candle_core::Result<T>,
) -> anyhow::Result<T> {
    let map = VarMap::new();
    build(VarBuilder::from_varmap(&map, dtype, dev))?;
    let tensors: std::collections::HashMap<String, Tensor> = map
        .data()
        .lock()
        .expect("var map")
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect();
    Ok(build(VarBuilder::from_tensors(tensors, dtype, dev))?)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dev = Device::Cpu;
    let gb = |b: u64| b as f64 / 1e9;
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["vae", w, h] | ["vae", w, h, _] => {
            let dtype = if args.get(3).map(String::as_str) == Some("bf16") {
                DType::BF16
            } else {
                DType::F32
            };
            let (w, h): (usize, usize) = (w.parse()?, h.parse()?);
            let cfg = VaeConfig::default();
            let vae = random(dtype, &dev, |vb| AutoencoderKLWan::new(&cfg, vb))?;
            let z = Tensor::randn(0f32, 1.0, (1, cfg.z_dim, 2, h / 8, w / 8), &dev)?;
            let (video, bytes) = working(|| Ok(vae.decode(&z)?))?;
            let chunk = 4 * w * h * cfg.base_dim * cfg.dim_mult[0] * dtype.size_in_bytes();
            println!(
                "vae {w}x{h} {dtype:?}: output {:?}, working {:.3} GB = {:.2} x one 4-frame full-resolution tensor ({:.3} GB)",
                video.dims(),
                gb(bytes),
                bytes as f64 / chunk as f64,
                gb(chunk as u64)
            );
        }
        ["transformer", layers, frames, w, h, dtype, batch] => {
            let dtype = if dtype == "bf16" { DType::BF16 } else { DType::F32 };
            let (frames, w, h, batch): (usize, usize, usize, usize) =
                (frames.parse()?, w.parse()?, h.parse()?, batch.parse()?);
            let cfg: WanTransformerConfig = serde_json::from_value(serde_json::json!({
                "num_attention_heads": 12, "attention_head_dim": 128, "ffn_dim": 8960,
                "num_layers": layers.parse::<usize>()?, "text_dim": 4096, "in_channels": 16,
                "out_channels": 16, "freq_dim": 256, "patch_size": [1, 2, 2],
            }))?;
            let model = random(dtype, &dev, |vb| WanTransformer3DModel::new(&cfg, vb))?;
            let x = Tensor::randn(0f32, 1.0, (batch, 16, frames, h / 8, w / 8), &dev)?.to_dtype(dtype)?;
            let t = Tensor::new(&vec![999f32; batch][..], &dev)?;
            let ctx = Tensor::randn(0f32, 1.0, (batch, 512, 4096), &dev)?.to_dtype(dtype)?;
            let tokens = frames * (h / 16) * (w / 16);
            let (_, bytes) = working(|| Ok(model.forward(&x, &t, &ctx)?))?;
            println!(
                "transformer {layers} layers, {tokens} tokens x batch {batch}, {dtype:?}: working {:.3} GB",
                gb(bytes)
            );
        }
        _ => anyhow::bail!(
            "usage: memory_probe vae WIDTH HEIGHT [f32|bf16] | transformer LAYERS FRAMES WIDTH HEIGHT f32|bf16 BATCH"
        ),
    }
    Ok(())
}
