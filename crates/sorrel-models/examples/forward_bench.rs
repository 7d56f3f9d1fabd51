//! Times one Wan transformer forward from safetensors (diffusers names) or a GGUF file (original names, as
//! ComfyUI-GGUF ships), on inputs saved by `tools/reference/bench_transformer.py`, and compares the output
//! with PyTorch's fp32 one. Run each configuration in its own process (`/usr/bin/time -v` for peak RSS).
//!
//! `cargo run --release -p sorrel-models --example forward_bench -- TRANSFORMER_DIR WEIGHTS INPUTS f32|bf16 RUNS
//! [OTHER.safetensors]` where WEIGHTS is TRANSFORMER_DIR itself or a .gguf file (`QUANT=q8_0` in the
//! environment quantizes the matrices as they load, as `--quant` does; `LAYERS=N` keeps the first N blocks), and
//! OTHER holds another program's output on the same weights (`out`, as `tools/reference/bench_gguf.py` writes)
//! to compare with.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use sorrel_core::TensorSource;
use sorrel_models::wan::config::WanTransformerConfig;
use sorrel_models::wan::convert::transformer_key_to_original;
use sorrel_models::wan::transformer::WanTransformer3DModel;

fn main() -> anyhow::Result<()> {
    // As the `sorrel` binary runs, so the benchmark measures what users get.
    // SAFETY: first thing in `main`, before any thread exists.
    unsafe { sorrel_core::threads::pin_thread_counts() };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (args, other) = match args.len() {
        6 => (&args[..5], Some(args[5].clone())),
        _ => (&args[..], None),
    };
    let [dir, weights, inputs, dtype, runs] = args else {
        anyhow::bail!(
            "usage: forward_bench TRANSFORMER_DIR WEIGHTS INPUTS f32|bf16 RUNS [OTHER.safetensors]"
        );
    };
    let dtype = match dtype.as_str() {
        "bf16" => DType::BF16,
        _ => DType::F32,
    };
    let dev = Device::Cpu;
    let t0 = Instant::now();
    let mut cfg = WanTransformerConfig::from_diffusers_file(&Path::new(dir).join("config.json"))?;
    // LAYERS=N: the first N blocks only, as `bench_transformer.py --layers N` (long sequences).
    if let Some(n) = std::env::var("LAYERS").ok().and_then(|v| v.parse().ok()) {
        cfg.num_layers = n;
    }
    let src = if weights.ends_with(".gguf") {
        TensorSource::open(&[PathBuf::from(weights)])?
            .with_rename(Arc::new(|n: &str| transformer_key_to_original(n)))
    } else {
        TensorSource::open_dir(Path::new(weights), "diffusion_pytorch_model")?
    };
    let quantized = src.quantized_weights();
    let vb = src.into_var_builder(dtype, &dev);
    let quant = std::env::var("QUANT")
        .ok()
        .map(|q| sorrel_core::gguf::parse_quant(&q))
        .transpose()?;
    let model = sorrel_core::gguf::with_quantized(quantized, || {
        sorrel_core::gguf::with_quantize_on_load(quant, || WanTransformer3DModel::new(&cfg, vb))
    })?;
    println!(
        "load {:.2}s, resident after loading {}",
        t0.elapsed().as_secs_f64(),
        rss()
    );
    let saved = candle_core::safetensors::load(inputs, &dev)?;
    let (x, t, ctx) = (
        saved["x"].to_dtype(dtype)?,
        saved["t"].clone(),
        saved["context"].to_dtype(dtype)?,
    );
    let mut times = vec![];
    let mut y = None;
    for _ in 0..runs.parse::<usize>()? {
        let t1 = Instant::now();
        y = Some(model.forward(&x, &t, &ctx)?);
        times.push(t1.elapsed().as_secs_f64());
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "forward median {:.2}s (runs {:?})",
        sorted[sorted.len() / 2],
        times
            .iter()
            .map(|t| (t * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    );
    let y = y.map(|y| y.to_dtype(DType::F32)).transpose()?;
    if let (Some(y), Some(other)) = (&y, other) {
        let theirs = candle_core::safetensors::load(&other, &dev)?["out"].clone();
        let err = (y - &theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = theirs.abs()?.max_all()?.to_scalar::<f32>()?;
        println!(
            "max abs error / max abs value vs {other}: {:e}",
            err / scale
        );
    }
    if let (Some(y), Some(want)) = (y, saved.get("out_fp32")) {
        let err = (&y - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
        println!(
            "max abs error / max abs value vs PyTorch fp32: {:e}",
            err / scale
        );
    }
    Ok(())
}

/// This process's resident memory now (VmRSS), for what stays after loading.
fn rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.trim_start_matches("VmRSS:").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
