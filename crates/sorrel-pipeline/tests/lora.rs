//! LoRA adapters in the three key layouts against diffusers' `load_lora_weights` + `set_adapters` on the
//! wan-tiny-alt fixture (non-square 48x32, 13 frames, 3 layers); fixtures from
//! `tools/reference/make_lora_fixtures.py`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sorrel_pipeline::{GenerateRequest, LoadOptions, LoraSpec, WanPipeline};
mod common;

use sorrel_testkit::{fixture, max_abs_diff, reference_metadata};

/// The same bound as the text-to-video parity tests: the LoRA's change is merged in f32 like PEFT's.
const BOUND: f32 = 2e-3;

fn spec(name: &str, scale: f64) -> LoraSpec {
    LoraSpec {
        path: fixture("lora").join(format!("{name}.safetensors")),
        scale,
    }
}

fn generate(dir: &Path, loras: Vec<LoraSpec>) -> sorrel_core::Result<Tensor> {
    generate_with(dir, loras, |_| {})
}

fn generate_with(
    dir: &Path,
    loras: Vec<LoraSpec>,
    change: impl Fn(&mut GenerateRequest),
) -> sorrel_core::Result<Tensor> {
    let meta = reference_metadata("wan-tiny-alt");
    let init = sorrel_testkit::reference("wan-tiny-alt")["latents_init"].clone();
    let pipe = WanPipeline::load(
        dir,
        &LoadOptions {
            loras,
            ..LoadOptions::default()
        },
    )?;
    let mut req = common::request_from(&meta, &init);
    // The original layout has no scheduler config; the fixture's shift is 5.
    req.flow_shift = Some(meta["flow_shift"].parse().unwrap());
    change(&mut req);
    let mut steps = 0;
    let frames = pipe
        .generate(&req, &mut |e| {
            steps += matches!(e, sorrel_pipeline::Event::Step { .. }) as usize;
            true
        })?
        .frames;
    assert_eq!(steps, req.steps, "one progress event per step");
    Ok(frames)
}

fn pipeline_dir() -> PathBuf {
    fixture("wan-tiny-alt").join("pipeline")
}

fn reference() -> HashMap<String, Tensor> {
    sorrel_testkit::reference("lora")
}

fn check(case: &str, loras: Vec<LoraSpec>) {
    check_with(case, loras, |_| {})
}

fn check_with(case: &str, loras: Vec<LoraSpec>, change: impl Fn(&mut GenerateRequest)) {
    let r = reference();
    let frames = generate_with(&pipeline_dir(), loras, change).unwrap();
    let want = r[&format!("frames.{case}")].squeeze(0).unwrap();
    let base = r["frames.base"].squeeze(0).unwrap();
    let err = max_abs_diff(&frames, &want);
    let moved = max_abs_diff(&want, &base);
    println!("{case}: frames max abs err {err:e} (the LoRA moves diffusers' frames by {moved:.3})");
    // The adapter must matter, or matching diffusers would prove nothing.
    assert!(
        moved > 0.3,
        "{case}: the fixture's LoRA barely changes the frames ({moved})"
    );
    assert!(
        err <= BOUND,
        "{case}: frames differ from diffusers by {err}"
    );
}

#[test]
fn peft_lora_matches_diffusers() {
    // lora_alpha 8 at rank 4 from the saved metadata, and PEFT's lora_bias.
    check("peft", vec![spec("peft", 1.0)]);
}

#[test]
fn kohya_lora_matches_diffusers() {
    // musubi-tuner keys with alpha 2 at rank 4, at scale 0.8.
    check("kohya", vec![spec("kohya", 0.8)]);
}

#[test]
fn original_key_lora_matches_diffusers() {
    // The original Wan names (ComfyUI, lightx2v) with alphas, diff_b, head.head and text_embedding.
    check("original", vec![spec("original", 1.0)]);
}

#[test]
fn two_loras_at_their_own_scales_match_diffusers() {
    check(
        "peft_and_kohya",
        vec![spec("peft", 0.6), spec("kohya", 1.0)],
    );
}

#[test]
fn distillation_settings_match_diffusers() {
    // How step-distillation LoRAs (lightx2v, CausVid) are run: 4 steps, guidance 1 (no unconditional pass),
    // flow shift 5 on the UniPC grid, which puts the steps at sigma 1, 0.94, 0.83, 0.63 as lightx2v's own
    // [1000, 750, 500, 250] list with shift 5 does.
    check_with(
        "original_4step_unguided",
        vec![spec("original", 1.0)],
        |r| {
            r.steps = 4;
            r.guidance = 1.0;
        },
    );
}

#[test]
fn scale_zero_gives_the_base_model_exactly() {
    let base = generate(&pipeline_dir(), vec![]).unwrap();
    let zero = generate(
        &pipeline_dir(),
        vec![spec("peft", 0.0), spec("kohya", 0.0), spec("original", 0.0)],
    )
    .unwrap();
    assert_eq!(max_abs_diff(&base, &zero), 0.0);
}

#[test]
fn a_lora_on_the_original_layout_gives_the_same_frames() {
    let a = generate(&pipeline_dir(), vec![spec("original", 1.0)]).unwrap();
    let b = generate(
        &fixture("wan-tiny-alt").join("original"),
        vec![spec("original", 1.0)],
    )
    .unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}

fn write(dir: &Path, name: &str, tensors: &[(&str, &[usize])]) -> LoraSpec {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, shape)| {
            (
                k.to_string(),
                Tensor::ones(*shape, DType::F32, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    let path = dir.join(name);
    candle_core::safetensors::save(&map, &path).unwrap();
    LoraSpec { path, scale: 1.0 }
}

fn load_err(loras: Vec<LoraSpec>) -> String {
    match WanPipeline::load(
        &pipeline_dir(),
        &LoadOptions {
            loras,
            ..LoadOptions::default()
        },
    ) {
        Ok(_) => panic!("the LoRA should have been refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn loras_that_do_not_fit_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    // Modules the model does not have: a LoRA for a deeper model (block 7 of a 3-block model).
    let deeper = write(
        tmp.path(),
        "deeper.safetensors",
        &[
            ("transformer.blocks.7.attn1.to_q.lora_A.weight", &[4, 48]),
            ("transformer.blocks.7.attn1.to_q.lora_B.weight", &[48, 4]),
        ],
    );
    let e = load_err(vec![deeper]);
    assert!(
        e.contains("match no weight") && e.contains("blocks.7.attn1.to_q"),
        "{e}"
    );
    // The right names at another width (the model's inner dim is 48).
    let wider = write(
        tmp.path(),
        "wider.safetensors",
        &[
            ("transformer.blocks.0.attn1.to_q.lora_A.weight", &[4, 64]),
            ("transformer.blocks.0.attn1.to_q.lora_B.weight", &[64, 4]),
        ],
    );
    let e = load_err(vec![wider]);
    assert!(e.contains("another size") && e.contains("to_q"), "{e}");
    // Half a module.
    let half = write(
        tmp.path(),
        "half.safetensors",
        &[("transformer.blocks.0.attn1.to_q.lora_A.weight", &[4, 48])],
    );
    let e = load_err(vec![half]);
    assert!(e.contains("only one of its two matrices"), "{e}");
    // Not a LoRA at all: a model's weights.
    let model = write(
        tmp.path(),
        "model.safetensors",
        &[("blocks.0.attn1.to_q.weight", &[48, 48])],
    );
    let e = load_err(vec![model]);
    assert!(e.contains("is not part of a LoRA"), "{e}");
    // Not safetensors; missing.
    let junk = tmp.path().join("junk.safetensors");
    std::fs::write(&junk, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header").unwrap();
    let e = load_err(vec![LoraSpec {
        path: junk,
        scale: 1.0,
    }]);
    assert!(e.contains("not a safetensors file"), "{e}");
    let e = load_err(vec![LoraSpec {
        path: tmp.path().join("missing.safetensors"),
        scale: 1.0,
    }]);
    assert!(e.contains("missing.safetensors"), "{e}");
}
