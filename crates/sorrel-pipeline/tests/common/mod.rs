//! Helpers shared by the pipeline test files.
// Each test file uses some of them.
#![allow(dead_code)]

use std::collections::HashMap;

use candle_core::Tensor;
use sorrel_pipeline::GenerateRequest;

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
