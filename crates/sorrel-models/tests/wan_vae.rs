//! Parity of `AutoencoderKLWan` with diffusers 0.42.1 on the tiny fixtures (fp32, CPU), and of the original
//! Wan2.1 checkpoint layout with the diffusers layout.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use sorrel_core::TensorSource;
use sorrel_models::wan::vae::{vae_key_from_original, AutoencoderKLWan, Tiling, VaeConfig};
use sorrel_testkit::{
    assert_bf16_parity, fixture, max_abs, max_abs_diff, reference, reference_metadata,
};

fn load_diffusers(name: &str) -> (VaeConfig, AutoencoderKLWan) {
    let dir = fixture(name).join("pipeline/vae");
    let cfg = VaeConfig::from_file(&dir.join("config.json")).unwrap();
    let vb = TensorSource::open_dir(&dir, "diffusion_pytorch_model")
        .unwrap()
        .into_var_builder(DType::F32, &Device::Cpu);
    let vae = AutoencoderKLWan::new(&cfg, vb).unwrap();
    (cfg, vae)
}

fn load_original(name: &str) -> AutoencoderKLWan {
    let dir = fixture(name).join("original");
    let text = std::fs::read_to_string(dir.join("sorrel_original_configs.json")).unwrap();
    let all: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cfg: VaeConfig = serde_json::from_value(all["vae"].clone()).unwrap();
    let rename_cfg = cfg.clone();
    let vb = TensorSource::open(&[dir.join("Wan2.1_VAE.pth")])
        .unwrap()
        .with_rename(Arc::new(move |n: &str| {
            vae_key_from_original(n, &rename_cfg)
        }))
        .into_var_builder(DType::F32, &Device::Cpu);
    AutoencoderKLWan::new(&cfg, vb).unwrap()
}

/// The pipeline step count recorded in the reference run.
fn steps(name: &str) -> usize {
    reference_metadata(name)["steps"].parse().unwrap()
}

/// The decoder input the pipeline builds: latents / (1 / std) + mean, in the same fp32 arithmetic.
fn denormalised_latents(name: &str, cfg: &VaeConfig, refs: &HashMap<String, Tensor>) -> Tensor {
    let n = steps(name);
    let lat = &refs[&format!("step{}.latents_after", n - 1)];
    let mean: Vec<f32> = cfg.latents_mean.iter().map(|&v| v as f32).collect();
    let inv_std: Vec<f32> = cfg.latents_std.iter().map(|&v| 1.0 / v as f32).collect();
    let mean = Tensor::from_vec(mean, (1, cfg.z_dim, 1, 1, 1), &Device::Cpu).unwrap();
    let inv_std = Tensor::from_vec(inv_std, (1, cfg.z_dim, 1, 1, 1), &Device::Cpu).unwrap();
    lat.broadcast_div(&inv_std)
        .unwrap()
        .broadcast_add(&mean)
        .unwrap()
}

fn check_encode(name: &str) {
    let (_, vae) = load_diffusers(name);
    let refs = reference(name);
    let (mean, logvar) = vae.encode(&refs["unit.vae.encode.in"]).unwrap();
    let (want_mean, want_logvar) = (
        &refs["unit.vae.encode.mean"],
        &refs["unit.vae.encode.logvar"],
    );
    let em = max_abs_diff(&mean, want_mean);
    let el = max_abs_diff(&logvar, want_logvar);
    eprintln!(
        "{name}: encode mean max abs err {em:e}, logvar {el:e} (ref magnitude {}, {})",
        max_abs(want_mean),
        max_abs(want_logvar)
    );
    // A reference of all zeros would let a broken model pass.
    assert!(max_abs(want_mean) > 1e-2 && max_abs(want_logvar) > 1e-2);
    // 1e-4: same fp32 maths as diffusers; only accumulation order (conv/matmul kernels) differs.
    assert!(em < 1e-4, "{name}: encode mean max abs error {em}");
    // 1e-4: same fp32 maths as diffusers; only accumulation order (conv/matmul kernels) differs.
    assert!(el < 1e-4, "{name}: encode logvar max abs error {el}");
}

fn check_decode(name: &str) {
    let (cfg, vae) = load_diffusers(name);
    let refs = reference(name);
    let z = denormalised_latents(name, &cfg, &refs);
    let out = vae.decode(&z).unwrap();
    let want = &refs["vae.decoded"];
    let t = z.dim(2).unwrap();
    assert_eq!(out.dims()[2], 1 + 4 * (t - 1));
    let e = max_abs_diff(&out, want);
    eprintln!(
        "{name}: decode max abs err {e:e} (ref magnitude {})",
        max_abs(want)
    );
    assert!(max_abs(want) > 1e-2);
    // 1e-4: same fp32 maths as diffusers; only accumulation order (conv/matmul kernels) differs.
    assert!(e < 1e-4, "{name}: decode max abs error {e}");
}

fn check_original_layout(name: &str) {
    let (cfg, vae) = load_diffusers(name);
    let orig = load_original(name);
    let refs = reference(name);
    let z = denormalised_latents(name, &cfg, &refs);
    let a = vae.decode(&z).unwrap();
    let b = orig.decode(&z).unwrap();
    let e = max_abs_diff(&a, &b);
    // Same tensors, same code: anything but bit-identical means a tensor was mapped to the wrong name.
    assert_eq!(
        e, 0.0,
        "{name}: original layout decode differs from diffusers layout by {e}"
    );
    let (m1, l1) = vae.encode(&refs["unit.vae.encode.in"]).unwrap();
    let (m2, l2) = orig.encode(&refs["unit.vae.encode.in"]).unwrap();
    // Bit-identical for the same reason as decode; covers the encoder's key mapping.
    assert_eq!(
        max_abs_diff(&m1, &m2),
        0.0,
        "{name}: original layout encode mean differs"
    );
    assert_eq!(
        max_abs_diff(&l1, &l2),
        0.0,
        "{name}: original layout encode logvar differs"
    );
}

#[test]
fn encode_matches_diffusers_unipc() {
    check_encode("wan-tiny-unipc");
}

#[test]
fn encode_matches_diffusers_euler() {
    check_encode("wan-tiny-euler");
}

#[test]
fn encode_matches_diffusers_alt() {
    check_encode("wan-tiny-alt");
}

#[test]
fn decode_matches_diffusers_unipc() {
    check_decode("wan-tiny-unipc");
}

#[test]
fn decode_matches_diffusers_euler() {
    check_decode("wan-tiny-euler");
}

#[test]
fn decode_matches_diffusers_alt() {
    check_decode("wan-tiny-alt");
}

#[test]
fn original_layout_is_identical_unipc() {
    check_original_layout("wan-tiny-unipc");
}

#[test]
fn original_layout_is_identical_alt() {
    check_original_layout("wan-tiny-alt");
}

#[test]
fn original_key_mapping_examples() {
    let cfg = VaeConfig {
        num_res_blocks: 2,
        dim_mult: vec![1, 2, 2, 1],
        ..VaeConfig::default()
    };
    let cases = [
        ("quant_conv.weight", "conv1.weight"),
        ("post_quant_conv.bias", "conv2.bias"),
        ("encoder.conv_in.weight", "encoder.conv1.weight"),
        ("decoder.norm_out.gamma", "decoder.head.0.gamma"),
        ("decoder.conv_out.bias", "decoder.head.2.bias"),
        (
            "encoder.mid_block.resnets.1.conv2.weight",
            "encoder.middle.2.residual.6.weight",
        ),
        (
            "decoder.mid_block.attentions.0.to_qkv.weight",
            "decoder.middle.1.to_qkv.weight",
        ),
        (
            "encoder.down_blocks.2.resample.1.weight",
            "encoder.downsamples.2.resample.1.weight",
        ),
        (
            "encoder.down_blocks.0.conv_shortcut.bias",
            "encoder.downsamples.0.shortcut.bias",
        ),
        // three resnets and one upsampler per block, so block 1 starts at 4 and its upsampler is 7.
        (
            "decoder.up_blocks.1.resnets.2.norm1.gamma",
            "decoder.upsamples.6.residual.0.gamma",
        ),
        (
            "decoder.up_blocks.1.upsamplers.0.time_conv.weight",
            "decoder.upsamples.7.time_conv.weight",
        ),
        (
            "decoder.up_blocks.3.resnets.0.conv1.bias",
            "decoder.upsamples.12.residual.2.bias",
        ),
    ];
    for (diffusers, original) in cases {
        assert_eq!(
            vae_key_from_original(diffusers, &cfg),
            original,
            "{diffusers}"
        );
    }
}

#[test]
fn unsupported_configs_are_rejected() {
    // Wan2.2's residual blocks are supported (tests/wan22_vae.rs); on these widths they fit.
    let residual = VaeConfig {
        is_residual: true,
        ..VaeConfig::default()
    };
    assert!(residual.validate().is_ok());
    let attn = VaeConfig {
        attn_scales: vec![0.5],
        ..VaeConfig::default()
    };
    assert!(attn
        .validate()
        .unwrap_err()
        .to_string()
        .contains("attn_scales"));
    let patch = VaeConfig {
        patch_size: Some(2),
        ..VaeConfig::default()
    };
    assert!(patch
        .validate()
        .unwrap_err()
        .to_string()
        .contains("patch_size"));
    assert!(VaeConfig::default().validate().is_ok());
}

/// The VAE with bf16 weights and activations (f32 sums, one rounding per layer) against the fp32 reference,
/// next to diffusers' own bf16 run on the same inputs (`tools/reference/make_vae_bf16_fixtures.py`): decode and
/// encode ([`sorrel_testkit::assert_bf16_parity`]).
fn check_bf16(name: &str) {
    let dir = fixture(name).join("pipeline/vae");
    let cfg = VaeConfig::from_file(&dir.join("config.json")).unwrap();
    let vb = TensorSource::open_dir(&dir, "diffusion_pytorch_model")
        .unwrap()
        .into_var_builder(DType::BF16, &Device::Cpu);
    let vae = AutoencoderKLWan::new(&cfg, vb).unwrap();
    let refs = reference(name);
    let theirs =
        candle_core::safetensors::load(fixture(name).join("vae_bf16.safetensors"), &Device::Cpu)
            .unwrap();
    let out = vae
        .decode(&denormalised_latents(name, &cfg, &refs))
        .unwrap();
    assert_eq!(out.dtype(), DType::F32);
    assert_bf16_parity(
        &format!("{name} decode"),
        &out,
        &theirs["vae.decoded.bf16"],
        &refs["vae.decoded"],
    );
    let (mean, _) = vae.encode(&refs["unit.vae.encode.in"]).unwrap();
    assert_bf16_parity(
        &format!("{name} encode"),
        &mean,
        &theirs["vae.encode.mean.bf16"],
        &refs["unit.vae.encode.mean"],
    );
}

#[test]
fn bf16_vae_is_as_close_to_fp32_as_diffusers_bf16_unipc() {
    check_bf16("wan-tiny-unipc");
}

#[test]
fn bf16_vae_is_as_close_to_fp32_as_diffusers_bf16_alt() {
    check_bf16("wan-tiny-alt");
}

/// diffusers' tiled decode (`enable_tiling`, small non-square tiles so a small latent crosses several rows and
/// columns of them) of a seeded latent, from `tools/reference/make_vae_tiling_fixtures.py`.
fn check_tiled(name: &str, vae: &AutoencoderKLWan) {
    let path = fixture(name).join("vae_tiled.safetensors");
    let refs = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let meta = sorrel_testkit::file_metadata(&path);
    let pair = |k: &str| -> (usize, usize) {
        let v: Vec<usize> = meta[k].split(',').map(|x| x.parse().unwrap()).collect();
        (v[0], v[1])
    };
    let tiling = Tiling {
        tile: pair("tile"),
        stride: pair("stride"),
    };
    let out = vae.decode_tiled(&refs["z"], &tiling).unwrap();
    assert_eq!(out.dims(), refs["tiled"].dims());
    let e = max_abs_diff(&out, &refs["tiled"]);
    let seams = max_abs_diff(&refs["tiled"], &refs["whole"]);
    eprintln!("{name}: tiled decode {e:e} from diffusers' (tiled and whole differ by {seams:e})");
    // The tiles change the video near the seams, so an untiled decode cannot pass.
    assert!(
        seams > 1e-3,
        "{name}: the fixture's tiles do not matter ({seams})"
    );
    // 1e-4: same fp32 maths as diffusers; only accumulation order (conv/matmul kernels) differs.
    assert!(e < 1e-4, "{name}: tiled decode max abs error {e}");
    // A tiling that cannot work is an error, not a panic.
    let bad = Tiling {
        tile: (4, 4),
        stride: (2, 2),
    };
    assert!(vae.decode_tiled(&refs["z"], &bad).is_err());
}

#[test]
fn tiled_decode_matches_diffusers_alt() {
    let (_, vae) = load_diffusers("wan-tiny-alt");
    check_tiled("wan-tiny-alt", &vae);
}

#[test]
fn tiled_decode_matches_diffusers_wan22() {
    // Wan2.2's VAE: 16x spatial through 2x2 patches, so tiles are cut in patched pixels.
    let (_, vae) = load_diffusers("wan22-tiny-ti2v");
    check_tiled("wan22-tiny-ti2v", &vae);
}
