//! The full-size Wan2.1-T2V-1.3B transformer (random weights) loads and runs one forward. Not run in CI:
//! the weights are 5.7 GB. Make them with
//! `python tools/reference/make_fixtures.py tests/fixtures --only none --full-size`, then
//! `cargo test --release -p sorrel-models --test wan_full_size -- --ignored --nocapture`.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use sorrel_core::TensorSource;
use sorrel_models::wan::config::WanTransformerConfig;
use sorrel_models::wan::transformer::WanTransformer3DModel;

#[test]
#[ignore = "needs the 5.7 GB random Wan2.1-1.3B transformer written by make_fixtures.py --full-size"]
fn full_size_wan21_t2v_1_3b_forward() {
    let dir = std::env::var("SORREL_FULL_SIZE_TRANSFORMER")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures/big/wan2.1-t2v-1.3b-random/transformer")
        });
    let t0 = Instant::now();
    let cfg = WanTransformerConfig::from_diffusers_file(&dir.join("config.json")).unwrap();
    assert_eq!(
        (cfg.num_layers, cfg.inner_dim(), cfg.ffn_dim),
        (30, 1536, 8960)
    );
    let vb = TensorSource::open_dir(&dir, "diffusion_pytorch_model")
        .unwrap()
        .into_var_builder(DType::F32, &Device::Cpu);
    let model = WanTransformer3DModel::new(&cfg, vb).unwrap();
    println!("load {:.2}s", t0.elapsed().as_secs_f64());
    // Inputs (and PyTorch's output) from tools/reference/bench_transformer.py when given, else random.
    let saved = std::env::var("SORREL_BENCH_INPUTS")
        .ok()
        .map(|p| candle_core::safetensors::load(p, &Device::Cpu).unwrap());
    let (x, ctx, t) = match &saved {
        Some(s) => (s["x"].clone(), s["context"].clone(), s["t"].clone()),
        None => (
            Tensor::randn(0f32, 1.0, (1, 16, 5, 32, 32), &Device::Cpu).unwrap(),
            Tensor::randn(0f32, 1.0, (1, 512, 4096), &Device::Cpu).unwrap(),
            Tensor::new(&[999f32], &Device::Cpu).unwrap(),
        ),
    };
    let t1 = Instant::now();
    let y = model.forward(&x, &t, &ctx).unwrap();
    println!(
        "forward (1,16,5,32,32), 1280 tokens, 512x4096 context: {:.2}s",
        t1.elapsed().as_secs_f64()
    );
    assert_eq!(y.dims(), &[1, 16, 5, 32, 32]);
    let finite = y
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite());
    assert!(finite, "non-finite output");
    if let Some(want) = saved.as_ref().and_then(|s| s.get("out_fp32")) {
        let rel = sorrel_testkit::max_abs_diff(&y, want) / sorrel_testkit::max_abs(want);
        println!("max abs error / max abs value vs PyTorch fp32: {rel:e}");
        // 30 layers of fp32 with another summation order: ~1e-5 relative is expected; 1e-3 is the bound.
        assert!(rel <= 1e-3, "relative error {rel} vs PyTorch");
    }
}

/// The full-size Wan2.1-VACE-1.3B transformer (random weights stored in bf16, computed in fp32) loads and runs
/// one forward with a control input. Weights and inputs from `tools/reference/bench_vace.py`:
/// `bench_vace.py make DIR`, `bench_vace.py run DIR IN.safetensors`, then
/// `SORREL_VACE_DIR=DIR SORREL_VACE_INPUTS=IN.safetensors cargo test --release -p sorrel-models --test
/// wan_full_size -- --ignored --nocapture full_size_wan21_vace`.
#[test]
#[ignore = "needs the 4.2 GB random Wan2.1-VACE-1.3B transformer written by bench_vace.py make"]
fn full_size_wan21_vace_1_3b_forward() {
    let dir = PathBuf::from(std::env::var("SORREL_VACE_DIR").expect("SORREL_VACE_DIR"))
        .join("transformer");
    let t0 = Instant::now();
    let cfg = WanTransformerConfig::from_diffusers_file(&dir.join("config.json")).unwrap();
    assert_eq!(cfg.vace_layers.as_ref().map(Vec::len), Some(15));
    let vb = TensorSource::open_dir(&dir, "diffusion_pytorch_model")
        .unwrap()
        .into_var_builder(DType::F32, &Device::Cpu);
    let model = WanTransformer3DModel::new(&cfg, vb).unwrap();
    println!("load {:.2}s", t0.elapsed().as_secs_f64());
    let s = candle_core::safetensors::load(
        std::env::var("SORREL_VACE_INPUTS").expect("SORREL_VACE_INPUTS"),
        &Device::Cpu,
    )
    .unwrap();
    let mut ctx = model.embed_context(&s["context"], None).unwrap();
    ctx.control = Some(sorrel_models::wan::transformer::Control {
        latents: s["control"].clone(),
        scales: vec![1.0; 15],
    });
    let t1 = Instant::now();
    let y = model.forward_with_context(&s["x"], &s["t"], &ctx).unwrap();
    println!(
        "VACE forward (1,16,5,32,32) + control (1,96,5,32,32), 1280 tokens: {:.2}s",
        t1.elapsed().as_secs_f64()
    );
    let want = &s["out_fp32"];
    let rel = sorrel_testkit::max_abs_diff(&y, want) / sorrel_testkit::max_abs(want);
    println!("max abs error / max abs value vs PyTorch fp32: {rel:e}");
    assert!(rel <= 1e-3, "relative error {rel} vs PyTorch");
}

/// One full-width Wan2.1-1.3B block at the model's own size, 832x480 with 81 frames (32,760 tokens), in bounded
/// memory: the whole score matrix would be 51 GB in f32. Takes the first block of the random full-size weights
/// (`make_fixtures.py --full-size`); prints time and the process's peak RSS (run it under `/usr/bin/time -v`).
/// `SORREL_FULL_SIZE_TRANSFORMER=DIR cargo test --release -p sorrel-models --test wan_full_size -- --ignored
/// --nocapture one_block_at_832x480x81`.
#[test]
#[ignore = "needs the random Wan2.1-1.3B transformer written by make_fixtures.py --full-size; about a minute"]
fn one_block_at_832x480x81_in_bounded_memory() {
    let dir = PathBuf::from(
        std::env::var("SORREL_FULL_SIZE_TRANSFORMER").expect("SORREL_FULL_SIZE_TRANSFORMER"),
    );
    let mut cfg = WanTransformerConfig::from_diffusers_file(&dir.join("config.json")).unwrap();
    cfg.num_layers = 1;
    let vb = TensorSource::open_dir(&dir, "diffusion_pytorch_model")
        .unwrap()
        .into_var_builder(DType::F32, &Device::Cpu);
    let model = WanTransformer3DModel::new(&cfg, vb).unwrap();
    // 81 frames -> 21 latent frames; 480x832 -> 60x104 latents; patches 2x2: 21 x 30 x 52 = 32,760 tokens.
    let x = Tensor::randn(0f32, 1.0, (1, 16, 21, 60, 104), &Device::Cpu).unwrap();
    let ctx = Tensor::randn(0f32, 1.0, (1, 512, 4096), &Device::Cpu).unwrap();
    let t = Tensor::new(&[999f32], &Device::Cpu).unwrap();
    let t0 = Instant::now();
    let y = model.forward(&x, &t, &ctx).unwrap();
    println!(
        "one block, 32,760 tokens: {:.2}s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(y.dims(), &[1, 16, 21, 60, 104]);
}
