//! `CLIPVisionConfig` (`image_encoder/config.json`) and `CLIPImageProcessor`'s
//! `image_processor/preprocessor_config.json`, with transformers' field names.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use sorrel_core::{read_config, Error, Result};

/// The vision tower's hyper-parameters.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ClipVisionConfig {
    /// Model width.
    pub hidden_size: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Input channels (3).
    #[serde(default = "three")]
    pub num_channels: usize,
    /// Side of the square input picture.
    pub image_size: usize,
    /// Side of a square patch.
    pub patch_size: usize,
    /// `gelu` (exact, as ViT-H/14 uses) or `quick_gelu` (OpenAI's CLIP).
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
}

fn three() -> usize {
    3
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn eps() -> f64 {
    1e-5
}

impl ClipVisionConfig {
    /// Reads `image_encoder/config.json` (a `CLIPVisionConfig`, or a whole `CLIPConfig` with a
    /// `vision_config` inside).
    pub fn from_file(path: &Path) -> Result<Self> {
        let v: serde_json::Value = read_config(path)?;
        let v = v.get("vision_config").cloned().unwrap_or(v);
        let cfg: Self = serde_json::from_value(v)
            .map_err(|e| Error::model(format!("{}: {e}", path.display())))?;
        let bad = |m: String| Err(Error::model(format!("{}: {m}", path.display())));
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return bad(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            ));
        }
        if cfg.patch_size == 0 || !cfg.image_size.is_multiple_of(cfg.patch_size) {
            return bad(format!(
                "image_size {} is not a multiple of patch_size {}",
                cfg.image_size, cfg.patch_size
            ));
        }
        if cfg.num_hidden_layers < 2 {
            return bad(
                "image-to-video models read the penultimate layer, so at least 2 layers are needed"
                    .into(),
            );
        }
        if !["gelu", "quick_gelu"].contains(&cfg.hidden_act.as_str()) {
            return bad(format!(
                "hidden_act `{}` is not supported (gelu or quick_gelu)",
                cfg.hidden_act
            ));
        }
        Ok(cfg)
    }

    /// Tokens per picture: one per patch plus the class token (257 for ViT-H/14 at 224 px).
    pub fn tokens(&self) -> usize {
        (self.image_size / self.patch_size).pow(2) + 1
    }
}

/// What `CLIPImageProcessor` does to a picture before the vision tower.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ClipImageProcessorConfig {
    /// Resize so the shorter side is `size["shortest_edge"]`.
    #[serde(default = "yes")]
    pub do_resize: bool,
    /// `{"shortest_edge": N}`.
    #[serde(default)]
    pub size: HashMap<String, usize>,
    /// Crop the centre to `crop_size`.
    #[serde(default = "yes")]
    pub do_center_crop: bool,
    /// `{"height": H, "width": W}`.
    #[serde(default)]
    pub crop_size: HashMap<String, usize>,
    /// Multiply by `rescale_factor` (1/255).
    #[serde(default = "yes")]
    pub do_rescale: bool,
    /// 1/255.
    #[serde(default = "inv255")]
    pub rescale_factor: f64,
    /// Subtract `image_mean`, divide by `image_std`.
    #[serde(default = "yes")]
    pub do_normalize: bool,
    /// Per-channel mean (OpenAI CLIP's by default).
    #[serde(default = "clip_mean")]
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation.
    #[serde(default = "clip_std")]
    pub image_std: [f32; 3],
}

fn yes() -> bool {
    true
}
fn inv255() -> f64 {
    1.0 / 255.0
}
fn clip_mean() -> [f32; 3] {
    [0.481_454_66, 0.457_827_5, 0.408_210_73]
}
fn clip_std() -> [f32; 3] {
    [0.268_629_54, 0.261_302_6, 0.275_777_1]
}

impl ClipImageProcessorConfig {
    /// Reads `image_processor/preprocessor_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        read_config(path)
    }

    /// The shorter side after resizing (`None`: no resize).
    pub fn shortest_edge(&self) -> Option<usize> {
        self.do_resize
            .then(|| self.size.get("shortest_edge").copied())
            .flatten()
    }

    /// (height, width) of the centre crop (`None`: no crop).
    pub fn crop(&self) -> Option<(usize, usize)> {
        if !self.do_center_crop {
            return None;
        }
        Some((
            *self.crop_size.get("height")?,
            *self.crop_size.get("width")?,
        ))
    }
}
