//! The embedded default model: a tiny Wan (VAE, UMT5 text encoder over a word vocabulary, transformer)
//! trained from scratch on the procedural toy world by [`train`], with the same engine code that runs the
//! released Wan models.

pub mod data;
pub mod eval;
pub mod export;
pub mod init;
pub mod log;
pub mod recipe;
pub mod stages;
pub mod tokenizer;

use std::path::{Path, PathBuf};
use std::time::Instant;

pub use recipe::Recipe;
pub use stages::{StageProgress, CHECKPOINT_EVERY};

use crate::{Result, TrainError};

/// Where one run keeps its state.
#[derive(Debug, Clone)]
pub struct RunPaths {
    /// The work folder.
    pub work: PathBuf,
}

impl RunPaths {
    fn file(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }
    /// The recipe the run was started with.
    pub fn recipe(&self) -> PathBuf {
        self.file("recipe.json")
    }
    /// VAE checkpoint.
    pub fn vae_ckpt(&self) -> PathBuf {
        self.file("vae.ckpt.safetensors")
    }
    /// Encoded training latents, with their statistics.
    pub fn latents(&self) -> PathBuf {
        self.file("latents.safetensors")
    }
    /// Transformer checkpoint.
    pub fn dit_ckpt(&self) -> PathBuf {
        self.file("transformer.ckpt.safetensors")
    }
    /// Loss log.
    pub fn loss_log(&self) -> PathBuf {
        self.file("loss.csv")
    }
    /// Loss curve.
    pub fn loss_png(&self) -> PathBuf {
        self.file("loss.png")
    }
}

/// Trains the model of `recipe` in `work` and writes it to `out`. With `resume`, a run already in `work`
/// continues from its checkpoints (it must have the same recipe); without, `work` must hold no run.
pub fn train(
    recipe: &Recipe,
    work: &Path,
    out: &Path,
    resume: bool,
    progress: &mut stages::ProgressFn,
) -> Result<()> {
    recipe.validate().map_err(TrainError::Invalid)?;
    let paths = RunPaths {
        work: work.to_path_buf(),
    };
    let io = |p: &Path, e: std::io::Error| TrainError::io(p, e);
    std::fs::create_dir_all(work).map_err(|e| io(work, e))?;
    let recipe_json = serde_json::to_string_pretty(recipe).expect("recipe serialises");
    // Step counts may change on resume (to train longer, or to stop early and export), and so may the
    // sampling settings written into the folder, which training does not use.
    let comparable = |r: &Recipe| Recipe {
        vae_steps: 0,
        dit_steps: 0,
        dit_lr_decay_steps: 0,
        sample_steps: 0,
        guidance: 0.0,
        flow_shift: 0.0,
        ..r.clone()
    };
    if paths.recipe().exists() {
        let old = std::fs::read_to_string(paths.recipe()).map_err(|e| io(&paths.recipe(), e))?;
        if !resume {
            return Err(TrainError::Invalid(format!(
                "{} already holds a training run: pass --resume to continue it, or choose another --work folder",
                work.display()
            )));
        }
        let same = serde_json::from_str::<Recipe>(&old)
            .is_ok_and(|o| comparable(&o) == comparable(recipe));
        if !same {
            return Err(TrainError::Invalid(format!(
                "{} holds a run with a different recipe ({}): resume it with the same settings, or start a \
                 new --work folder",
                work.display(),
                paths.recipe().display()
            )));
        }
    }
    std::fs::write(paths.recipe(), &recipe_json).map_err(|e| io(&paths.recipe(), e))?;
    let mut log = log::LossLog::open(&paths.loss_log(), false)?;
    let started = Instant::now();

    let varmap = stages::train_vae(recipe, &paths.vae_ckpt(), &mut log, progress)?;
    let vae_weights = init::sorted_vars(&varmap, "")
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().detach()))
        .collect::<Vec<_>>();

    let (latents, mean, std) = if paths.latents().exists() {
        read_latents(&paths.latents())?
    } else {
        let vae = stages::frozen_vae(recipe, &varmap)?;
        let (lat, mean, std) = stages::encode_latents(recipe, &vae, progress)?;
        write_latents(&paths.latents(), &lat, &mean, &std)?;
        (lat, mean, std)
    };
    let z = recipe.z_dim;
    let as_t = |v: &[f64]| {
        candle_core::Tensor::new(
            v.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            latents.device(),
        )?
        .reshape((1, z, 1, 1, 1))
    };
    let normed = latents
        .broadcast_sub(&as_t(&mean)?)?
        .broadcast_div(&as_t(&std)?)?;

    let tok_dir = tempfile::tempdir().map_err(|e| io(work, e))?;
    let tok_path = tok_dir.path().join("tokenizer.json");
    std::fs::write(&tok_path, tokenizer::tokenizer_json().to_string())
        .map_err(|e| io(&tok_path, e))?;
    let tok = sorrel_models::wan::tokenizer::WanTokenizer::from_file(&tok_path)
        .map_err(|e| TrainError::Invalid(e.to_string()))?;
    let ema = stages::train_denoiser(recipe, &normed, &tok, &paths.dit_ckpt(), &mut log, progress)?;

    let split = |prefix: &str| -> Vec<(String, candle_core::Tensor)> {
        ema.iter()
            .filter_map(|(n, t)| n.strip_prefix(prefix).map(|n| (n.to_string(), t.clone())))
            .collect()
    };
    let vae_pts = log.points("vae")?;
    let dit_pts = log.points("transformer")?;
    log::plot_png(
        &paths.loss_png(),
        &[(&vae_pts, [200, 60, 40]), (&dit_pts, [40, 90, 200])],
        640,
        320,
    )?;
    let last = |p: &[(u64, f64)]| p.last().map_or(f64::NAN, |x| x.1);
    export::write_model(
        out,
        &export::ModelParts {
            recipe,
            latents_mean: &mean,
            latents_std: &std,
            vae: vae_weights,
            text_encoder: split("text_encoder/"),
            transformer: split("transformer/"),
            provenance: serde_json::json!({
                "trained_by": "sorrel train",
                "final_vae_loss": last(&vae_pts),
                "final_transformer_loss": last(&dit_pts),
                "seconds_this_session": started.elapsed().as_secs(),
            }),
        },
    )
}

fn write_latents(path: &Path, lat: &candle_core::Tensor, mean: &[f64], std: &[f64]) -> Result<()> {
    let stats = candle_core::Tensor::new(
        mean.iter()
            .chain(std)
            .map(|&x| x as f32)
            .collect::<Vec<_>>(),
        lat.device(),
    )?;
    let tmp = path.with_extension("tmp");
    candle_core::safetensors::save(
        &[
            ("latents".to_string(), lat.clone()),
            ("stats".to_string(), stats),
        ]
        .into_iter()
        .collect(),
        &tmp,
    )?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

type Latents = (candle_core::Tensor, Vec<f64>, Vec<f64>);

fn read_latents(path: &Path) -> Result<Latents> {
    let mut m = candle_core::safetensors::load(path, &candle_core::Device::Cpu)?;
    let bad = || {
        TrainError::Invalid(format!(
            "{} is not a latents file of this run: delete it",
            path.display()
        ))
    };
    let lat = m.remove("latents").ok_or_else(bad)?;
    let stats: Vec<f64> = m
        .remove("stats")
        .ok_or_else(bad)?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect();
    let z = stats.len() / 2;
    Ok((lat, stats[..z].to_vec(), stats[z..].to_vec()))
}
