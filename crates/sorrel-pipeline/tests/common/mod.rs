//! Helpers shared by the pipeline test files.
// Each test file uses some of them.
#![allow(dead_code)]

use std::collections::HashMap;

use candle_core::Tensor;
use sorrel_pipeline::{GenerateRequest, Picture, WanPipeline};
use sorrel_testkit::max_abs_diff;

/// The text-to-video request that reproduces a fixture's diffusers run (its `reference.safetensors` metadata)
/// from its starting noise.
pub fn request_from(meta: &HashMap<String, String>, init: &Tensor) -> GenerateRequest {
    let num = |k: &str| meta[k].parse::<usize>().unwrap();
    GenerateRequest {
        prompt: meta["prompt"].clone(),
        negative_prompt: meta["negative_prompt"].clone(),
        width: num("width"),
        height: num("height"),
        frames: num("num_frames"),
        steps: num("steps"),
        guidance: meta["guidance_scale"].parse().unwrap(),
        max_sequence_length: Some(num("max_sequence_length")),
        init_latents: Some(init.clone()),
        ..GenerateRequest::default()
    }
}

/// An RGB8 (H, W, 3) tensor of the fixture as a picture.
pub fn picture(t: &Tensor) -> Picture {
    let (h, w, _) = t.dims3().unwrap();
    Picture {
        width: w,
        height: h,
        rgb: t.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
    }
}

/// The bound for a whole pipeline in fp32, as the text-to-video tests use.
pub const FRAMES_BOUND: f32 = 2e-3;

/// Per-step latents in the fp32 tests: errors of ~1e-6 grow a little through the solver steps.
pub const STEP_BOUND: f32 = 1e-4;

/// Generates, checking the latents after each step against `step{i}.latents_after` under `prefix` in `r`
/// and the frames against `want`. Returns the steps run.
pub fn check_steps(
    name: &str,
    pipe: &WanPipeline,
    req: &GenerateRequest,
    want: &Tensor,
    r: &HashMap<String, Tensor>,
    prefix: &str,
) -> usize {
    let mut steps = 0;
    let mut worst = 0f32;
    let video = pipe
        .generate_observed(
            req,
            &mut |e| {
                steps += matches!(e, sorrel_pipeline::Event::Step { .. }) as usize;
                true
            },
            &mut |i, latents| {
                if let Some(w) = r.get(&format!("{prefix}step{i}.latents_after")) {
                    worst = worst.max(max_abs_diff(latents, w));
                }
            },
        )
        .unwrap();
    if !r.is_empty() {
        println!("{name}: latents after each step, worst max abs err {worst:e}");
        assert!(
            worst <= STEP_BOUND,
            "{name}: a step's latents differ by {worst}"
        );
    }
    let err = max_abs_diff(&video.frames, &want.squeeze(0).unwrap());
    println!("{name}: frames max abs err {err:e}");
    assert!(
        err <= FRAMES_BOUND,
        "{name}: frames differ from diffusers by {err}"
    );
    steps
}
