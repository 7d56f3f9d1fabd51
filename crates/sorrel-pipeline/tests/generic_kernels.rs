//! The paths a GPU takes, checked against diffusers on the CPU. On a GPU, Sorrel's CPU kernels (fused
//! attention, packed bf16 products, shifted convolutions, fused norms) give way to candle's compositions,
//! which candle runs on every device; here the CPU is made to take them too, so a machine without a GPU
//! still checks the GPU's numerics (all but candle's CUDA kernels themselves, which `tools/device/check.sh`
//! checks on a GPU). Its own test binary: the switch holds for the whole process.

use candle_core::Tensor;
use sorrel_pipeline::{Conditioning, LoadOptions, WanPipeline};
use sorrel_testkit::{fixture, reference, reference_metadata};

mod common;

fn load(dir: &str) -> WanPipeline {
    WanPipeline::load(&fixture(dir), &LoadOptions::default()).unwrap()
}

/// Frames within the fp32 pipelines' bound (2e-3) of diffusers', every step's latents within 1e-4.
/// `prefix` picks one run of a fixture that holds several (`t2v.`).
fn check(
    name: &str,
    prefix: &str,
    conditioning: impl Fn(&std::collections::HashMap<String, Tensor>) -> Conditioning,
) {
    let (r, meta) = (reference(name), reference_metadata(name));
    let pipe = load(&format!("{name}/pipeline"));
    let req = sorrel_pipeline::GenerateRequest {
        conditioning: conditioning(&r),
        ..common::request_from(&meta, &r[&format!("{prefix}latents_init")])
    };
    let want = &r[&format!("{prefix}frames")];
    let steps = common::check_steps(name, &pipe, &req, want, &r, prefix);
    assert_eq!(steps, meta["steps"].parse::<usize>().unwrap());
}

#[test]
fn the_gpu_paths_match_diffusers() {
    sorrel_core::device::use_generic_kernels(true);
    assert!(!sorrel_core::device::cpu_kernels(&candle_core::Device::Cpu));
    // Text to video with UniPC and with flow shift 5 on another shape (13 frames, 3 heads of 16, 32x48).
    check("wan-tiny-unipc", "", |_| Conditioning::None);
    check("wan-tiny-alt", "", |_| Conditioning::None);
    // Image to video: CLIP, the VAE's encoder, the image-conditioned transformer.
    check("wan-tiny-i2v", "", |r| Conditioning::Image {
        first: common::picture(&r["image"]),
        last: None,
    });
    // Wan2.2 TI2V: its VAE (16x compression, patchified) and timesteps per token.
    check("wan22-tiny-ti2v", "t2v.", |_| Conditioning::None);
}
