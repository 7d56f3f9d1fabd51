//! The last stage: more training of the VAE's decoder alone, on the latents its frozen encoder gives.
//!
//! The transformer learns the encoder's latent space, so once the latents are encoded the encoder must not
//! change; the decoder can. Measured on the fourth model, the VAE's round trip (not the transformer) set the
//! ceiling on object permanence and shape (`docs/models/toyworld.md`), and the VAE loss was still falling
//! when its stage ended. Because this stage touches neither the encoder nor the transformer, it can also be
//! run on a model folder that was exported without it ([`super::refine`]), with the same result as a run
//! from scratch: it starts from the VAE weights rounded to f16, as the folder stores them.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use sorrel_models::wan::vae::AutoencoderKLWan;

use super::data;
use super::init::sorted_vars;
use super::log::LossLog;
use super::recipe::Recipe;
use super::stages::{self, run_stage, ProgressFn, Stage};
use crate::{Result, TrainError};

/// Stage number in the data seeds (1 is the VAE, 2 the transformer).
const STAGE_SEED: u64 = 3;

/// Whether a VAE weight belongs to the decoder side (what this stage trains).
pub fn is_decoder_weight(name: &str) -> bool {
    name.starts_with("decoder.") || name.starts_with("post_quant_conv.")
}

/// `weights` as the model folder stores them: rounded to f16, held as f32.
pub fn as_stored(weights: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
    weights
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.to_dtype(DType::F16)?.to_dtype(DType::F32)?)))
        .collect()
}

/// Runs (or continues, from `ckpt`) the decoder stage from `vae` (every VAE weight, diffusers names, f32)
/// and returns every VAE weight with the decoder's replaced. With `decoder_steps` 0 it returns `vae`.
pub fn refine_decoder(
    recipe: &Recipe,
    vae: &[(String, Tensor)],
    ckpt: &Path,
    log: &mut LossLog,
    progress: &mut ProgressFn,
    dev: &Device,
) -> Result<Vec<(String, Tensor)>> {
    if recipe.decoder_steps == 0 {
        return Ok(vae.to_vec());
    }
    let dev = dev.clone();
    let given: HashMap<String, Tensor> = vae.iter().cloned().collect();
    let encoder = AutoencoderKLWan::new(
        &stages::vae_config(recipe)?,
        VarBuilder::from_tensors(given.clone(), DType::F32, &dev),
    )?;
    let (varmap, model) = stages::new_vae(recipe, &dev)?;
    let all = sorted_vars(&varmap, "");
    for (name, var) in &all {
        let t = given.get(name).ok_or_else(|| {
            TrainError::Invalid(format!(
                "the VAE weights have no `{name}`: they were written for another recipe"
            ))
        })?;
        if t.dims() != var.dims() {
            return Err(TrainError::Invalid(format!(
                "the VAE weight `{name}` is {:?} but the recipe makes it {:?}: they were written for \
                 another recipe",
                t.dims(),
                var.dims()
            )));
        }
        var.set(t)?;
    }
    let params: Vec<_> = all
        .into_iter()
        .filter(|(n, _)| is_decoder_weight(n))
        .collect();
    let mut opt = stages::adamw(params.clone(), recipe.decoder_lr)?;
    let world = stages::world_size(recipe);
    let stage = Stage {
        name: "decoder",
        label: "decoder",
        fix: "the decoder learning rate",
        steps: recipe.decoder_steps,
        seed: recipe.seed,
        rng_stage: STAGE_SEED,
        ckpt,
    };
    let lr_at = |step| recipe.decoder_lr_at(step);
    run_stage(&stage, &mut opt, None, lr_at, log, progress, |rng| {
        let (x, w) = data::vae_batch(rng, recipe.vae_batch, world, &dev)?;
        // The posterior mean, as the training latents are: the decoder learns to draw what the
        // transformer is taught to produce.
        let (mean, _) = encoder.encode(&x)?;
        let y = model.decode(&mean.detach())?;
        let d = (y - &x)?;
        Ok(((d.abs()? + d.sqr()?)?.broadcast_mul(&w)?).mean_all()?)
    })?;
    let trained: HashMap<String, Tensor> = params
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
        .collect();
    Ok(vae
        .iter()
        .map(|(n, t)| (n.clone(), trained.get(n).unwrap_or(t).clone()))
        .collect())
}
