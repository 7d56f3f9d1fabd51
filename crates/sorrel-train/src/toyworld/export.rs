//! Writing the trained model as a diffusers-layout Wan folder (f16 weights), which Sorrel's ordinary
//! loader reads; the folder is built beside the target and renamed into place, so a crash never leaves a
//! half-written model.

use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::Value;

use super::recipe::Recipe;
use crate::{Result, TrainError};

/// Name of the file in the model folder that holds Sorrel's defaults and limits for the model.
pub const DEFAULTS_FILE: &str = "sorrel_defaults.json";

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| TrainError::io(path, e))?;
    std::fs::write(path, text + "\n").map_err(|e| TrainError::io(path, e))
}

fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let half: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.to_dtype(DType::F16)?)))
        .collect::<Result<_>>()?;
    candle_core::safetensors::save(&half.into_iter().collect(), path)
        .map_err(|e| TrainError::io(path, e))
}

/// Everything the folder holds.
pub struct ModelParts<'a> {
    /// The recipe it was trained with.
    pub recipe: &'a Recipe,
    /// Latent statistics measured on the training clips.
    pub latents_mean: &'a [f64],
    /// See `latents_mean`.
    pub latents_std: &'a [f64],
    /// VAE weights (diffusers names).
    pub vae: Vec<(String, Tensor)>,
    /// Text encoder weights (transformers names).
    pub text_encoder: Vec<(String, Tensor)>,
    /// Transformer weights (diffusers names).
    pub transformer: Vec<(String, Tensor)>,
    /// Free-form facts for the defaults file (training time, steps).
    pub provenance: Value,
}

/// Writes the model folder at `dir`, replacing any folder there.
pub fn write_model(dir: &Path, parts: &ModelParts) -> Result<()> {
    let r = parts.recipe;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".sorrel-model-")
        .tempdir_in(parent)
        .map_err(|e| TrainError::io(parent, e))?;
    let t = tmp.path();
    for sub in [
        "scheduler",
        "tokenizer",
        "text_encoder",
        "transformer",
        "vae",
    ] {
        std::fs::create_dir(t.join(sub)).map_err(|e| TrainError::io(&t.join(sub), e))?;
    }
    write_json(&t.join("model_index.json"), &r.model_index())?;
    write_json(
        &t.join("scheduler/scheduler_config.json"),
        &r.scheduler_config(),
    )?;
    write_json(
        &t.join("tokenizer/tokenizer.json"),
        &super::tokenizer::tokenizer_json(),
    )?;
    write_json(
        &t.join("tokenizer/tokenizer_config.json"),
        &super::tokenizer::tokenizer_config_json(r.text_len),
    )?;
    write_json(
        &t.join("text_encoder/config.json"),
        &r.text_encoder_config(super::tokenizer::vocab_size()),
    )?;
    write_tensors(
        &t.join("text_encoder/model.safetensors"),
        &parts.text_encoder,
    )?;
    write_json(&t.join("transformer/config.json"), &r.transformer_config())?;
    write_tensors(
        &t.join("transformer/diffusion_pytorch_model.safetensors"),
        &parts.transformer,
    )?;
    write_json(
        &t.join("vae/config.json"),
        &r.vae_config(parts.latents_mean, parts.latents_std),
    )?;
    write_tensors(
        &t.join("vae/diffusion_pytorch_model.safetensors"),
        &parts.vae,
    )?;
    write_json(
        &t.join(DEFAULTS_FILE),
        &serde_json::json!({
            "name": "sorrel-toyworld",
            "width": r.size,
            "height": r.size,
            "frames": r.frames,
            "fps": r.fps,
            "steps": r.sample_steps,
            "guidance": r.guidance,
            "max_sequence_length": r.text_len,
            "max_width": 4 * r.size,
            "max_height": 4 * r.size,
            "max_frames": 4 * r.frames,
            // Trained with given frames at t = 0 (recipe.context_share), it continues clips window by window.
            "modes": if r.context_share > 0.0 {
                serde_json::json!(["text-to-video", "image-to-video", "extend", "connect"])
            } else {
                serde_json::json!(["text-to-video"])
            },
            "recipe": r,
            "provenance": parts.provenance,
        }),
    )?;
    let kept = tmp.keep();
    // The temporary folder and files are private (0700/0600); a model folder is for everyone to read.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m))
                .map_err(|e| TrainError::io(p, e))
        };
        mode(&kept, 0o755)?;
        for entry in walk(&kept)? {
            mode(&entry, if entry.is_dir() { 0o755 } else { 0o644 })?;
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    }
    std::fs::rename(&kept, dir).map_err(|e| TrainError::io(dir, e))
}

/// Every file and folder under `dir`.
fn walk(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))? {
        let p = e.map_err(|e| TrainError::io(dir, e))?.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        }
        out.push(p);
    }
    Ok(out)
}

/// Writes an RGB8 image as PNG, atomically and as an ordinary (0644) file like every other output.
pub fn write_png(path: &Path, rgb: &[u8], w: usize, h: usize) -> Result<()> {
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, w as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().map_err(|e| TrainError::io(path, e))?;
        wr.write_image_data(rgb)
            .map_err(|e| TrainError::io(path, e))?;
    }
    sorrel_media::write_file(path, &bytes).map_err(|e| TrainError::io(path, e))
}
