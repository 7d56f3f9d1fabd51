//! Parity of `WanTransformer3DModel` against diffusers on the committed fixtures (fp32).

use candle_core::{DType, Device, Tensor};
use sorrel_core::TensorSource;
use sorrel_models::wan::config::WanTransformerConfig;
use sorrel_models::wan::transformer::WanTransformer3DModel;
use sorrel_testkit::{fixture, max_abs, max_abs_diff, reference};

fn load(name: &str) -> WanTransformer3DModel {
    let dir = fixture(name).join("pipeline/transformer");
    let cfg = WanTransformerConfig::from_diffusers_file(&dir.join("config.json")).unwrap();
    let vb = TensorSource::open_dir(&dir, "diffusion_pytorch_model")
        .unwrap()
        .into_var_builder(DType::F32, &Device::Cpu);
    WanTransformer3DModel::new(&cfg, vb).unwrap()
}

// fp32 with a different summation order than PyTorch's kernels: differences are a few ulp of values of
// order 1-10, so 1e-4 absolute is ~100x the expected error and far below what any wrong op would give.
const TOL: f32 = 1e-4;

fn check(name: &str) {
    let r = reference(name);
    let m = load(name);
    let out = m
        .forward(
            &r["unit.transformer.in"],
            &r["unit.transformer.t"],
            &r["prompt_embeds"],
        )
        .unwrap();
    let err = max_abs_diff(&out, &r["unit.transformer.out"]);
    println!(
        "{name}: unit forward max abs err {err:e} (scale {})",
        max_abs(&r["unit.transformer.out"])
    );
    assert!(
        err <= TOL,
        "{name}: transformer forward differs from diffusers by {err}"
    );

    // The pipeline's first call: initial latents, the first timestep, cond and uncond embeddings.
    let t = &r["step0.timestep"];
    for (emb, key) in [
        ("prompt_embeds", "step0.noise_pred_cond"),
        ("negative_prompt_embeds", "step0.noise_pred_uncond"),
    ] {
        let out = m.forward(&r["latents_init"], t, &r[emb]).unwrap();
        let err = max_abs_diff(&out, &r[key]);
        println!("{name}: {key} max abs err {err:e}");
        assert!(err <= TOL, "{name}: {key} differs from diffusers by {err}");
    }
}

#[test]
fn transformer_matches_diffusers_unipc_fixture() {
    check("wan-tiny-unipc");
}

#[test]
fn transformer_matches_diffusers_euler_fixture() {
    // Euler timesteps are fractional (933.98...), exercising non-integer timestep features.
    check("wan-tiny-euler");
}

#[test]
fn transformer_matches_diffusers_alt_fixture() {
    // 3 heads of 16, 3 layers, freq_dim 64, non-square 32x48 latent grid.
    check("wan-tiny-alt");
}

#[test]
fn oversized_latent_is_a_clear_error() {
    let m = load("wan-tiny-unipc"); // rope_max_seq_len 32
    let x = Tensor::zeros((1, 16, 1, 2, 66), DType::F32, &Device::Cpu).unwrap();
    let r = reference("wan-tiny-unipc");
    let err = m
        .forward(
            &x,
            &Tensor::new(&[999f32], &Device::Cpu).unwrap(),
            &r["prompt_embeds"],
        )
        .unwrap_err();
    assert!(err.to_string().contains("rope_max_seq_len"), "{err}");
}

/// The transformer trains: with its weights as variables, a loss on its output back-propagates to every
/// weight (through the trainable paths of softmax, RMS norm and RoPE), and the gradient is the loss's
/// slope: along a random direction in one attention weight, it matches a central finite difference.
#[test]
fn transformer_gradients_reach_every_weight_and_are_right() {
    let dir = fixture("wan-tiny-unipc").join("pipeline/transformer");
    let cfg = WanTransformerConfig::from_diffusers_file(&dir.join("config.json")).unwrap();
    let weights = candle_core::safetensors::load(
        dir.join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let vars: std::collections::HashMap<String, candle_core::Var> = weights
        .iter()
        .map(|(k, t)| {
            let t = t.to_dtype(DType::F32).unwrap();
            (k.clone(), candle_core::Var::from_tensor(&t).unwrap())
        })
        .collect();
    let build = |vars: &std::collections::HashMap<String, Tensor>| {
        let vb = candle_nn::VarBuilder::from_tensors(vars.clone(), DType::F32, &Device::Cpu);
        WanTransformer3DModel::new(&cfg, vb).unwrap()
    };
    let r = reference("wan-tiny-unipc");
    let forward = |m: &WanTransformer3DModel| {
        m.forward(
            &r["unit.transformer.in"],
            &r["unit.transformer.t"],
            &r["prompt_embeds"],
        )
        .unwrap()
    };
    let as_tensors: std::collections::HashMap<String, Tensor> = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    // The target sits 0.01 off the output at the base point, so the loss there is about 1e-4, which f32
    // resolves to about 1e-11 (a loss of order 1 resolves only to 1e-7, about 2 % of the finite
    // difference below, which made this test fail now and then).
    let target = (forward(&build(&as_tensors)).detach() + 0.01).unwrap();
    let loss_of = |m: &WanTransformer3DModel| {
        (forward(m) - &target)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
    };
    let grads = loss_of(&build(&as_tensors)).backward().unwrap();
    let mut missing = Vec::new();
    for (name, v) in &vars {
        match grads.get(v) {
            Some(g) if max_abs(g) > 0.0 => {}
            _ => missing.push(name.clone()),
        }
    }
    missing.sort();
    assert!(missing.is_empty(), "no gradient reaches {missing:?}");

    let name = "blocks.0.attn1.to_q.weight";
    let w = weights[name].to_dtype(DType::F64).unwrap();
    // A fixed direction (sin of the element index: spread over [-1, 1], no seed needed), so the test is
    // the same every run; a random one was now and then nearly orthogonal to the gradient.
    let d = Tensor::arange(0u32, w.elem_count() as u32, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .sin()
        .unwrap()
        .reshape(w.shape())
        .unwrap();
    let analytic = (grads
        .get(&vars[name])
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        * &d)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    // Small, so the loss's second-order growth (which would lift it far above 1e-4 and cost f32 digits)
    // stays below its value at the base point.
    let eps = 1e-4;
    let at = |s: f64| {
        let mut t = as_tensors.clone();
        let moved = (&w + (&d * s).unwrap()).unwrap();
        t.insert(name.into(), moved.to_dtype(DType::F32).unwrap());
        loss_of(&build(&t))
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
    // f32 forward passes: the finite difference carries a relative error near (f32 resolution of the
    // loss) / (eps * slope), small with the loss near 1e-4 (measured: 1.6934e-4 against 1.6901e-4, 0.2 %);
    // 1 % leaves nothing for a wrong backward rule (off by tens of percent or by sign). The floor only
    // guards a direction that happens to be flat.
    assert!(
        (analytic - numeric).abs() <= 0.01 * numeric.abs().max(1e-5),
        "directional derivative: backward {analytic}, finite difference {numeric}"
    );
}

#[test]
fn per_token_timesteps_match_diffusers() {
    // One timestep per token, as Wan2.2's image-to-video and diffusion forcing give it: the first latent
    // frame's 6 tokens at 0, the other 12 at 750 (fixture of tools/reference/make_mode_fixtures.py).
    let m = load("wan-tiny-alt");
    let r = reference("wan-tiny-v2v");
    let out = m
        .forward(
            &r["unit.per_token.in"],
            &r["unit.per_token.t"],
            &r["unit.per_token.text"],
        )
        .unwrap();
    let want = &r["unit.per_token.out"];
    let err = max_abs_diff(&out, want);
    println!(
        "per-token timesteps: max abs err {err:e} (scale {})",
        max_abs(want)
    );
    assert!(
        err <= 1e-4 * max_abs(want).max(1.0),
        "per-token forward differs by {err}"
    );
    // A per-token row of one value is the single timestep (to rounding: the time MLP then multiplies 18 rows
    // instead of 1, which the matrix kernel may sum in another order).
    let x = &r["unit.per_token.in"];
    let all = Tensor::full(750f32, (1, 18), x.device()).unwrap();
    let one = Tensor::new(&[750f32], x.device()).unwrap();
    let text = &r["unit.per_token.text"];
    let err = max_abs_diff(
        &m.forward(x, &all, text).unwrap(),
        &m.forward(x, &one, text).unwrap(),
    );
    assert!(
        err <= TOL,
        "a row of one timestep differs from the single timestep by {err}"
    );
    // A row of the wrong length is refused.
    let bad = Tensor::zeros((1, 17), candle_core::DType::F32, x.device()).unwrap();
    let e = m.forward(x, &bad, text).unwrap_err().to_string();
    assert!(e.contains("expected (1,) or (1, 18)"), "{e}");
}
