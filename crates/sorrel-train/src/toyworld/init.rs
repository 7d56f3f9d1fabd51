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
/// zero so the VAE is per-frame. The text encoder's attention follows T5's own initialisation (see
/// [`t5_query_std`] and [`relative_bias`]).
pub fn init_params(params: &[(String, Var)], seed: u64) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    // T5 attention heads, read off the relative-position table (buckets, heads) every UMT5 layer has,
    // and its width, off a query projection (heads x d_kv, d_model).
    let dim_of = |suffix: &str, axis: usize| {
        params
            .iter()
            .find(|(n, _)| n.ends_with(suffix))
            .and_then(|(_, v)| v.dims().get(axis).copied())
    };
    let t5_heads = dim_of("relative_attention_bias.weight", 1);
    let t5_width = dim_of("SelfAttention.q.weight", 1).unwrap_or(1);
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
            relative_bias(&mut rng, &dims, t5_width)
        } else if let (true, Some(heads)) = (name.ends_with("SelfAttention.q.weight"), t5_heads) {
            normal(&mut rng, n, t5_query_std(&dims, heads))
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

/// Standard deviation of a T5 query projection (out = heads x d_kv, in = d_model): 1/sqrt(d_model * d_kv).
///
/// T5 attention does not divide its logits by sqrt(d_kv); its initialisation does that job instead, on
/// the queries. With plain 1/fan-in queries the logits start with a standard deviation of about
/// sqrt(d_kv), every head's softmax saturates onto one token chosen by word identity alone, the gradient
/// through it vanishes and stays so: the 10,000-step model of December 2026 had exactly that, a text
/// encoder whose outputs ignored word order in most captions, so "two small blue balls ... a red floor"
/// and its colour-swapped twin reached the transformer as the same set of vectors and object and floor
/// colours were a coin flip.
fn t5_query_std(dims: &[usize], heads: usize) -> f32 {
    let d_model = dims.get(1).copied().unwrap_or(1).max(1);
    let d_kv = (dims.first().copied().unwrap_or(1) / heads.max(1)).max(1);
    1.0 / ((d_model * d_kv) as f32).sqrt()
}

/// T5's relative-position table (buckets, heads): normal with std 1/sqrt(d_model) as T5 starts it, plus
/// a locality prior on the first two heads, which start looking at the next and the previous word.
///
/// Why the prior: the transformer's cross-attention sees the prompt as a set, so which noun a colour
/// belongs to must be written into the colour's own vector by the text encoder; "red" reading its
/// neighbour ("ball" or "floor") is the shortest way to do that, and starting there spares the
/// optimiser from discovering it. The table stays trainable. Buckets follow T5's bidirectional layout:
/// bucket d for a word d places back and buckets/2 + d for one d places ahead, for small d.
fn relative_bias(rng: &mut StdRng, dims: &[usize], d_model: usize) -> Vec<f32> {
    // exp(3) = 20: about two thirds of the head on the neighbour in a 10-word caption, the rest free.
    const PRIOR: f32 = 3.0;
    let (buckets, heads) = (dims[0], dims.get(1).copied().unwrap_or(1));
    let mut v = normal(rng, buckets * heads, 1.0 / (d_model.max(1) as f32).sqrt());
    if buckets >= 4 && heads >= 2 {
        v[(buckets / 2 + 1) * heads] += PRIOR; // head 0: the next word
        v[heads + 1] += PRIOR; // head 1: the previous word
    }
    v
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
