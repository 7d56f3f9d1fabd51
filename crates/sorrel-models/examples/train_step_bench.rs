//! One flow-matching training step of the Wan transformer at the embedded model's candidate size (the
//! toy-world recipe of `shared/reference/TOYWORLD.md`: 4 heads x 32, 6 layers, ffn 512, text width 128,
//! 8 latent channels, patch (1,2,2) over 5x8x8 latents = 80 tokens, 16 text tokens, batch 64), timed as
//! forward, backward and an AdamW update; median of 5 after 2 warm-up steps.
//!
//! `cargo run --release -p sorrel-models --example train_step_bench`
//! PyTorch side by side: `tools/reference/bench_train_step.py`.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use sorrel_models::wan::config::WanTransformerConfig;
use sorrel_models::wan::transformer::WanTransformer3DModel;

/// Batch and latent frames of the toy-world recipe; `BENCH_BATCH` and `BENCH_LATENT_FRAMES` override them
/// to size other recipes.
fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
const TEXT_LEN: usize = 16;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Multiply-adds of one forward, counted over the matrix products (everything else is a few percent).
fn forward_flops(cfg: &WanTransformerConfig, batch: usize, tokens: usize) -> f64 {
    let (b, s, l) = (batch as f64, tokens as f64, TEXT_LEN as f64);
    let d = cfg.inner_dim() as f64;
    let f = cfg.ffn_dim as f64;
    let per_block = 4.0 * s * d * d      // self-attention q, k, v, out
        + 2.0 * s * s * d                // scores and weighted sum
        + 2.0 * s * d * d + 2.0 * l * d * d // cross-attention q, out; k, v over the text
        + 2.0 * s * l * d
        + 2.0 * s * d * f; // feed-forward
    2.0 * b * per_block * cfg.num_layers as f64
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let batch = env_or("BENCH_BATCH", 64);
    let latent = (8, env_or("BENCH_LATENT_FRAMES", 5), 8, 8);
    let cfg: WanTransformerConfig = serde_json::from_value(serde_json::json!({
        "num_attention_heads": 4, "attention_head_dim": 32, "in_channels": latent.0,
        "out_channels": latent.0, "text_dim": 128, "ffn_dim": 512, "num_layers": 6,
        "rope_max_seq_len": 32
    }))
    .expect("config");
    let varmap = VarMap::new();
    let model =
        WanTransformer3DModel::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    for var in varmap.all_vars() {
        let t = var.as_tensor();
        var.set(&(t.randn_like(0.0, 0.02)?))?;
    }
    let params: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 5e-4,
            ..Default::default()
        },
    )?;
    let (c, f, h, w) = latent;
    let tokens = f * (h / 2) * (w / 2);
    let (mut fw, mut bw, mut up) = (Vec::new(), Vec::new(), Vec::new());
    for step in 0..7 {
        let x0 = Tensor::randn(0f32, 1.0, (batch, c, f, h, w), &dev)?;
        let noise = x0.randn_like(0.0, 1.0)?;
        let sigma = Tensor::rand(0f32, 1.0, batch, &dev)?;
        let s = sigma.reshape((batch, 1, 1, 1, 1))?;
        let xt = (x0.broadcast_mul(&(1.0 - &s)?)? + noise.broadcast_mul(&s)?)?;
        let text = Tensor::randn(0f32, 1.0, (batch, TEXT_LEN, 128), &dev)?;
        let t0 = Instant::now();
        let pred = model.forward(&xt, &(sigma * 1000.0)?, &text)?;
        let loss = (pred - (noise - x0)?)?.sqr()?.mean_all()?;
        let _ = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        opt.step(&grads)?;
        let t3 = Instant::now();
        if step >= 2 {
            fw.push((t1 - t0).as_secs_f64());
            bw.push((t2 - t1).as_secs_f64());
            up.push((t3 - t2).as_secs_f64());
        }
    }
    let (fw, bw, up) = (median(fw), median(bw), median(up));
    let total = fw + bw + up;
    let flops = forward_flops(&cfg, batch, tokens);
    println!(
        "Wan transformer, {params} parameters, batch {batch} x {tokens} tokens, text {TEXT_LEN}, f32"
    );
    println!(
        "forward {fw:.3} s ({:.1} GFLOP/s), backward {bw:.3} s, AdamW {up:.3} s; step {total:.3} s = {:.0} clips/s ({:.1} GFLOP/s counting backward as 2x forward)",
        flops / fw / 1e9,
        batch as f64 / total,
        3.0 * flops / (fw + bw) / 1e9
    );
    Ok(())
}
