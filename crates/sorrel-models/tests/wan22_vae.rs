//! Parity of the Wan2.2 VAE (`AutoencoderKLWan` with `is_residual`, 2x2 patchify, 16x spatial) with diffusers
//! 0.42.1 on the tiny `wan22-tiny-ti2v` fixture (fp32, CPU, 96x64, 13 frames), and its config checks.

use candle_core::{DType, Device, Tensor};
use sorrel_core::TensorSource;
use sorrel_models::wan::vae::{AutoencoderKLWan, VaeConfig};
use sorrel_testkit::{assert_bf16_parity, fixture, max_abs, max_abs_diff, reference};

const NAME: &str = "wan22-tiny-ti2v";

fn load() -> AutoencoderKLWan {
    load_as(DType::F32)
}

fn load_as(dtype: DType) -> AutoencoderKLWan {
    let dir = fixture(NAME).join("pipeline/vae");
    let cfg = VaeConfig::from_file(&dir.join("config.json")).unwrap();
    assert!(cfg.is_residual && cfg.patch_size == Some(2));
    let vb = TensorSource::open_dir(&dir, "diffusion_pytorch_model")
        .unwrap()
        .into_var_builder(dtype, &Device::Cpu);
    AutoencoderKLWan::new(&cfg, vb).unwrap()
}

/// The fixture's clip (F, H, W, 3) u8 as the VAE's input (1, 3, F, H, W) in [-1, 1].
fn clip(refs: &std::collections::HashMap<String, Tensor>) -> Tensor {
    (refs["vae.video"]
        .to_dtype(DType::F32)
        .unwrap()
        .permute((3, 0, 1, 2))
        .unwrap()
        .unsqueeze(0)
        .unwrap()
        / 127.5)
        .unwrap()
        .affine(1.0, -1.0)
        .unwrap()
}

#[test]
fn wan22_vae_config_gives_16x_spatial_and_4x_temporal() {
    let dir = fixture(NAME).join("pipeline/vae");
    let cfg = VaeConfig::from_file(&dir.join("config.json")).unwrap();
    assert_eq!(cfg.spatial_compression(), 16);
    assert_eq!(cfg.temporal_compression(), 4);
}

#[test]
fn wan22_vae_encode_matches_diffusers() {
    let vae = load();
    let refs = reference(NAME);
    let (mean, logvar) = vae.encode(&clip(&refs)).unwrap();
    let (want_mean, want_logvar) = (&refs["vae.mean"], &refs["vae.logvar"]);
    assert_eq!(mean.dims(), want_mean.dims());
    assert_eq!(mean.dims(), &[1, 8, 4, 4, 6]);
    let (em, el) = (
        max_abs_diff(&mean, want_mean),
        max_abs_diff(&logvar, want_logvar),
    );
    eprintln!(
        "encode mean max abs err {em:e}, logvar {el:e} (ref magnitude {}, {})",
        max_abs(want_mean),
        max_abs(want_logvar)
    );
    assert!(max_abs(want_mean) > 1e-2 && max_abs(want_logvar) > 1e-2);
    // 1e-4: same fp32 maths as diffusers; only accumulation order (conv/matmul kernels) differs.
    assert!(em < 1e-4, "encode mean max abs error {em}");
    assert!(el < 1e-4, "encode logvar max abs error {el}");
}

#[test]
fn wan22_vae_decode_matches_diffusers() {
    let vae = load();
    let refs = reference(NAME);
    let out = vae.decode(&refs["vae.mean"]).unwrap();
    let want = &refs["vae.decoded"];
    assert_eq!(out.dims(), &[1, 3, 13, 64, 96]);
    let e = max_abs_diff(&out, want);
    eprintln!("decode max abs err {e:e} (ref magnitude {})", max_abs(want));
    assert!(max_abs(want) > 1e-2);
    // 1e-4: same fp32 maths as diffusers; only accumulation order (conv/matmul kernels) differs.
    assert!(e < 1e-4, "decode max abs error {e}");
}

#[test]
fn wan22_vae_configs_that_cannot_work_are_refused() {
    let dir = fixture(NAME).join("pipeline/vae");
    let good = VaeConfig::from_file(&dir.join("config.json")).unwrap();
    let mut rgb = good.clone();
    rgb.in_channels = 3;
    let e = rgb.validate().unwrap_err().to_string();
    assert!(e.contains("3 x patch_size^2 = 12"), "{e}");
    let mut uneven = good.clone();
    // 16 channels x 8 (2 x 2 x 2) cannot be averaged down to 24.
    uneven.dim_mult = vec![1, 2, 3, 4];
    let e = uneven.validate().unwrap_err().to_string();
    assert!(e.contains("shortcut cannot map"), "{e}");
}

/// bf16 weights and activations against the fp32 reference, next to diffusers' own bf16 run of the same decode
/// and encode (`tools/reference/make_vae_bf16_fixtures.py`, [`assert_bf16_parity`]).
#[test]
fn wan22_vae_in_bf16_is_as_close_to_fp32_as_diffusers_bf16() {
    let vae = load_as(DType::BF16);
    let refs = reference(NAME);
    let theirs =
        candle_core::safetensors::load(fixture(NAME).join("vae_bf16.safetensors"), &Device::Cpu)
            .unwrap();
    let out = vae.decode(&refs["vae.mean"]).unwrap();
    assert_bf16_parity(
        "wan22 decode",
        &out,
        &theirs["vae.decoded.bf16"],
        &refs["vae.decoded"],
    );
    let (mean, _) = vae.encode(&clip(&refs)).unwrap();
    assert_bf16_parity(
        "wan22 encode",
        &mean,
        &theirs["vae.encode.mean.bf16"],
        &refs["vae.mean"],
    );
}
