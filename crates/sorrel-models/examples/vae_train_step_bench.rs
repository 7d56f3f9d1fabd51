//! One training step of the Wan video VAE at the embedded model's candidate size (the toy-world recipe of
//! `shared/reference/TOYWORLD.md`: base_dim 16, z_dim 8, dim_mult [1,2,4], one residual block, time
//! halved twice: 4x time, 4x space), on 17-frame 32x32 clips, batch 16: encode, decode the posterior mean,
//! L1 + L2 loss, backward, AdamW; median of 3 after 1 warm-up step.
//!
//! `cargo run --release -p sorrel-models --example vae_train_step_bench`
//! PyTorch side by side: `tools/reference/bench_vae_train_step.py`.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use sorrel_models::wan::vae::{AutoencoderKLWan, VaeConfig};

const BATCH: usize = 16;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let cfg = VaeConfig {
        base_dim: 16,
        z_dim: 8,
        dim_mult: vec![1, 2, 4],
        num_res_blocks: 1,
        temperal_downsample: vec![true, true],
        latents_mean: vec![0.0; 8],
        latents_std: vec![1.0; 8],
        ..VaeConfig::default()
    };
    let varmap = VarMap::new();
    let vae = AutoencoderKLWan::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    for var in varmap.all_vars() {
        let t = var.as_tensor();
        // Norm scales at 1, everything else small and random.
        let v = if t.rank() == 1 || t.dims().iter().skip(1).all(|&d| d == 1) {
            t.ones_like()?
        } else {
            t.randn_like(0.0, 0.05)?
        };
        var.set(&v)?;
    }
    let params: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 1e-3,
            ..Default::default()
        },
    )?;
    let (mut fw, mut bw) = (Vec::new(), Vec::new());
    let mut latent = Vec::new();
    for step in 0..4 {
        let x = Tensor::rand(-1f32, 1.0, (BATCH, 3, 17, 32, 32), &dev)?;
        let t0 = Instant::now();
        let (mean, _logvar) = vae.encode(&x)?;
        latent = mean.dims().to_vec();
        let y = vae.decode(&mean)?;
        let d = (y - &x)?;
        let loss = (d.abs()?.mean_all()? + d.sqr()?.mean_all()?)?;
        let _ = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        opt.step(&grads)?;
        let t2 = Instant::now();
        if step >= 1 {
            fw.push((t1 - t0).as_secs_f64());
            bw.push((t2 - t1).as_secs_f64());
        }
    }
    let (fw, bw) = (median(fw), median(bw));
    println!("Wan VAE, {params} parameters, batch {BATCH} x 17x32x32 -> latents {latent:?}, f32");
    println!(
        "forward {fw:.3} s, backward + AdamW {bw:.3} s; step {:.3} s = {:.0} clips/s",
        fw + bw,
        BATCH as f64 / (fw + bw)
    );
    Ok(())
}
