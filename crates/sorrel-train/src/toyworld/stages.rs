//! The first two training stages: the VAE on single frames, then the transformer and text encoder together
//! on the VAE's latents of a fixed set of clips (encoded once), with flow matching. The last, the decoder
//! alone, is in [`super::decoder`].

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::Rng;
use sorrel_models::wan::config::WanTransformerConfig;
use sorrel_models::wan::text_encoder::{Umt5Config, Umt5Encoder};
use sorrel_models::wan::tokenizer::WanTokenizer;
use sorrel_models::wan::transformer::WanTransformer3DModel;
use sorrel_models::wan::vae::{AutoencoderKLWan, VaeConfig};
use sorrel_toyworld::{render_span, Scene, WorldSize};

use super::data::{self, step_rng};
use super::init::{init_params, sorted_vars};
use super::log::LossLog;
use super::recipe::Recipe;
use crate::{load_checkpoint, save_checkpoint, AdamW, AdamWConfig, Ema, Result, TrainError};

/// Steps between checkpoints (and loss-log lines).
pub const CHECKPOINT_EVERY: u64 = 50;
/// Steps between loss-log lines.
pub const LOG_EVERY: u64 = 10;

/// What a stage reports as it goes.
#[derive(Debug, Clone, Copy)]
pub struct StageProgress {
    /// "vae", "latents", "transformer" or "decoder".
    pub stage: &'static str,
    /// Steps (or clips) done.
    pub done: u64,
    /// Steps (or clips) in all.
    pub total: u64,
    /// Mean loss since the last report (0 for "latents").
    pub loss: f64,
}

/// The progress callback.
pub type ProgressFn<'a> = dyn FnMut(&StageProgress) + 'a;

fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value, what: &str) -> Result<T> {
    serde_json::from_value(v).map_err(|e| TrainError::Invalid(format!("{what}: {e}")))
}

/// The VAE's config with neutral latent statistics (the real ones are measured after training).
pub fn vae_config(recipe: &Recipe) -> Result<VaeConfig> {
    let z = recipe.z_dim;
    parse(
        recipe.vae_config(&vec![0.0; z], &vec![1.0; z]),
        "VAE config",
    )
}

/// A fresh VAE in a VarMap.
pub fn new_vae(recipe: &Recipe, dev: &Device) -> Result<(VarMap, AutoencoderKLWan)> {
    let varmap = VarMap::new();
    let vae = AutoencoderKLWan::new(
        &vae_config(recipe)?,
        VarBuilder::from_varmap(&varmap, DType::F32, dev),
    )?;
    Ok((varmap, vae))
}

/// Runs (or continues, from `ckpt`) the VAE stage.
pub fn train_vae(
    recipe: &Recipe,
    ckpt: &Path,
    log: &mut LossLog,
    progress: &mut ProgressFn,
    dev: &Device,
) -> Result<VarMap> {
    let dev = dev.clone();
    let (varmap, vae) = new_vae(recipe, &dev)?;
    let params = sorted_vars(&varmap, "");
    init_params(&params, recipe.seed)?;
    let mut opt = adamw(params, recipe.vae_lr)?;
    let world = world_size(recipe);
    let stage = Stage {
        name: "vae",
        label: "VAE",
        fix: "--vae-lr",
        steps: recipe.vae_steps,
        seed: recipe.seed,
        rng_stage: 1,
        ckpt,
    };
    run_stage(
        &stage,
        &mut opt,
        None,
        |_| recipe.vae_lr,
        log,
        progress,
        |rng| {
            let (x, w) = data::vae_batch(rng, recipe.vae_batch, world, &dev)?;
            let (mean, logvar) = vae.encode(&x)?;
            let eps = data::normal(rng, mean.dims(), &dev)?;
            let z = (&mean + ((&logvar * 0.5)?.exp()? * eps)?)?;
            let y = vae.decode(&z)?;
            let d = (y - &x)?;
            let rec = ((d.abs()? + d.sqr()?)?.broadcast_mul(&w)?).mean_all()?;
            let kl = (((mean.sqr()? + logvar.exp()?)? - 1.0)? - &logvar)?.mean_all()?;
            Ok((rec + (kl * 0.5e-4)?)?)
        },
    )?;
    Ok(varmap)
}

/// AdamW without weight decay (none of the stages uses it), starting at `lr`.
pub(super) fn adamw(params: Vec<(String, Var)>, lr: f64) -> Result<AdamW> {
    AdamW::new(
        params,
        AdamWConfig {
            lr,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
    )
}

/// The clip size of `recipe`'s world.
pub(super) fn world_size(recipe: &Recipe) -> WorldSize {
    WorldSize {
        size: recipe.size,
        frames: recipe.frames,
    }
}

/// What tells one optimiser stage from another; [`run_stage`] does the rest.
pub(super) struct Stage<'a> {
    /// Its name in the loss log, the progress reports and the checkpoint's notes.
    pub name: &'static str,
    /// Its name in the error a diverged loss gives.
    pub label: &'static str,
    /// The setting that error tells the user to lower.
    pub fix: &'static str,
    /// Optimiser steps in all.
    pub steps: u64,
    /// The run's seed.
    pub seed: u64,
    /// The stage number in [`step_rng`], so each stage draws its own data.
    pub rng_stage: u64,
    /// Its checkpoint, continued from when it exists.
    pub ckpt: &'a Path,
}

/// Runs (or continues, from the stage's checkpoint) `stage`: each step draws its data from its own
/// seeded generator, sets the learning rate from `lr_at`, takes one AdamW step on `loss_of`'s loss and
/// updates `ema` (with the parameters it follows); the loss is logged every [`LOG_EVERY`] steps and the
/// stage checkpointed every [`CHECKPOINT_EVERY`] and at its end.
pub(super) fn run_stage(
    stage: &Stage,
    opt: &mut AdamW,
    mut ema: Option<(&mut Ema, &[(String, Var)])>,
    lr_at: impl Fn(u64) -> f64,
    log: &mut LossLog,
    progress: &mut ProgressFn,
    mut loss_of: impl FnMut(&mut rand::rngs::StdRng) -> Result<Tensor>,
) -> Result<()> {
    if stage.ckpt.exists() {
        load_checkpoint(stage.ckpt, opt, ema.as_mut().map(|e| &mut *e.0))?;
    }
    let t0 = Instant::now();
    let mut acc = (0.0, 0u64);
    while opt.steps() < stage.steps {
        let step = opt.steps();
        opt.config.lr = lr_at(step);
        let mut rng = step_rng(stage.seed, stage.rng_stage, step);
        let loss = loss_of(&mut rng)?;
        let l = loss.to_scalar::<f32>()? as f64;
        if !l.is_finite() {
            return Err(TrainError::Invalid(format!(
                "the {} loss became {l} at step {step}: lower {}",
                stage.label, stage.fix
            )));
        }
        opt.step(&loss.backward()?)?;
        if let Some((ema, params)) = ema.as_mut() {
            ema.update(params)?;
        }
        acc = (acc.0 + l, acc.1 + 1);
        report(
            stage.name,
            opt.steps(),
            stage.steps,
            &mut acc,
            t0,
            log,
            progress,
        )?;
        if opt.steps().is_multiple_of(CHECKPOINT_EVERY) || opt.steps() == stage.steps {
            save_checkpoint(
                stage.ckpt,
                opt,
                ema.as_ref().map(|e| &*e.0),
                &serde_json::json!({"stage": stage.name}),
            )?;
        }
    }
    Ok(())
}

fn report(
    stage: &'static str,
    done: u64,
    total: u64,
    acc: &mut (f64, u64),
    t0: Instant,
    log: &mut LossLog,
    progress: &mut ProgressFn,
) -> Result<()> {
    if done.is_multiple_of(LOG_EVERY) || done == total {
        let loss = acc.0 / acc.1.max(1) as f64;
        log.record(stage, done, loss, t0.elapsed().as_secs_f64())?;
        progress(&StageProgress {
            stage,
            done,
            total,
            loss,
        });
        *acc = (0.0, 0);
    }
    Ok(())
}

/// The trained VAE rebuilt from plain tensors of `varmap`, for encoding: built on the variables, every
/// output would hold its whole graph (all of the encoder's activations) alive, which for thousands of clips
/// runs out of memory.
pub fn frozen_vae(recipe: &Recipe, varmap: &VarMap, dev: &Device) -> Result<AutoencoderKLWan> {
    let plain: std::collections::HashMap<String, Tensor> = sorted_vars(varmap, "")
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().detach()))
        .collect();
    Ok(AutoencoderKLWan::new(
        &vae_config(recipe)?,
        VarBuilder::from_tensors(plain, DType::F32, dev),
    )?)
}

/// Encodes the spans of training scenes 0..latent_clips (each `recipe.span()` frames from
/// [`data::span_start`]) as per-frame latent means: (N, z, span, h, w), with the per-channel mean and std
/// over all of them.
pub fn encode_latents(
    recipe: &Recipe,
    vae: &AutoencoderKLWan,
    progress: &mut ProgressFn,
    dev: &Device,
) -> Result<(Tensor, Vec<f64>, Vec<f64>)> {
    let dev = dev.clone();
    let world = WorldSize {
        size: recipe.size,
        frames: recipe.frames,
    };
    let (f, n) = (recipe.span(), recipe.latent_clips);
    let per_batch = 32;
    let mut out = Vec::new();
    for start in (0..n).step_by(per_batch) {
        let end = (start + per_batch).min(n);
        let clips = (start..end)
            .map(|i| {
                let first = data::span_start(i, recipe.span_start_max);
                let clip = render_span(&data::train_scene(i), world, first, f);
                data::frames_to_tensor(&clip.frames, recipe.size, &dev)
            })
            .collect::<Result<Vec<_>>>()?;
        // (B, 3, F, H, W) -> (B*F, 3, 1, H, W): the VAE is per-frame, and single frames take its fast path.
        let x = Tensor::stack(&clips, 0)?;
        let (b, c, _, h, w) = x.dims5()?;
        let imgs = x
            .permute((0, 2, 1, 3, 4))?
            .reshape((b * f, c, 1, h, w))?
            .contiguous()?;
        let (mean, _) = vae.encode(&imgs)?;
        let mean = mean.detach();
        let (_, z, _, lh, lw) = mean.dims5()?;
        let lat = mean
            .reshape((b, f, z, lh, lw))?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()?;
        out.push(lat);
        progress(&StageProgress {
            stage: "latents",
            done: end as u64,
            total: n as u64,
            loss: 0.0,
        });
    }
    let lat = Tensor::cat(&out, 0)?;
    let z = recipe.z_dim;
    let per_channel = lat.transpose(0, 1)?.contiguous()?.reshape((z, ()))?;
    let mean = per_channel.mean_keepdim(1)?;
    let std = per_channel
        .broadcast_sub(&mean)?
        .sqr()?
        .mean_keepdim(1)?
        .sqrt()?;
    let to_vec = |t: &Tensor| -> Result<Vec<f64>> {
        Ok(t.flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .map(|v| (v as f64 * 1e4).round() / 1e4)
            .collect())
    };
    Ok((lat, to_vec(&mean)?, to_vec(&std)?))
}

/// The transformer and text encoder, built in two VarMaps.
pub struct Denoiser {
    /// Text encoder weights (transformers names).
    pub text_vars: VarMap,
    /// Transformer weights (diffusers names).
    pub transformer_vars: VarMap,
    /// The text encoder.
    pub text_encoder: Umt5Encoder,
    /// The transformer.
    pub transformer: WanTransformer3DModel,
}

impl Denoiser {
    /// Fresh, untrained.
    pub fn new(recipe: &Recipe, vocab_size: usize, dev: &Device) -> Result<Self> {
        let text_cfg: Umt5Config = parse(
            recipe.text_encoder_config(vocab_size),
            "text encoder config",
        )?;
        let tr_cfg: WanTransformerConfig =
            parse(recipe.transformer_config(), "transformer config")?;
        let text_vars = VarMap::new();
        let transformer_vars = VarMap::new();
        let text_encoder = Umt5Encoder::new(
            &text_cfg,
            VarBuilder::from_varmap(&text_vars, DType::F32, dev),
        )?;
        let transformer = WanTransformer3DModel::new(
            &tr_cfg,
            VarBuilder::from_varmap(&transformer_vars, DType::F32, dev),
        )?;
        Ok(Self {
            text_vars,
            transformer_vars,
            text_encoder,
            transformer,
        })
    }

    /// All parameters, prefixed `text_encoder/` and `transformer/`, in name order.
    pub fn params(&self) -> Vec<(String, Var)> {
        let mut p = sorted_vars(&self.text_vars, "text_encoder/");
        p.extend(sorted_vars(&self.transformer_vars, "transformer/"));
        p
    }
}

/// Weights the transformer stage starts from instead of fresh ones (`sorrel train --from`).
pub struct StartFrom {
    /// Prefixed names (`text_encoder/...`, `transformer/...`) to tensors.
    pub weights: std::collections::HashMap<String, Tensor>,
    /// For each token id of this run's vocabulary, the row of the starting word embedding it takes
    /// (`None`: a fresh row).
    pub embed_rows: Vec<Option<usize>>,
}

impl StartFrom {
    /// Sets `params` (freshly initialised) to the starting weights; the word embedding row by row.
    fn apply(&self, params: &[(String, Var)]) -> Result<()> {
        for (name, var) in params {
            let Some(t) = self.weights.get(name) else {
                return Err(TrainError::Invalid(format!(
                    "the starting model has no {name}: start from a folder of the same architecture"
                )));
            };
            if t.dims() == var.dims() {
                var.set(t)?;
            } else if name.ends_with("embed_tokens.weight") && t.dim(1)? == var.dim(1)? {
                let fresh = var.as_tensor().detach();
                let rows = self
                    .embed_rows
                    .iter()
                    .enumerate()
                    .map(|(i, r)| match r {
                        Some(o) => t.get(*o),
                        None => fresh.get(i),
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                var.set(&Tensor::stack(&rows, 0)?)?;
            } else {
                return Err(TrainError::Invalid(format!(
                    "the starting model's {name} is {:?} but this recipe makes {:?}: start from a folder \
                     of the same sizes",
                    t.dims(),
                    var.dims()
                )));
            }
        }
        Ok(())
    }
}

/// Runs (or continues, from `ckpt`) the transformer stage on normalised `latents` (N, z, span, h, w), on
/// their device, from fresh weights or from `start`. Returns the EMA weights by prefixed name.
pub fn train_denoiser(
    recipe: &Recipe,
    latents: &Tensor,
    tokenizer: &WanTokenizer,
    start: Option<&StartFrom>,
    ckpt: &Path,
    log: &mut LossLog,
    progress: &mut ProgressFn,
) -> Result<Vec<(String, Tensor)>> {
    // Trained where the latents are.
    let dev = latents.device().clone();
    let model = Denoiser::new(recipe, super::tokenizer::vocab_size(), &dev)?;
    let params = model.params();
    init_params(&params, recipe.seed.wrapping_add(1))?;
    if let Some(start) = start {
        start.apply(&params)?;
    }
    let mut opt = adamw(params.clone(), recipe.dit_lr)?;
    let mut ema = Ema::new(&params, recipe.ema_decay)?;
    let (n, span) = (latents.dim(0)?, latents.dim(2)?);
    let f = recipe.frames;
    let scenes: Vec<Scene> = (0..n).map(data::train_scene).collect();
    let b = recipe.dit_batch;
    // Tokens per 2-frame slice: the latents' (h/2) x (w/2) patches.
    let per_slice = (latents.dim(3)? / 2) * (latents.dim(4)? / 2);
    let told_len = f / 2 * per_slice;
    let mut per_clip: Vec<data::ClipNoise> = Vec::with_capacity(b);
    let stage = Stage {
        name: "transformer",
        label: "transformer",
        fix: "--dit-lr",
        steps: recipe.dit_steps,
        seed: recipe.seed,
        rng_stage: 2,
        ckpt,
    };
    let lr_at = |step| recipe.dit_lr_at(step);
    run_stage(
        &stage,
        &mut opt,
        Some((&mut ema, &params)),
        lr_at,
        log,
        progress,
        |rng| {
            let noises: Vec<data::ClipNoise> = (0..b)
                .map(|_| {
                    data::clip_noise(
                        rng,
                        f,
                        recipe.context_share,
                        recipe.context_kinds,
                        recipe.slice_noise_share,
                        recipe.noise_shift,
                    )
                })
                .collect();
            // Clips that start where their caption starts come from even scenes, whose spans start at 0.
            let mut clips = Vec::with_capacity(b);
            let mut idx = Vec::with_capacity(b);
            for mut c in noises {
                let i = if c.from_start && span > f {
                    2 * rng.random_range(0..n.div_ceil(2))
                } else {
                    rng.random_range(0..n)
                };
                c.place(rng, span, f);
                clips.push(latents.get(i)?.narrow(1, c.offset, f)?);
                idx.push(i);
                per_clip.push(c);
            }
            let x0 = Tensor::stack(&clips, 0)?;
            let noise = data::normal(rng, x0.dims(), &dev)?;
            let sigma: Vec<f32> = per_clip
                .iter()
                .flat_map(|c| c.frame_sigma.clone())
                .collect();
            let s = Tensor::from_vec(sigma, (b, 1, f, 1, 1), &dev)?;
            let xt = (x0.broadcast_mul(&(1.0 - &s)?)? + noise.broadcast_mul(&s)?)?;
            // Each 2-frame slice's tokens are told its level: (B, slices * tokens per slice).
            let told: Vec<f32> = per_clip
                .iter()
                .flat_map(|c| {
                    c.slice_sigma
                        .iter()
                        .flat_map(|&v| std::iter::repeat_n(v * 1000.0, per_slice))
                        .collect::<Vec<_>>()
                })
                .collect();
            let t = Tensor::from_vec(told, (b, told_len), &dev)?;
            let weights: Vec<f32> = per_clip.iter().flat_map(|c| c.loss.clone()).collect();
            let w = Tensor::from_vec(weights, (b, 1, f, 1, 1), &dev)?;
            per_clip.clear();
            let captions: Vec<String> = idx
                .iter()
                .map(|&i| {
                    data::train_caption(
                        rng,
                        &scenes[i],
                        recipe.caption_dropout,
                        recipe.paraphrase_share,
                        recipe.floorless_share,
                    )
                })
                .collect();
            let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
            let tokens = tokenizer
                .encode(&refs, recipe.text_len)
                .map_err(|e| TrainError::Invalid(e.to_string()))?;
            let (ids, mask) = tokens.to_tensors(&dev)?;
            let emb = model.text_encoder.prompt_embeds(&ids, &mask)?;
            let pred = model.transformer.forward(&xt, &t, &emb)?;
            // The mean squared error over the frames to generate only.
            let per_frame = (x0.elem_count() / (b * f)) as f64;
            let err = (pred - (noise - x0)?)?
                .sqr()?
                .broadcast_mul(&w)?
                .sum_all()?;
            Ok((err / (w.sum_all()?.to_scalar::<f32>()? as f64 * per_frame))?)
        },
    )?;
    Ok(ema.weights().to_vec())
}
