//! AdamW and the EMA against PyTorch (`tools/reference/make_train_fixtures.py`: torch.optim.AdamW, five
//! steps, gradients of two scales), a resumed run that is bit-identical to an uninterrupted one, and
//! checkpoints that do not fit the model refused with a clear message.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use sorrel_testkit::max_abs_diff as max_diff;
use sorrel_train::{load_checkpoint, save_checkpoint, AdamW, AdamWConfig, Ema};

fn reference() -> HashMap<String, Tensor> {
    let path = sorrel_testkit::fixture("train").join("adamw.safetensors");
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn config() -> AdamWConfig {
    AdamWConfig {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 0.1,
    }
}

fn params(r: &HashMap<String, Tensor>) -> Vec<(String, Var)> {
    (0..3)
        .map(|i| {
            let t = &r[&format!("param.{i}.init")];
            (format!("p{i}"), Var::from_tensor(t).unwrap())
        })
        .collect()
}

/// The fixture's step-`s` gradients as a GradStore for `params` (made by differentiating sum(p * g)).
fn grads(r: &HashMap<String, Tensor>, params: &[(String, Var)], s: usize) -> GradStore {
    let mut loss = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu).unwrap();
    for (i, (_, v)) in params.iter().enumerate() {
        let g = &r[&format!("grad.{i}.{s}")];
        loss = (loss + (v.as_tensor() * g).unwrap().sum_all().unwrap()).unwrap();
    }
    loss.backward().unwrap()
}

// f32 with the same formula as torch's, in a slightly different operation order (torch's foreach
// kernels): differences are a few ulp of values of order 1, so 1e-6 is ~10 ulp, while a wrong bias
// correction, epsilon placement or decay gives 1e-3 or more after five steps.
const TOL: f32 = 1e-6;

#[test]
fn adamw_and_ema_match_pytorch() {
    let r = reference();
    let p = params(&r);
    let mut opt = AdamW::new(p.clone(), config()).unwrap();
    let mut ema = Ema::new(&p, 0.9).unwrap();
    for s in 1..=5 {
        opt.step(&grads(&r, &p, s)).unwrap();
        ema.update(&p).unwrap();
        for (i, (_, v)) in p.iter().enumerate() {
            let e = max_diff(v.as_tensor(), &r[&format!("param.{i}.{s}")]);
            assert!(e <= TOL, "param {i} after step {s}: off by {e}");
            let e = max_diff(&ema.weights()[i].1, &r[&format!("ema.{i}.{s}")]);
            assert!(e <= TOL, "EMA {i} after step {s}: off by {e}");
        }
    }
    assert_eq!(opt.steps(), 5);
}

#[test]
fn a_resumed_run_is_bit_identical_and_foreign_checkpoints_are_refused() {
    let r = reference();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("step2.safetensors");

    let straight = params(&r);
    let mut opt = AdamW::new(straight.clone(), config()).unwrap();
    let mut ema = Ema::new(&straight, 0.9).unwrap();
    for s in 1..=5 {
        opt.step(&grads(&r, &straight, s)).unwrap();
        ema.update(&straight).unwrap();
        if s == 2 {
            save_checkpoint(
                &ckpt,
                &opt,
                Some(&ema),
                &serde_json::json!({"clips_seen": 128}),
            )
            .unwrap();
        }
    }

    // A fresh process: new variables from the initial values, then the checkpoint.
    let resumed = params(&r);
    let mut opt2 = AdamW::new(resumed.clone(), config()).unwrap();
    let mut ema2 = Ema::new(&resumed, 0.9).unwrap();
    let c = load_checkpoint(&ckpt, &mut opt2, Some(&mut ema2)).unwrap();
    assert_eq!(c.step, 2);
    assert_eq!(c.notes["clips_seen"], 128);
    for s in 3..=5 {
        opt2.step(&grads(&r, &resumed, s)).unwrap();
        ema2.update(&resumed).unwrap();
    }
    for i in 0..3 {
        assert_eq!(
            max_diff(straight[i].1.as_tensor(), resumed[i].1.as_tensor()),
            0.0
        );
        assert_eq!(max_diff(&ema.weights()[i].1, &ema2.weights()[i].1), 0.0);
    }

    // Another model: a parameter of another shape, a parameter the checkpoint lacks, not a checkpoint.
    let other = vec![(
        "p0".to_string(),
        Var::from_tensor(&Tensor::zeros(7, candle_core::DType::F32, &Device::Cpu).unwrap())
            .unwrap(),
    )];
    let mut o = AdamW::new(other, config()).unwrap();
    let e = load_checkpoint(&ckpt, &mut o, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("`param/p0` is [4, 3] but the model has [7]"),
        "{e}"
    );
    let extra = vec![(
        "q".to_string(),
        Var::from_tensor(&Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu).unwrap())
            .unwrap(),
    )];
    let mut o = AdamW::new(extra, config()).unwrap();
    let e = load_checkpoint(&ckpt, &mut o, None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no tensor `param/q`"), "{e}");
    let e = load_checkpoint(
        &sorrel_testkit::fixture("train").join("adamw.safetensors"),
        &mut o,
        None,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("not a Sorrel training checkpoint"), "{e}");
    let e = load_checkpoint(&dir.path().join("missing"), &mut o, None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("cannot read"), "{e}");
}

/// The pieces together: the Wan transformer (the engine's own code, fixture weights as variables) fitted by
/// AdamW to a fixed flow-matching target; the loss must fall well below where it started.
#[test]
fn adamw_fits_the_wan_transformer() {
    use sorrel_models::wan::config::WanTransformerConfig;
    use sorrel_models::wan::transformer::WanTransformer3DModel;
    let dir = sorrel_testkit::fixture("wan-tiny-unipc").join("pipeline/transformer");
    let cfg = WanTransformerConfig::from_diffusers_file(&dir.join("config.json")).unwrap();
    let weights = candle_core::safetensors::load(
        dir.join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    let params: Vec<(String, Var)> = names
        .into_iter()
        .map(|k| {
            let t = weights[k].to_dtype(candle_core::DType::F32).unwrap();
            (k.clone(), Var::from_tensor(&t).unwrap())
        })
        .collect();
    let vb = candle_nn::VarBuilder::from_tensors(
        params
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect(),
        candle_core::DType::F32,
        &Device::Cpu,
    );
    let model = WanTransformer3DModel::new(&cfg, vb).unwrap();
    let r = sorrel_testkit::reference("wan-tiny-unipc");
    let x = &r["unit.transformer.in"];
    let target = x.randn_like(0.0, 1.0).unwrap();
    let mut opt = AdamW::new(
        params,
        AdamWConfig {
            lr: 3e-3,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
    )
    .unwrap();
    let mut losses = Vec::new();
    for _ in 0..40 {
        let out = model
            .forward(x, &r["unit.transformer.t"], &r["prompt_embeds"])
            .unwrap();
        let loss = (out - &target).unwrap().sqr().unwrap().mean_all().unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last < 0.5 * first, "loss {first} -> {last}: {losses:?}");
}
