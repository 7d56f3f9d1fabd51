//! `WanTransformer3DModel` configuration, read from a diffusers `transformer/config.json` or from the
//! original Wan2.1 release's `config.json` (which uses other field names).

use std::path::Path;

use serde::Deserialize;
use sorrel_core::{read_config, Error, Result};

/// The transformer's hyper-parameters, with diffusers' field names so a downloaded folder loads as is.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct WanTransformerConfig {
    /// (t, h, w) patch size of the patch-embedding conv.
    #[serde(default = "default_patch")]
    pub patch_size: [usize; 3],
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Channels per head.
    pub attention_head_dim: usize,
    /// Latent channels in.
    #[serde(default = "default_channels")]
    pub in_channels: usize,
    /// Latent channels out.
    #[serde(default = "default_channels")]
    pub out_channels: usize,
    /// Width of the text encoder's embeddings.
    pub text_dim: usize,
    /// Width of the sinusoidal timestep embedding.
    #[serde(default = "default_freq_dim")]
    pub freq_dim: usize,
    /// Hidden width of each feed-forward block.
    pub ffn_dim: usize,
    /// Number of transformer blocks.
    pub num_layers: usize,
    /// Whether cross-attention has its own affine LayerNorm.
    #[serde(default = "default_true")]
    pub cross_attn_norm: bool,
    /// Query/key normalisation; only `rms_norm_across_heads` (what every Wan2.1 model uses) is supported.
    #[serde(default = "default_qk_norm")]
    pub qk_norm: Option<String>,
    /// Epsilon of every norm.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Width of the CLIP image features an image-to-video model takes (1280 for ViT-H/14); `None` for
    /// text-only models.
    #[serde(default)]
    pub image_dim: Option<usize>,
    /// Input width of the image cross-attention's key/value projections (`add_k_proj`, `add_v_proj`):
    /// the model width, since they read the embedded image tokens.
    #[serde(default)]
    pub added_kv_proj_dim: Option<usize>,
    /// Length of the learned position table added to the image tokens of first/last-frame models (two
    /// images of 257 CLIP tokens: 514); `None` for one-image models.
    #[serde(default)]
    pub pos_embed_seq_len: Option<usize>,
    /// VACE models (`WanVACETransformer3DModel`): the main blocks after which a control hint is added, one
    /// VACE block each; must include 0.
    #[serde(default)]
    pub vace_layers: Option<Vec<usize>>,
    /// VACE models: channels of the control input (encoded inactive and reactive video, 2 x 16, and the
    /// 8x8-unshuffled mask, 64).
    #[serde(default)]
    pub vace_in_channels: Option<usize>,
    /// Longest RoPE table per axis, in patches.
    #[serde(default = "default_rope_len")]
    pub rope_max_seq_len: usize,
    /// SkyReels-V2: the frame rate the video is sampled at (16 fps or not) is embedded and added to the
    /// timestep modulation (`fps_embedding`, `fps_projection`).
    #[serde(default)]
    pub inject_sample_info: bool,
    /// SkyReels-V2: latent frames per causal block; above 1, each block's tokens attend only to their own
    /// block and the blocks before it (diffusion forcing's asynchronous mode).
    #[serde(default = "default_block")]
    pub num_frame_per_block: usize,
    /// The diffusers class (`_class_name`): `SkyReelsV2Transformer3DModel` computes its timestep features
    /// in f64, Wan's in f32.
    #[serde(default, rename = "_class_name")]
    pub class_name: Option<String>,
}

/// diffusers' class of the SkyReels-V2 transformer.
pub const SKYREELS_V2_CLASS: &str = "SkyReelsV2Transformer3DModel";

fn default_block() -> usize {
    1
}

fn default_patch() -> [usize; 3] {
    [1, 2, 2]
}
fn default_channels() -> usize {
    16
}
fn default_freq_dim() -> usize {
    256
}
fn default_true() -> bool {
    true
}
fn default_qk_norm() -> Option<String> {
    Some("rms_norm_across_heads".into())
}
fn default_eps() -> f64 {
    1e-6
}
fn default_rope_len() -> usize {
    1024
}

/// The original release's field names (`WanModel` in Wan-AI's repository).
#[derive(Debug, Deserialize)]
struct OriginalConfig {
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default = "default_patch")]
    patch_size: [usize; 3],
    dim: usize,
    ffn_dim: usize,
    #[serde(default = "default_freq_dim")]
    freq_dim: usize,
    #[serde(default = "default_channels")]
    in_dim: usize,
    #[serde(default = "default_channels")]
    out_dim: usize,
    num_heads: usize,
    num_layers: usize,
    #[serde(default = "default_eps")]
    eps: f64,
    #[serde(default = "default_text_dim")]
    text_dim: usize,
}

fn default_text_dim() -> usize {
    4096
}

impl WanTransformerConfig {
    /// Reads a diffusers `transformer/config.json`.
    pub fn from_diffusers_file(path: &Path) -> Result<Self> {
        let cfg: Self = read_config(path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Reads the original Wan2.1 release's `config.json` and maps it to diffusers' fields.
    pub fn from_original_file(path: &Path) -> Result<Self> {
        let o: OriginalConfig = read_config(path)?;
        if let Some(t) = &o.model_type {
            if t != "t2v" {
                return Err(Error::model(format!(
                    "{}: model_type `{t}` in the original release layout is not supported: Sorrel reads original \
                     folders of text-to-video (t2v) models only; for image-to-video, first/last-frame and VACE use \
                     the diffusers folder (e.g. Wan-AI/Wan2.1-I2V-14B-480P-Diffusers)",
                    path.display()
                )));
            }
        }
        if o.num_heads == 0 || !o.dim.is_multiple_of(o.num_heads) {
            return Err(Error::model(format!(
                "{}: dim {} is not divisible by num_heads {}",
                path.display(),
                o.dim,
                o.num_heads
            )));
        }
        let cfg = Self {
            patch_size: o.patch_size,
            num_attention_heads: o.num_heads,
            attention_head_dim: o.dim / o.num_heads,
            in_channels: o.in_dim,
            out_channels: o.out_dim,
            text_dim: o.text_dim,
            freq_dim: o.freq_dim,
            ffn_dim: o.ffn_dim,
            num_layers: o.num_layers,
            cross_attn_norm: true,
            qk_norm: default_qk_norm(),
            eps: o.eps,
            image_dim: None,
            added_kv_proj_dim: None,
            pos_embed_seq_len: None,
            vace_layers: None,
            vace_in_channels: None,
            rope_max_seq_len: default_rope_len(),
            inject_sample_info: false,
            num_frame_per_block: 1,
            class_name: None,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Whether this is SkyReels-V2's transformer (diffusion forcing: one timestep per latent frame).
    pub fn is_skyreels(&self) -> bool {
        self.class_name.as_deref() == Some(SKYREELS_V2_CLASS)
    }

    /// Model width (heads x head dim).
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |m: String| Err(Error::model(format!("{}: {m}", path.display())));
        match (self.image_dim, self.added_kv_proj_dim) {
            (None, None) => {
                if self.pos_embed_seq_len.is_some() {
                    return bad("pos_embed_seq_len needs image_dim (it positions image tokens)".into());
                }
            }
            (Some(_), Some(kv)) if kv == self.inner_dim() => {}
            (Some(_), Some(kv)) => {
                return bad(format!(
                    "added_kv_proj_dim {kv} must equal the model width {} (heads x head dim): the image \
                     key/value projections read the embedded image tokens",
                    self.inner_dim()
                ))
            }
            (img, kv) => {
                return bad(format!(
                    "image_dim {img:?} and added_kv_proj_dim {kv:?} must be given together (an \
                     image-to-video model has both)"
                ))
            }
        }
        if self.num_frame_per_block == 0 {
            return bad("num_frame_per_block must be at least 1".into());
        }
        if let Some(layers) = &self.vace_layers {
            if !layers.contains(&0) {
                return bad(format!("vace_layers {layers:?} must include layer 0"));
            }
            if let Some(&l) = layers.iter().find(|&&l| l >= self.num_layers) {
                return bad(format!(
                    "vace_layers has layer {l}, but the model has {} layers",
                    self.num_layers
                ));
            }
            if !layers.windows(2).all(|w| w[0] < w[1]) {
                return bad(format!(
                    "vace_layers {layers:?} must be increasing without repeats"
                ));
            }
            if self.vace_in_channels == Some(0) {
                return bad("vace_in_channels must be positive".into());
            }
        }
        if let Some(n) = self.pos_embed_seq_len {
            if n == 0 || n % 2 == 1 {
                return bad(format!(
                    "pos_embed_seq_len {n} must be a positive even number (two images' tokens)"
                ));
            }
        }
        match self.qk_norm.as_deref() {
            Some("rms_norm_across_heads") => {}
            other => {
                return bad(format!(
                    "qk_norm {other:?} is not supported (only \"rms_norm_across_heads\")"
                ))
            }
        }
        if !self.attention_head_dim.is_multiple_of(2) || self.attention_head_dim < 6 {
            return bad(format!(
                "attention_head_dim {} must be even and at least 6 for 3D RoPE",
                self.attention_head_dim
            ));
        }
        if self.patch_size.contains(&0) || self.num_attention_heads == 0 || self.num_layers == 0 {
            return bad("patch_size, num_attention_heads and num_layers must be positive".into());
        }
        Ok(())
    }
}

/// Checks that a latent of (frames `f`, height `h`, width `w`) can be cut into `patch` (t, h, w) patches and
/// that its patch grid fits a RoPE table of `rope_max_seq_len` positions per axis. A free function so a
/// server that only has a model's description (no weights) checks requests exactly as the loaded model does.
pub fn check_latent_grid(
    patch: [usize; 3],
    rope_max_seq_len: usize,
    f: usize,
    h: usize,
    w: usize,
) -> std::result::Result<(), String> {
    let [pt, ph, pw] = patch;
    if !f.is_multiple_of(pt) || !h.is_multiple_of(ph) || !w.is_multiple_of(pw) {
        return Err(format!(
            "latent size {f}x{h}x{w} (frames x height x width) is not divisible by the patch size {pt}x{ph}x{pw}"
        ));
    }
    let m = rope_max_seq_len;
    if f / pt > m || h / ph > m || w / pw > m {
        return Err(format!(
            "latent grid {}x{}x{} exceeds the model's rope_max_seq_len {m}: use fewer frames or a smaller size",
            f / pt,
            h / ph,
            w / pw
        ));
    }
    Ok(())
}
