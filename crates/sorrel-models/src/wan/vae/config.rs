//! The VAE's configuration (diffusers' `vae/config.json`) and the original release's weight names.

use std::path::Path;

use serde::Deserialize;

/// The VAE's hyper-parameters, with diffusers' `vae/config.json` field names (including its `temperal` typo).
/// Defaults are diffusers' defaults, i.e. the released Wan2.1 VAE.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct VaeConfig {
    /// Channels of the first encoder level (96 for Wan2.1).
    pub base_dim: usize,
    /// Channels of the decoder's last level; `base_dim` when absent.
    pub decoder_base_dim: Option<usize>,
    /// Latent channels.
    pub z_dim: usize,
    /// Channel multiplier per level.
    pub dim_mult: Vec<usize>,
    /// Residual blocks per encoder level (the decoder has one more).
    pub num_res_blocks: usize,
    /// Levels with attention after each residual block; only empty (Wan2.1) is supported.
    pub attn_scales: Vec<f64>,
    /// Which encoder downsamples also halve time; the decoder upsamples in reverse order.
    pub temperal_downsample: Vec<bool>,
    /// Training-only; ignored at inference.
    pub dropout: f64,
    /// Per-channel latent mean used by the pipeline to (de)normalise latents.
    pub latents_mean: Vec<f64>,
    /// Per-channel latent standard deviation used by the pipeline to (de)normalise latents.
    pub latents_std: Vec<f64>,
    /// Wan2.2's residual down/up blocks (averaging and copying shortcuts around each level).
    pub is_residual: bool,
    /// Video channels in.
    pub in_channels: usize,
    /// Video channels out.
    pub out_channels: usize,
    /// Wan2.2's pixel patchify (2: every 2x2 pixel patch becomes 12 channels before the encoder).
    pub patch_size: Option<usize>,
    /// Informational (diffusers uses it only for tiling); the real factor follows from `temperal_downsample`.
    pub scale_factor_temporal: Option<usize>,
    /// Informational (diffusers uses it only for tiling); the real factor follows from `dim_mult`.
    pub scale_factor_spatial: Option<usize>,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            base_dim: 96,
            decoder_base_dim: None,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            attn_scales: vec![],
            temperal_downsample: vec![false, true, true],
            dropout: 0.0,
            latents_mean: vec![
                -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134,
                -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
            ],
            latents_std: vec![
                2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526,
                2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
            ],
            is_residual: false,
            in_channels: 3,
            out_channels: 3,
            patch_size: None,
            scale_factor_temporal: Some(4),
            scale_factor_spatial: Some(8),
        }
    }
}

impl VaeConfig {
    /// Reads and validates a diffusers `vae/config.json`.
    pub fn from_file(path: &Path) -> sorrel_core::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| sorrel_core::Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| {
            sorrel_core::Error::model(format!("{} is not a valid VAE config: {e}", path.display()))
        })?;
        cfg.validate()
            .map_err(|e| sorrel_core::Error::model(format!("{}: {e}", path.display())))?;
        Ok(cfg)
    }

    /// Rejects options this implementation does not reproduce, rather than giving wrong output.
    pub fn validate(&self) -> sorrel_core::Result<()> {
        let bad = |m: String| Err(sorrel_core::Error::model(m));
        if !self.attn_scales.is_empty() {
            return bad(format!(
                "attn_scales {:?} is not supported: the Wan2.1 VAE has attention only in its middle blocks (attn_scales = [])",
                self.attn_scales
            ));
        }
        let p = self.patch_size.unwrap_or(1);
        if p == 0 {
            return bad("patch_size must be positive".into());
        }
        // Sorrel feeds RGB video: after the patchify it has 3 p^2 channels.
        if self.in_channels != 3 * p * p || self.out_channels != 3 * p * p {
            return bad(format!(
                "in_channels {} and out_channels {} must both be 3 x patch_size^2 = {} (RGB video)",
                self.in_channels,
                self.out_channels,
                3 * p * p
            ));
        }
        if self.dim_mult.is_empty() || self.dim_mult.contains(&0) {
            return bad(format!(
                "dim_mult {:?} must be non-empty and positive",
                self.dim_mult
            ));
        }
        if self.temperal_downsample.len() + 1 < self.dim_mult.len() {
            return bad(format!(
                "temperal_downsample {:?} needs at least {} entries for dim_mult {:?}",
                self.temperal_downsample,
                self.dim_mult.len() - 1,
                self.dim_mult
            ));
        }
        if self.base_dim == 0 || self.z_dim == 0 || self.decoder_base_dim == Some(0) {
            return bad("base_dim, decoder_base_dim and z_dim must be positive".into());
        }
        if self.is_residual {
            self.check_residual_shortcuts()?;
        }
        if self.latents_mean.len() != self.z_dim || self.latents_std.len() != self.z_dim {
            return bad(format!(
                "latents_mean and latents_std need z_dim = {} entries each (found {} and {})",
                self.z_dim,
                self.latents_mean.len(),
                self.latents_std.len()
            ));
        }
        Ok(())
    }

    /// Wan2.2's shortcuts fold `t x 2 x 2` neighbourhoods into channels and average (or repeat) them to the
    /// next level's width, which works only when the counts divide (diffusers asserts the same).
    fn check_residual_shortcuts(&self) -> sorrel_core::Result<()> {
        let n = self.dim_mult.len();
        let enc: Vec<usize> = std::iter::once(1)
            .chain(self.dim_mult.iter().copied())
            .map(|u| u * self.base_dim)
            .collect();
        let dec_base = self.decoder_base_dim.unwrap_or(self.base_dim);
        let dec: Vec<usize> = std::iter::once(self.dim_mult[n - 1])
            .chain(self.dim_mult.iter().rev().copied())
            .map(|u| u * dec_base)
            .collect();
        let td = &self.temperal_downsample;
        for i in 0..n {
            // The last level neither downsamples nor upsamples: factor 1 (the decoder's has no shortcut).
            let last = i == n - 1;
            let down = if last { 1 } else { 4 << usize::from(td[i]) };
            let up = if last {
                0
            } else {
                4 << usize::from(td[td.len() - 1 - i])
            };
            let (a, b) = (enc[i], enc[i + 1]);
            let (c, d) = (dec[i], dec[i + 1]);
            if (a * down) % b != 0 || (d * up) % c != 0 {
                return Err(sorrel_core::Error::model(format!(
                    "is_residual: level {i}'s shortcut cannot map {a} channels to {b} (encoder) or {c} to {d} \
                     (decoder): base_dim {}, decoder_base_dim {dec_base} and dim_mult {:?} must give \
                     divisible channel counts",
                    self.base_dim, self.dim_mult
                )));
            }
        }
        Ok(())
    }

    /// Frames per latent frame after the first (4 for Wan2.1).
    pub fn temporal_compression(&self) -> usize {
        let n = self.dim_mult.len() - 1;
        1 << self.temperal_downsample[..n].iter().filter(|&&t| t).count()
    }

    /// Pixels per latent pixel along each spatial axis (8 for Wan2.1, 16 for Wan2.2 with its patchify).
    pub fn spatial_compression(&self) -> usize {
        (1 << (self.dim_mult.len() - 1)) * self.patch_size.unwrap_or(1)
    }
}

/// Maps a diffusers VAE key to its name in the original Wan2.1 release (`Wan2.1_VAE.pth`).
///
/// The model asks for diffusers names; a renaming `TensorSource` looks them up under the original name.
/// Mirrors `vae_key_to_original` in `tools/reference/make_fixtures.py`. Unknown names are returned unchanged
/// so the loader's missing-tensor error names them.
pub fn vae_key_from_original(name: &str, cfg: &VaeConfig) -> String {
    fn resnet(r: &str) -> Option<&'static str> {
        Some(match r {
            "norm1.gamma" => "residual.0.gamma",
            "conv1.weight" => "residual.2.weight",
            "conv1.bias" => "residual.2.bias",
            "norm2.gamma" => "residual.3.gamma",
            "conv2.weight" => "residual.6.weight",
            "conv2.bias" => "residual.6.bias",
            "conv_shortcut.weight" => "shortcut.weight",
            "conv_shortcut.bias" => "shortcut.bias",
            _ => return None,
        })
    }
    let unchanged = || name.to_string();
    let Some((head, rest)) = name.split_once('.') else {
        return unchanged();
    };
    match head {
        "quant_conv" => return format!("conv1.{rest}"),
        "post_quant_conv" => return format!("conv2.{rest}"),
        "encoder" | "decoder" => {}
        _ => return unchanged(),
    }
    let p = head;
    if let Some(r) = rest.strip_prefix("conv_in.") {
        return format!("{p}.conv1.{r}");
    }
    if let Some(r) = rest.strip_prefix("norm_out.") {
        return format!("{p}.head.0.{r}");
    }
    if let Some(r) = rest.strip_prefix("conv_out.") {
        return format!("{p}.head.2.{r}");
    }
    if let Some(r) = rest.strip_prefix("mid_block.") {
        if let Some(r) = r.strip_prefix("resnets.0.") {
            return resnet(r).map_or_else(unchanged, |o| format!("{p}.middle.0.{o}"));
        }
        if let Some(r) = r.strip_prefix("resnets.1.") {
            return resnet(r).map_or_else(unchanged, |o| format!("{p}.middle.2.{o}"));
        }
        if let Some(r) = r.strip_prefix("attentions.0.") {
            return format!("{p}.middle.1.{r}");
        }
        return unchanged();
    }
    if let Some(r) = rest.strip_prefix("down_blocks.") {
        let Some((idx, r)) = r.split_once('.') else {
            return unchanged();
        };
        return format!("{p}.downsamples.{idx}.{}", resnet(r).unwrap_or(r));
    }
    if let Some(r) = rest.strip_prefix("up_blocks.") {
        let parts: Vec<&str> = r.splitn(4, '.').collect();
        let [bi, kind, j, r] = parts[..] else {
            return unchanged();
        };
        let (Ok(bi), Ok(j)) = (bi.parse::<usize>(), j.parse::<usize>()) else {
            return unchanged();
        };
        let per = cfg.num_res_blocks + 1;
        let n = cfg.dim_mult.len();
        // every up block but the last also holds an upsampler in the original flat `upsamples` list.
        let start: usize = (0..bi).map(|b| per + usize::from(b != n - 1)).sum();
        if kind == "resnets" {
            return resnet(r)
                .map_or_else(unchanged, |o| format!("{p}.upsamples.{}.{o}", start + j));
        }
        return format!("{p}.upsamples.{}.{r}", start + per);
    }
    unchanged()
}
