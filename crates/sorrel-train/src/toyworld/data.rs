//! Training data from the procedural world: nothing on disk, every batch a function of (seed, step), so a
//! resumed run sees the same data as an uninterrupted one.

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sorrel_toyworld::{caption_styled, render, CaptionStyle, Scene, Split, WorldSize};

use crate::Result;

/// Scene seeds of the training clips start here; evaluation uses [`EVAL_SEEDS`] upward, never seen in training.
pub const TRAIN_SEEDS: u64 = 0;
/// First scene seed of evaluation prompts.
pub const EVAL_SEEDS: u64 = 1_000_000_000;

/// A generator for step `step` of stage `stage` of a run with `seed`.
pub fn step_rng(seed: u64, stage: u64, step: u64) -> StdRng {
    let mix = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(stage.wrapping_mul(0xC2B2_AE3D_27D4_EB4F))
        .wrapping_add(step);
    StdRng::seed_from_u64(mix)
}

/// RGB8 frames as f32 in [-1, 1], (3, F, H, W).
pub fn frames_to_tensor(frames: &[Vec<u8>], size: usize, device: &Device) -> Result<Tensor> {
    let f = frames.len();
    let mut data = vec![0f32; 3 * f * size * size];
    for (t, frame) in frames.iter().enumerate() {
        for (i, px) in frame.chunks_exact(3).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                data[(c * f + t) * size * size + i] = v as f32 / 127.5 - 1.0;
            }
        }
    }
    Ok(Tensor::from_vec(data, (3, f, size, size), device)?)
}

/// A batch of single frames for the VAE: images (B, 3, 1, H, W) and per-pixel loss weights (B, 1, 1, H, W),
/// 10 on object pixels and 1 elsewhere (objects are a small share of the frame but all that matters).
pub fn vae_batch(
    rng: &mut StdRng,
    batch: usize,
    world: WorldSize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let n = world.size;
    let mut images = Vec::with_capacity(batch);
    let mut weights = Vec::with_capacity(batch * n * n);
    for _ in 0..batch {
        let scene = Scene::sample(rng.random(), Split::Train);
        let clip = render(&scene, world);
        let frame = &clip.frames[rng.random_range(0..world.frames)];
        let obj = scene.colour.rgb();
        weights.extend(
            frame
                .chunks_exact(3)
                .map(|p| if p == obj { 10f32 } else { 1.0 }),
        );
        images.push(frames_to_tensor(std::slice::from_ref(frame), n, device)?);
    }
    let x = Tensor::stack(&images, 0)?;
    let w = Tensor::from_vec(weights, (batch, 1, 1, n, n), device)?;
    Ok((x, w))
}

/// The scene of training clip `i`.
pub fn train_scene(i: usize) -> Scene {
    Scene::sample(TRAIN_SEEDS + i as u64, Split::Train)
}

/// A caption of `scene` in a random style, or "" with probability `dropout`.
pub fn train_caption(rng: &mut StdRng, scene: &Scene, dropout: f64) -> String {
    if rng.random_bool(dropout) {
        String::new()
    } else {
        caption_styled(scene, CaptionStyle::nth(rng.random_range(0..8)))
    }
}

/// Standard normal values from `rng`, as a tensor of `shape`.
pub fn normal(rng: &mut StdRng, shape: &[usize], device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let d = rand_distr::StandardNormal;
    let v: Vec<f32> = (0..n).map(|_| rng.sample(d)).collect();
    Ok(Tensor::from_vec(v, shape, device)?)
}
