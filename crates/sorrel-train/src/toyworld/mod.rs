//! The embedded default model: a tiny Wan (VAE, UMT5 text encoder over a word vocabulary, transformer)
//! trained from scratch on the procedural toy world by [`train`], with the same engine code that runs the
//! released Wan models.

pub mod data;
pub mod decoder;
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
pub use stages::{StageProgress, StartFrom, CHECKPOINT_EVERY};

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
    /// Decoder-stage checkpoint.
    pub fn decoder_ckpt(&self) -> PathBuf {
        self.file("decoder.ckpt.safetensors")
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

/// Trains the model of `recipe` in `work` on `device` and writes it to `out`. With `resume`, a run already in `work`
/// continues from its checkpoints (it must have the same recipe); without, `work` must hold no run.
pub fn train(
    recipe: &Recipe,
    work: &Path,
    out: &Path,
    resume: bool,
    device: &candle_core::Device,
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
    let comparable = Recipe::without_step_counts;
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

    let varmap = stages::train_vae(recipe, &paths.vae_ckpt(), &mut log, progress, device)?;
    let vae_weights = init::sorted_vars(&varmap, "")
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().detach()))
        .collect::<Vec<_>>();

    let (latents, mean, std) = if paths.latents().exists() {
        read_latents(&paths.latents())?
    } else {
        let vae = stages::frozen_vae(recipe, &varmap, device)?;
        let (lat, mean, std) = stages::encode_latents(recipe, &vae, progress, device)?;
        write_latents(&paths.latents(), &lat, &mean, &std)?;
        (lat, mean, std)
    };
    let normed = normalise(&latents, &mean, &std)?.to_device(device)?;

    let tok = toy_tokenizer(work)?;
    let ema = stages::train_denoiser(
        recipe,
        &normed,
        &tok,
        None,
        &paths.dit_ckpt(),
        &mut log,
        progress,
    )?;
    let vae_weights = decoder::refine_decoder(
        recipe,
        &decoder::as_stored(&vae_weights)?,
        &paths.decoder_ckpt(),
        &mut log,
        progress,
        device,
    )?;

    let split = |prefix: &str| -> Vec<(String, candle_core::Tensor)> {
        ema.iter()
            .filter_map(|(n, t)| n.strip_prefix(prefix).map(|n| (n.to_string(), t.clone())))
            .collect()
    };
    let vae_pts = log.points("vae")?;
    let dit_pts = log.points("transformer")?;
    let dec_pts = log.points("decoder")?;
    plot_losses(&paths, &vae_pts, &dit_pts, &dec_pts)?;
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
                "final_decoder_loss": last(&dec_pts),
                "seconds_this_session": started.elapsed().as_secs(),
            }),
        },
    )
}

fn plot_losses(
    paths: &RunPaths,
    vae: &[(u64, f64)],
    transformer: &[(u64, f64)],
    decoder: &[(u64, f64)],
) -> Result<()> {
    log::plot_png(
        &paths.loss_png(),
        &[
            (vae, [200, 60, 40]),
            (transformer, [40, 90, 200]),
            (decoder, [40, 150, 60]),
        ],
        640,
        320,
    )
}

/// Runs the decoder stage of `recipe` on the model folder `model` (written by [`train`] with a recipe that
/// differs at most in step counts and sampling settings) and writes the result to `out`. Its text encoder,
/// transformer and VAE encoder are copied unchanged; its VAE decoder is trained as [`train`] would have
/// trained it, from the same f16 weights, so the result is the one a run from scratch gives. `work` holds
/// the stage's checkpoint and loss log; with `resume` an interrupted refinement continues where it stopped.
pub fn refine(
    recipe: &Recipe,
    model: &Path,
    work: &Path,
    out: &Path,
    resume: bool,
    device: &candle_core::Device,
    progress: &mut stages::ProgressFn,
) -> Result<()> {
    recipe.validate().map_err(TrainError::Invalid)?;
    if recipe.decoder_steps == 0 {
        return Err(TrainError::Invalid(
            "refining a model needs decoder steps: pass --decoder-steps N (N > 0)".into(),
        ));
    }
    let io = |p: &Path, e: std::io::Error| TrainError::io(p, e);
    let Folder {
        defaults,
        recipe: trained,
        mean,
        std,
        vae,
        text_encoder,
        transformer,
        ..
    } = Folder::read(model)?;
    // The folder's decoder stage is the one about to run, so its rate may differ too; floorless captions,
    // independent slice noise and the noise shift are read by the transformer stage alone, and folders
    // written before them record none.
    let comparable = |r: &Recipe| Recipe {
        decoder_lr: 0.0,
        floorless_share: 0.0,
        slice_noise_share: 0.0,
        noise_shift: 1.0,
        ..r.without_step_counts()
    };
    if comparable(&trained) != comparable(recipe) {
        return Err(TrainError::Invalid(format!(
            "{} was trained with another recipe (sizes or settings differ from this one): refine it with \
             the recipe it was trained with",
            model.display()
        )));
    }
    if trained.decoder_steps > 0 {
        return Err(TrainError::Invalid(format!(
            "{}'s decoder was already refined ({} steps): refine the folder its run wrote before that, or \
             train from scratch",
            model.display(),
            trained.decoder_steps
        )));
    }
    let paths = RunPaths {
        work: work.to_path_buf(),
    };
    std::fs::create_dir_all(work).map_err(|e| io(work, e))?;
    if !resume && (paths.decoder_ckpt().exists() || paths.recipe().exists()) {
        return Err(TrainError::Invalid(format!(
            "{} already holds a run: pass --resume to continue its refinement, or choose another --work \
             folder",
            work.display()
        )));
    }
    let out_recipe = Recipe {
        decoder_steps: recipe.decoder_steps,
        decoder_lr: recipe.decoder_lr,
        sample_steps: recipe.sample_steps,
        guidance: recipe.guidance,
        flow_shift: recipe.flow_shift,
        ..trained
    };
    let mut log = log::LossLog::open(&paths.loss_log(), !resume)?;
    let started = Instant::now();
    let vae = decoder::refine_decoder(
        &out_recipe,
        &vae,
        &paths.decoder_ckpt(),
        &mut log,
        progress,
        device,
    )?;
    let dec_pts = log.points("decoder")?;
    plot_losses(&paths, &[], &[], &dec_pts)?;
    let mut provenance = defaults["provenance"].clone();
    if let Some(p) = provenance.as_object_mut() {
        p.insert(
            "final_decoder_loss".into(),
            dec_pts.last().map_or(f64::NAN, |x| x.1).into(),
        );
        p.insert(
            "decoder_refined_by".into(),
            "sorrel train --refine (the decoder stage run on this folder's first two stages)"
                .into(),
        );
        p.insert(
            "decoder_seconds_this_session".into(),
            started.elapsed().as_secs().into(),
        );
    }
    export::write_model(
        out,
        &export::ModelParts {
            recipe: &out_recipe,
            latents_mean: &mean,
            latents_std: &std,
            vae,
            text_encoder,
            transformer,
            provenance,
        },
    )
}

/// Words of this vocabulary a folder's older vocabulary may lack, and the word whose embedding each starts
/// from when training continues from that folder (a synonym, or the closest word in role).
const STARTS_AS: &[(&str, &str)] = &[
    ("one", "a"),
    ("One", "A"),
    ("1", "a"),
    ("2", "two"),
    ("3", "three"),
    ("little", "small"),
    ("tiny", "small"),
    ("large", "big"),
    ("sphere", "ball"),
    ("spheres", "balls"),
    ("cube", "box"),
    ("cubes", "boxes"),
    ("goes", "moves"),
    ("go", "move"),
    ("going", "moving"),
    ("rises", "moves"),
    ("rise", "move"),
    ("rising", "moving"),
    ("floats", "moves"),
    ("float", "move"),
    ("floating", "moving"),
    ("hops", "bounces"),
    ("hop", "bounce"),
    ("hopping", "bouncing"),
    ("gets", "grows"),
    ("get", "grow"),
    ("getting", "growing"),
    ("bigger", "grows"),
    ("smaller", "shrinks"),
    ("over", "above"),
    ("ground", "floor"),
    ("On", "on"),
    ("The", "the"),
    ("is", "on"),
];

/// Trains the transformer and text encoder of `recipe` starting from the folder `model` (written by
/// `sorrel train`, same sizes) and writes the result to `out` with the folder's VAE and latent statistics
/// unchanged: the latents stage and the transformer stage of [`train`] only. Words the folder's vocabulary
/// lacks start from a synonym's embedding ([`STARTS_AS`]). `work` holds the run's state; `resume`
/// continues it.
pub fn continue_from(
    recipe: &Recipe,
    model: &Path,
    work: &Path,
    out: &Path,
    resume: bool,
    device: &candle_core::Device,
    progress: &mut stages::ProgressFn,
) -> Result<()> {
    recipe.validate().map_err(TrainError::Invalid)?;
    let io = |p: &Path, e: std::io::Error| TrainError::io(p, e);
    let folder = Folder::read(model)?;
    let sizes = |r: &Recipe| {
        (
            (r.size, r.frames, r.text_len, r.vae_dim, r.z_dim),
            (
                r.heads,
                r.head_dim,
                r.layers,
                r.ffn_dim,
                r.text_dim,
                r.text_layers,
            ),
        )
    };
    if sizes(&folder.recipe) != sizes(recipe) {
        return Err(TrainError::Invalid(format!(
            "{} has other sizes than this recipe (frame size, clip length, widths or layers): continue \
             from a folder of the same sizes, or train from scratch",
            model.display()
        )));
    }
    let paths = RunPaths {
        work: work.to_path_buf(),
    };
    std::fs::create_dir_all(work).map_err(|e| io(work, e))?;
    let recipe_json = serde_json::to_string_pretty(recipe).expect("recipe serialises");
    if paths.recipe().exists() {
        let old = std::fs::read_to_string(paths.recipe()).map_err(|e| io(&paths.recipe(), e))?;
        let same = serde_json::from_str::<Recipe>(&old)
            .is_ok_and(|o| o.without_step_counts() == recipe.without_step_counts());
        if !resume || !same {
            return Err(TrainError::Invalid(format!(
                "{} already holds a run{}: pass --resume with the same settings to continue it, or choose \
                 another --work folder",
                work.display(),
                if same { "" } else { " with a different recipe" }
            )));
        }
    }
    std::fs::write(paths.recipe(), &recipe_json).map_err(|e| io(&paths.recipe(), e))?;
    let mut log = log::LossLog::open(&paths.loss_log(), false)?;
    let started = Instant::now();

    let (mean, std) = (folder.mean.clone(), folder.std.clone());
    let latents = if paths.latents().exists() {
        read_latents(&paths.latents())?.0
    } else {
        let plain = folder.vae.iter().cloned().collect();
        let vae = sorrel_models::wan::vae::AutoencoderKLWan::new(
            &stages::vae_config(recipe)?,
            candle_nn::VarBuilder::from_tensors(plain, candle_core::DType::F32, device),
        )?;
        // The folder's statistics stay: its VAE, and so its latent space, does not change.
        let (lat, _, _) = stages::encode_latents(recipe, &vae, progress, device)?;
        write_latents(&paths.latents(), &lat, &mean, &std)?;
        lat
    };
    let normed = normalise(&latents, &mean, &std)?.to_device(device)?;

    let tok_json = tokenizer::tokenizer_json();
    let tok = toy_tokenizer(work)?;
    let row_of = |piece: &str| folder.pieces.iter().position(|p| p == piece);
    let embed_rows = tok_json["model"]["vocab"]
        .as_array()
        .expect("tokenizer_json has a vocabulary")
        .iter()
        .map(|e| {
            let piece = e[0].as_str().unwrap_or("").trim_start_matches('\u{2581}');
            row_of(piece).or_else(|| {
                STARTS_AS
                    .iter()
                    .find(|(w, _)| *w == piece)
                    .and_then(|(_, from)| row_of(from))
            })
        })
        .collect();
    let prefixed = |prefix: &str, v: &[(String, candle_core::Tensor)]| {
        v.iter()
            .map(|(n, t)| (format!("{prefix}{n}"), t.clone()))
            .collect::<Vec<_>>()
    };
    let start = StartFrom {
        weights: prefixed("text_encoder/", &folder.text_encoder)
            .into_iter()
            .chain(prefixed("transformer/", &folder.transformer))
            .collect(),
        embed_rows,
    };
    let ema = stages::train_denoiser(
        recipe,
        &normed,
        &tok,
        Some(&start),
        &paths.dit_ckpt(),
        &mut log,
        progress,
    )?;
    let dit_pts = log.points("transformer")?;
    plot_losses(&paths, &[], &dit_pts, &[])?;
    let split = |prefix: &str| -> Vec<(String, candle_core::Tensor)> {
        ema.iter()
            .filter_map(|(n, t)| n.strip_prefix(prefix).map(|n| (n.to_string(), t.clone())))
            .collect()
    };
    let out_recipe = Recipe {
        vae_steps: folder.recipe.vae_steps,
        vae_batch: folder.recipe.vae_batch,
        vae_lr: folder.recipe.vae_lr,
        decoder_steps: folder.recipe.decoder_steps,
        decoder_lr: folder.recipe.decoder_lr,
        ..recipe.clone()
    };
    export::write_model(
        out,
        &export::ModelParts {
            recipe: &out_recipe,
            latents_mean: &mean,
            latents_std: &std,
            vae: folder.vae,
            text_encoder: split("text_encoder/"),
            transformer: split("transformer/"),
            provenance: serde_json::json!({
                "trained_by": "sorrel train --from",
                "continued_from": folder.defaults["provenance"],
                "continued_from_recipe": folder.recipe,
                "final_transformer_loss": dit_pts.last().map_or(f64::NAN, |x| x.1),
                "seconds_this_session": started.elapsed().as_secs(),
            }),
        },
    )
}

/// A model folder written by `sorrel train`, read back.
struct Folder {
    defaults: serde_json::Value,
    recipe: Recipe,
    mean: Vec<f64>,
    std: Vec<f64>,
    vae: Vec<(String, candle_core::Tensor)>,
    text_encoder: Vec<(String, candle_core::Tensor)>,
    transformer: Vec<(String, candle_core::Tensor)>,
    /// The tokenizer's pieces, in id order.
    pieces: Vec<String>,
}

impl Folder {
    fn read(model: &Path) -> Result<Self> {
        let not_ours = |why: String| {
            TrainError::Invalid(format!(
                "{} is not a model folder written by `sorrel train` ({why})",
                model.display()
            ))
        };
        let read_json = |rel: &str| -> Result<serde_json::Value> {
            let p = model.join(rel);
            let text = std::fs::read_to_string(&p)
                .map_err(|e| not_ours(format!("{}: {e}", p.display())))?;
            serde_json::from_str(&text).map_err(|e| not_ours(format!("{}: {e}", p.display())))
        };
        let defaults = read_json(export::DEFAULTS_FILE)?;
        let recipe: Recipe = serde_json::from_value(defaults["recipe"].clone())
            .map_err(|e| not_ours(format!("its recipe: {e}")))?;
        let vae_cfg = read_json("vae/config.json")?;
        let stats = |key: &str| -> Result<Vec<f64>> {
            serde_json::from_value(vae_cfg[key].clone())
                .map_err(|e| not_ours(format!("vae {key}: {e}")))
        };
        let (mean, std) = (stats("latents_mean")?, stats("latents_std")?);
        let load = |rel: &str| -> Result<Vec<(String, candle_core::Tensor)>> {
            let p = model.join(rel);
            if !p.exists() {
                return Err(not_ours(format!("{} is missing", p.display())));
            }
            let mut v = candle_core::safetensors::load(&p, &candle_core::Device::Cpu)?
                .into_iter()
                .map(|(n, t)| Ok((n, t.to_dtype(candle_core::DType::F32)?)))
                .collect::<Result<Vec<_>>>()?;
            v.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(v)
        };
        let tok = read_json("tokenizer/tokenizer.json")?;
        let pieces = tok["model"]["vocab"]
            .as_array()
            .ok_or_else(|| not_ours("its tokenizer has no vocabulary".into()))?
            .iter()
            .map(|e| {
                e[0].as_str()
                    .map(|p| p.trim_start_matches('\u{2581}').to_string())
                    .ok_or_else(|| not_ours("a tokenizer piece is not a string".into()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            vae: load("vae/diffusion_pytorch_model.safetensors")?,
            text_encoder: load("text_encoder/model.safetensors")?,
            transformer: load("transformer/diffusion_pytorch_model.safetensors")?,
            defaults,
            recipe,
            mean,
            std,
            pieces,
        })
    }
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

/// Latents (N, z, F, h, w) normalised per channel by the statistics the folder's VAE config keeps.
fn normalise(
    latents: &candle_core::Tensor,
    mean: &[f64],
    std: &[f64],
) -> Result<candle_core::Tensor> {
    let as_t = |v: &[f64]| {
        candle_core::Tensor::new(
            v.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            latents.device(),
        )?
        .reshape((1, v.len(), 1, 1, 1))
    };
    Ok(latents
        .broadcast_sub(&as_t(mean)?)?
        .broadcast_div(&as_t(std)?)?)
}

/// The toy world's tokenizer, loaded as the pipeline loads a folder's (through a `tokenizer.json` file).
fn toy_tokenizer(work: &Path) -> Result<sorrel_models::wan::tokenizer::WanTokenizer> {
    let tok_dir = tempfile::tempdir().map_err(|e| TrainError::io(work, e))?;
    let tok_path = tok_dir.path().join("tokenizer.json");
    std::fs::write(&tok_path, tokenizer::tokenizer_json().to_string())
        .map_err(|e| TrainError::io(&tok_path, e))?;
    sorrel_models::wan::tokenizer::WanTokenizer::from_file(&tok_path)
        .map_err(|e| TrainError::Invalid(e.to_string()))
}
