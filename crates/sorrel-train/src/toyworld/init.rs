//! Initial weights, drawn from a seeded generator so that a training run is reproducible (candle's CPU
//! `randn` cannot be seeded).

use candle_core::{Tensor, Var};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use crate::Result;

/// Sets every parameter by its name and shape: biases 0, norm gains 1, weights normal with variance
/// 1/fan-in; output projections start at zero so every block starts as the identity and the transformer
/// predicts zero; causal-conv taps before the current frame start (and, fed only single frames, stay) at
/// zero so the VAE is per-frame.
pub fn init_params(params: &[(String, Var)], seed: u64) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    for (name, var) in params {
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let values: Vec<f32> = if leaf == "bias" {
            vec![0.0; n]
        } else if leaf == "gamma" || dims.len() == 1 {
            vec![1.0; n]
        } else if name.ends_with("proj_out.weight") {
            vec![0.0; n]
        } else if name.ends_with("scale_shift_table") {
            normal(
                &mut rng,
                n,
                1.0 / (*dims.last().unwrap_or(&1) as f32).sqrt(),
            )
        } else if name.ends_with("relative_attention_bias.weight") {
            normal(&mut rng, n, 0.02)
        } else if name.ends_with("shared.weight") || name.ends_with("embed_tokens.weight") {
            normal(&mut rng, n, 1.0)
        } else if dims.len() == 5 && dims[2] > 1 && !name.contains("patch_embedding") {
            // (Cout, Cin, kt, kh, kw): only the last (current-frame) tap is non-zero.
            let (kt, plane) = (dims[2], dims[3] * dims[4]);
            let std = 1.0 / ((dims[1] * plane) as f32).sqrt();
            let mut v = normal(&mut rng, n, std);
            for (i, x) in v.iter_mut().enumerate() {
                if (i / plane) % kt != kt - 1 {
                    *x = 0.0;
                }
            }
            v
        } else {
            let fan_in: usize = dims[1..].iter().product();
            normal(&mut rng, n, 1.0 / (fan_in.max(1) as f32).sqrt())
        };
        var.set(&Tensor::from_vec(values, dims.as_slice(), var.device())?)?;
    }
    Ok(())
}

fn normal(rng: &mut StdRng, n: usize, std: f32) -> Vec<f32> {
    let d = Normal::new(0.0f32, std).expect("positive std");
    (0..n).map(|_| d.sample(rng)).collect()
}

/// Named variables of a VarMap in name order (VarMap is a HashMap; the order must not depend on hashing).
pub fn sorted_vars(varmap: &candle_nn::VarMap, prefix: &str) -> Vec<(String, Var)> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut v: Vec<(String, Var)> = data
        .iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}
