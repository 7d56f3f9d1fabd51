//! `AutoencoderKLWan` (diffusers 0.42.1): Wan2.1's causal 3D VAE.
//!
//! Video is processed in temporal chunks through a causal feature cache, exactly as diffusers does: every
//! cached causal conv keeps the last [`CACHE_T`] frames of its input from the previous chunk and uses them in
//! place of its front zero padding. Encode feeds frames `[0]`, `[1..5]`, `[5..9]`, ...; decode feeds one latent
//! frame at a time, so memory does not grow with video length.

use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Conv2dConfig, VarBuilder};
use serde::Deserialize;
use sorrel_core::conv2d::Conv2d;
use sorrel_core::conv3d::CausalConv3d;

/// Frames of a causal conv's input kept for the next chunk (diffusers' `CACHE_T`).
pub const CACHE_T: usize = 2;

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
    /// Wan2.2's residual down/up blocks; not supported.
    pub is_residual: bool,
    /// Video channels in.
    pub in_channels: usize,
    /// Video channels out.
    pub out_channels: usize,
    /// Wan2.2's pixel patchify; only absent or 1 is supported.
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
        if self.is_residual {
            return bad(
                "is_residual = true (the Wan2.2 VAE) is not supported; only the Wan2.1 VAE is"
                    .into(),
            );
        }
        if !self.attn_scales.is_empty() {
            return bad(format!(
                "attn_scales {:?} is not supported: the Wan2.1 VAE has attention only in its middle blocks (attn_scales = [])",
                self.attn_scales
            ));
        }
        if matches!(self.patch_size, Some(p) if p != 1) {
            return bad(format!(
                "patch_size {:?} (the Wan2.2 VAE's patchify) is not supported",
                self.patch_size
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

    /// Frames per latent frame after the first (4 for Wan2.1).
    pub fn temporal_compression(&self) -> usize {
        let n = self.dim_mult.len() - 1;
        1 << self.temperal_downsample[..n].iter().filter(|&&t| t).count()
    }

    /// Pixels per latent pixel along each spatial axis (8 for Wan2.1).
    pub fn spatial_compression(&self) -> usize {
        1 << (self.dim_mult.len() - 1)
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

/// One causal-cache slot per cached conv, consumed in the same order every chunk.
enum Slot {
    /// First chunk: nothing cached yet.
    Empty,
    /// diffusers' "Rep": an upsample3d time_conv that skipped its first chunk; acts as zero frames.
    Rep,
    /// The last frames of the previous chunk's input.
    Frames(Tensor),
}

/// diffusers' `feat_cache` + `feat_idx`: slots are created on the first chunk and reused in order after.
struct FeatCache {
    slots: Vec<Slot>,
    idx: usize,
}

impl FeatCache {
    fn new() -> Self {
        Self {
            slots: Vec::new(),
            idx: 0,
        }
    }

    /// Starts a new chunk (diffusers resets `feat_idx` to `[0]`).
    fn rewind(&mut self) {
        self.idx = 0;
    }

    fn next(&mut self) -> &mut Slot {
        if self.idx == self.slots.len() {
            self.slots.push(Slot::Empty);
        }
        self.idx += 1;
        &mut self.slots[self.idx - 1]
    }
}

/// The last `CACHE_T` frames of x, topped up in front with the previous cache's last frame when x is shorter
/// (diffusers' "cache last frame of last two chunk"). Copied so the cache does not pin the whole chunk.
fn next_cache(x: &Tensor, prev: Option<&Tensor>) -> Result<Tensor> {
    let t = x.dim(2)?;
    let keep = t.min(CACHE_T);
    let mut c = x.narrow(2, t - keep, keep)?;
    if keep < CACHE_T {
        if let Some(p) = prev {
            let pt = p.dim(2)?;
            c = Tensor::cat(&[&p.narrow(2, pt - 1, 1)?, &c], 2)?;
        }
    }
    c.copy()
}

/// A causal conv run through its cache slot: the standard pattern of conv_in, resnets and conv_out.
fn cached_conv(conv: &CausalConv3d, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
    let slot = cache.next();
    let prev = match slot {
        Slot::Frames(t) => Some(t.clone()),
        _ => None,
    };
    let new = next_cache(x, prev.as_ref())?;
    let y = conv.forward(x, prev.as_ref())?;
    *slot = Slot::Frames(new);
    Ok(y)
}

/// Wan's RMS norm over channels (dim 1): `F.normalize(x, dim=1) * sqrt(C) * gamma`.
#[derive(Debug, Clone)]
struct RmsNorm {
    gamma: Tensor,
    scale: f64,
}

impl RmsNorm {
    /// images: gamma is (C, 1, 1) for (N, C, H, W) input, else (C, 1, 1, 1) for (B, C, T, H, W).
    fn new(dim: usize, images: bool, vb: VarBuilder) -> Result<Self> {
        let gamma = if images {
            vb.get((dim, 1, 1), "gamma")?
        } else {
            vb.get((dim, 1, 1, 1), "gamma")?
        };
        Ok(Self {
            gamma,
            scale: (dim as f64).sqrt(),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dt = x.dtype();
        // diffusers normalises half-precision input in fp32.
        let xf = if matches!(dt, DType::F16 | DType::BF16) {
            x.to_dtype(DType::F32)?
        } else {
            x.clone()
        };
        // F.normalize's eps: the norm is clamped to at least 1e-12.
        let norm = xf.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
        let normed = xf.broadcast_div(&norm)?.to_dtype(dt)?;
        (normed * self.scale)?.broadcast_mul(&self.gamma)
    }
}

/// diffusers' `WanResidualBlock`: (norm, SiLU, causal conv) twice plus a shortcut.
#[derive(Debug, Clone)]
struct ResidualBlock {
    norm1: RmsNorm,
    conv1: CausalConv3d,
    norm2: RmsNorm,
    conv2: CausalConv3d,
    shortcut: Option<CausalConv3d>,
}

impl ResidualBlock {
    fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let shortcut = if in_dim != out_dim {
            Some(CausalConv3d::new(
                in_dim,
                out_dim,
                (1, 1, 1),
                (0, 0, 0),
                1,
                vb.pp("conv_shortcut"),
            )?)
        } else {
            None
        };
        Ok(Self {
            norm1: RmsNorm::new(in_dim, false, vb.pp("norm1"))?,
            conv1: CausalConv3d::new(in_dim, out_dim, (3, 3, 3), (1, 1, 1), 1, vb.pp("conv1"))?,
            norm2: RmsNorm::new(out_dim, false, vb.pp("norm2"))?,
            conv2: CausalConv3d::new(out_dim, out_dim, (3, 3, 3), (1, 1, 1), 1, vb.pp("conv2"))?,
            shortcut,
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let h = match &self.shortcut {
            Some(s) => s.forward(x, None)?,
            None => x.clone(),
        };
        let y = self.norm1.forward(x)?.silu()?;
        let y = cached_conv(&self.conv1, &y, cache)?;
        let y = self.norm2.forward(&y)?.silu()?;
        let y = cached_conv(&self.conv2, &y, cache)?;
        y + h
    }
}

/// diffusers' `WanAttentionBlock`: single-head self-attention within each frame.
#[derive(Debug, Clone)]
struct AttentionBlock {
    norm: RmsNorm,
    to_qkv: Conv2d,
    proj: Conv2d,
    dim: usize,
}

impl AttentionBlock {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let cfg = Conv2dConfig::default();
        Ok(Self {
            norm: RmsNorm::new(dim, true, vb.pp("norm"))?,
            to_qkv: candle_nn::conv2d(dim, dim * 3, 1, cfg, vb.pp("to_qkv"))?.into(),
            proj: candle_nn::conv2d(dim, dim, 1, cfg, vb.pp("proj"))?.into(),
            dim,
        })
    }

    /// x: (B, C, T, H, W)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, t, h, w) = x.dims5()?;
        let frames = x.permute((0, 2, 1, 3, 4))?.reshape((b * t, c, h, w))?;
        let qkv = self.to_qkv.forward(&self.norm.forward(&frames)?)?;
        // (BT, 3C, HW) -> (BT, HW, 3C); q, k, v are consecutive channel blocks.
        let qkv = qkv
            .reshape((b * t, 3 * c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = qkv.narrow(D::Minus1, 0, c)?.contiguous()?;
        let k = qkv.narrow(D::Minus1, c, c)?.contiguous()?;
        let v = qkv.narrow(D::Minus1, 2 * c, c)?.contiguous()?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (self.dim as f64).sqrt()))?;
        let attn = sorrel_core::ops::softmax_last_dim(&scores)?;
        let y = attn.matmul(&v)?; // (BT, HW, C)
        let y = y.transpose(1, 2)?.reshape((b * t, c, h, w))?;
        let y = self.proj.forward(&y)?;
        let y = y.reshape((b, t, c, h, w))?.permute((0, 2, 1, 3, 4))?;
        y + x
    }
}

/// diffusers' `WanMidBlock` with one attention layer: resnet, attention, resnet.
#[derive(Debug, Clone)]
struct MidBlock {
    res0: ResidualBlock,
    attn: AttentionBlock,
    res1: ResidualBlock,
}

impl MidBlock {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            res0: ResidualBlock::new(dim, dim, vb.pp("resnets.0"))?,
            attn: AttentionBlock::new(dim, vb.pp("attentions.0"))?,
            res1: ResidualBlock::new(dim, dim, vb.pp("resnets.1"))?,
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let x = self.res0.forward(x, cache)?;
        let x = self.attn.forward(&x)?;
        self.res1.forward(&x, cache)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ResampleMode {
    Upsample2d,
    Upsample3d,
    Downsample2d,
    Downsample3d,
}

/// diffusers' `WanResample`: per-frame 2x spatial resampling, plus a causal temporal conv in the 3d modes.
#[derive(Debug, Clone)]
struct Resample {
    mode: ResampleMode,
    /// `resample.1`: 3x3 conv after nearest upsampling (padding 1) or after right/bottom zero padding (stride 2).
    conv: Conv2d,
    time_conv: Option<CausalConv3d>,
}

impl Resample {
    fn new(dim: usize, mode: ResampleMode, vb: VarBuilder) -> Result<Self> {
        let (conv, time_conv) = match mode {
            ResampleMode::Upsample2d | ResampleMode::Upsample3d => {
                let cfg = Conv2dConfig {
                    padding: 1,
                    ..Default::default()
                };
                let conv = candle_nn::conv2d(dim, dim / 2, 3, cfg, vb.pp("resample.1"))?.into();
                let tc = if mode == ResampleMode::Upsample3d {
                    Some(CausalConv3d::new(
                        dim,
                        dim * 2,
                        (3, 1, 1),
                        (1, 0, 0),
                        1,
                        vb.pp("time_conv"),
                    )?)
                } else {
                    None
                };
                (conv, tc)
            }
            ResampleMode::Downsample2d | ResampleMode::Downsample3d => {
                let cfg = Conv2dConfig {
                    stride: 2,
                    ..Default::default()
                };
                let conv = candle_nn::conv2d(dim, dim, 3, cfg, vb.pp("resample.1"))?.into();
                let tc = if mode == ResampleMode::Downsample3d {
                    Some(CausalConv3d::new(
                        dim,
                        dim,
                        (3, 1, 1),
                        (0, 0, 0),
                        2,
                        vb.pp("time_conv"),
                    )?)
                } else {
                    None
                };
                (conv, tc)
            }
        };
        Ok(Self {
            mode,
            conv,
            time_conv,
        })
    }

    /// x: (B, C, T, H, W)
    fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let mut x = x.clone();
        if let (ResampleMode::Upsample3d, Some(tc)) = (self.mode, &self.time_conv) {
            let slot = cache.next();
            match slot {
                // The first chunk (one latent frame) is not doubled in time: it decodes to one frame.
                Slot::Empty => *slot = Slot::Rep,
                Slot::Rep | Slot::Frames(_) => {
                    let (b, c, t, h, w) = x.dims5()?;
                    let prev = match slot {
                        Slot::Frames(p) => Some(p.clone()),
                        _ => None,
                    };
                    let mut new = next_cache(&x, prev.as_ref())?;
                    if matches!(slot, Slot::Rep) && new.dim(2)? < CACHE_T {
                        new = Tensor::cat(&[&new.zeros_like()?, &new], 2)?;
                    }
                    // After "Rep" diffusers calls time_conv without a cache: plain zero padding.
                    let y = tc.forward(&x, prev.as_ref())?;
                    *slot = Slot::Frames(new);
                    // (B, 2C, T) -> (B, C, T, 2): output channel block i is frame 2t + i.
                    x = y
                        .reshape((b, 2, c, t, h, w))?
                        .permute((0, 2, 3, 1, 4, 5))?
                        .reshape((b, c, 2 * t, h, w))?;
                }
            }
        }
        let (b, c, t, h, w) = x.dims5()?;
        let frames = x.permute((0, 2, 1, 3, 4))?.reshape((b * t, c, h, w))?;
        let frames = match self.mode {
            // nearest-exact at exactly 2x picks source index floor(i / 2), same as nearest.
            ResampleMode::Upsample2d | ResampleMode::Upsample3d => {
                frames.upsample_nearest2d(2 * h, 2 * w)?
            }
            // ZeroPad2d((0, 1, 0, 1)): one zero column right, one zero row below.
            ResampleMode::Downsample2d | ResampleMode::Downsample3d => {
                frames.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?
            }
        };
        let frames = self.conv.forward(&frames)?;
        let (_, co, ho, wo) = frames.dims4()?;
        let mut x = frames
            .reshape((b, t, co, ho, wo))?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()?;

        if let (ResampleMode::Downsample3d, Some(tc)) = (self.mode, &self.time_conv) {
            let slot = cache.next();
            let t = x.dim(2)?;
            let last = x.narrow(2, t - 1, 1)?.copy()?;
            match slot {
                // First chunk (one frame): passed through without temporal downsampling.
                Slot::Empty | Slot::Rep => {}
                Slot::Frames(prev) => {
                    let pt = prev.dim(2)?;
                    let input = Tensor::cat(&[&prev.narrow(2, pt - 1, 1)?, &x], 2)?;
                    x = tc.forward(&input, None)?;
                }
            }
            // diffusers caches the whole first chunk but only ever reads its last frame.
            *slot = Slot::Frames(last);
        }
        Ok(x)
    }
}

/// One entry of the encoder's flat `down_blocks` list.
#[derive(Debug, Clone)]
enum DownLayer {
    Res(ResidualBlock),
    Resample(Resample),
}

/// diffusers' `WanEncoder3d` (Wan2.1 variant).
#[derive(Debug, Clone)]
struct Encoder {
    conv_in: CausalConv3d,
    down: Vec<DownLayer>,
    mid: MidBlock,
    norm_out: RmsNorm,
    conv_out: CausalConv3d,
}

impl Encoder {
    fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.base_dim;
        let dims: Vec<usize> = std::iter::once(1)
            .chain(cfg.dim_mult.iter().copied())
            .map(|u| dim * u)
            .collect();
        let n = cfg.dim_mult.len();
        let conv_in = CausalConv3d::new(
            cfg.in_channels,
            dims[0],
            (3, 3, 3),
            (1, 1, 1),
            1,
            vb.pp("conv_in"),
        )?;
        let vbd = vb.pp("down_blocks");
        let mut down = Vec::new();
        for i in 0..n {
            let (mut in_dim, out_dim) = (dims[i], dims[i + 1]);
            for _ in 0..cfg.num_res_blocks {
                down.push(DownLayer::Res(ResidualBlock::new(
                    in_dim,
                    out_dim,
                    vbd.pp(down.len()),
                )?));
                in_dim = out_dim;
            }
            if i != n - 1 {
                let mode = if cfg.temperal_downsample[i] {
                    ResampleMode::Downsample3d
                } else {
                    ResampleMode::Downsample2d
                };
                down.push(DownLayer::Resample(Resample::new(
                    out_dim,
                    mode,
                    vbd.pp(down.len()),
                )?));
            }
        }
        let out_dim = dims[n];
        Ok(Self {
            conv_in,
            down,
            mid: MidBlock::new(out_dim, vb.pp("mid_block"))?,
            norm_out: RmsNorm::new(out_dim, false, vb.pp("norm_out"))?,
            conv_out: CausalConv3d::new(
                out_dim,
                cfg.z_dim * 2,
                (3, 3, 3),
                (1, 1, 1),
                1,
                vb.pp("conv_out"),
            )?,
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let mut x = cached_conv(&self.conv_in, x, cache)?;
        for layer in &self.down {
            x = match layer {
                DownLayer::Res(r) => r.forward(&x, cache)?,
                DownLayer::Resample(r) => r.forward(&x, cache)?,
            };
        }
        let x = self.mid.forward(&x, cache)?;
        let x = self.norm_out.forward(&x)?.silu()?;
        cached_conv(&self.conv_out, &x, cache)
    }
}

/// diffusers' `WanUpBlock`: `num_res_blocks + 1` resnets, then an optional upsampler.
#[derive(Debug, Clone)]
struct UpBlock {
    resnets: Vec<ResidualBlock>,
    upsampler: Option<Resample>,
}

impl UpBlock {
    fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let mut x = x.clone();
        for r in &self.resnets {
            x = r.forward(&x, cache)?;
        }
        match &self.upsampler {
            Some(u) => u.forward(&x, cache),
            None => Ok(x),
        }
    }
}

/// diffusers' `WanDecoder3d` (Wan2.1 variant).
#[derive(Debug, Clone)]
struct Decoder {
    conv_in: CausalConv3d,
    mid: MidBlock,
    up: Vec<UpBlock>,
    norm_out: RmsNorm,
    conv_out: CausalConv3d,
}

impl Decoder {
    fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.decoder_base_dim.unwrap_or(cfg.base_dim);
        let n = cfg.dim_mult.len();
        let dims: Vec<usize> = std::iter::once(cfg.dim_mult[n - 1])
            .chain(cfg.dim_mult.iter().rev().copied())
            .map(|u| dim * u)
            .collect();
        let temperal_upsample: Vec<bool> = cfg.temperal_downsample.iter().rev().copied().collect();
        let conv_in = CausalConv3d::new(
            cfg.z_dim,
            dims[0],
            (3, 3, 3),
            (1, 1, 1),
            1,
            vb.pp("conv_in"),
        )?;
        let mid = MidBlock::new(dims[0], vb.pp("mid_block"))?;
        let mut up = Vec::with_capacity(n);
        for i in 0..n {
            let vbu = vb.pp("up_blocks").pp(i);
            // Every upsampler but the last halves the channels, which the next block's input reflects.
            let in_dim = if i > 0 { dims[i] / 2 } else { dims[i] };
            let out_dim = dims[i + 1];
            let resnets = (0..=cfg.num_res_blocks)
                .map(|j| {
                    let d = if j == 0 { in_dim } else { out_dim };
                    ResidualBlock::new(d, out_dim, vbu.pp("resnets").pp(j))
                })
                .collect::<Result<Vec<_>>>()?;
            let upsampler = if i != n - 1 {
                let mode = if temperal_upsample[i] {
                    ResampleMode::Upsample3d
                } else {
                    ResampleMode::Upsample2d
                };
                Some(Resample::new(out_dim, mode, vbu.pp("upsamplers").pp(0))?)
            } else {
                None
            };
            up.push(UpBlock { resnets, upsampler });
        }
        let out_dim = dims[n];
        Ok(Self {
            conv_in,
            mid,
            up,
            norm_out: RmsNorm::new(out_dim, false, vb.pp("norm_out"))?,
            conv_out: CausalConv3d::new(
                out_dim,
                cfg.out_channels,
                (3, 3, 3),
                (1, 1, 1),
                1,
                vb.pp("conv_out"),
            )?,
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let x = cached_conv(&self.conv_in, x, cache)?;
        let mut x = self.mid.forward(&x, cache)?;
        for b in &self.up {
            x = b.forward(&x, cache)?;
        }
        let x = self.norm_out.forward(&x)?.silu()?;
        cached_conv(&self.conv_out, &x, cache)
    }
}

/// Wan2.1's causal video VAE (`AutoencoderKLWan`, diffusers 0.42.1 numerics, no tiling).
#[derive(Debug, Clone)]
pub struct AutoencoderKLWan {
    encoder: Encoder,
    quant_conv: CausalConv3d,
    post_quant_conv: CausalConv3d,
    decoder: Decoder,
    cfg: VaeConfig,
    dtype: DType,
    device: Device,
}

impl AutoencoderKLWan {
    /// Builds the VAE from diffusers-named weights (`encoder.*`, `decoder.*`, `quant_conv.*`,
    /// `post_quant_conv.*`). Fails with the reason if `cfg` asks for an unsupported variant (see
    /// [`VaeConfig::validate`]).
    pub fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::wrap)?;
        let z = cfg.z_dim;
        Ok(Self {
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            quant_conv: CausalConv3d::new(
                2 * z,
                2 * z,
                (1, 1, 1),
                (0, 0, 0),
                1,
                vb.pp("quant_conv"),
            )?,
            post_quant_conv: CausalConv3d::new(
                z,
                z,
                (1, 1, 1),
                (0, 0, 0),
                1,
                vb.pp("post_quant_conv"),
            )?,
            decoder: Decoder::new(cfg, vb.pp("decoder"))?,
            cfg: cfg.clone(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &VaeConfig {
        &self.cfg
    }

    /// x: (B, in_channels, F, H, W) in [-1, 1]. Returns the posterior's (mean, logvar), each (B, z_dim, T, h, w)
    /// with T = 1 + (F - 1) / 4 and h, w = H / 8, W / 8 (Wan2.1); logvar is clamped to [-30, 20] as in
    /// diffusers' `DiagonalGaussianDistribution`. Like diffusers, trailing frames beyond `1 + 4k` are dropped.
    pub fn encode(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = x.to_dtype(self.dtype)?;
        let f = x.dim(2)?;
        if f == 0 {
            candle_core::bail!("AutoencoderKLWan::encode: the video has no frames");
        }
        let mut cache = FeatCache::new();
        let mut outs = Vec::with_capacity(1 + (f - 1) / 4);
        // diffusers hard-codes chunks of 4 frames after the first, whatever the temporal compression.
        for i in 0..1 + (f - 1) / 4 {
            cache.rewind();
            let chunk = if i == 0 {
                x.narrow(2, 0, 1)?
            } else {
                x.narrow(2, 1 + 4 * (i - 1), 4)?
            };
            outs.push(self.encoder.forward(&chunk, &mut cache)?);
        }
        let out = Tensor::cat(&outs, 2)?;
        let enc = self.quant_conv.forward(&out, None)?;
        let z = self.cfg.z_dim;
        let mean = enc.narrow(1, 0, z)?;
        let logvar = enc.narrow(1, z, z)?.clamp(-30f32, 20f32)?;
        Ok((mean, logvar))
    }

    /// z: (B, z_dim, T, h, w), already de-normalised (`latents * std + mean`). Returns the video
    /// (B, out_channels, 1 + 4(T - 1), 8h, 8w) clamped to [-1, 1] (Wan2.1 factors). Latent frames stream
    /// through the decoder one at a time, so memory beyond the output does not grow with T.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let z = z.to_dtype(self.dtype)?;
        let t = z.dim(2)?;
        let x = self.post_quant_conv.forward(&z, None)?;
        let mut cache = FeatCache::new();
        let mut outs = Vec::with_capacity(t);
        for i in 0..t {
            cache.rewind();
            outs.push(self.decoder.forward(&x.narrow(2, i, 1)?, &mut cache)?);
        }
        Tensor::cat(&outs, 2)?.clamp(-1f32, 1f32)
    }

    /// latents_mean as a (1, z_dim, 1, 1, 1) f32 tensor on the model's device.
    pub fn latents_mean(&self) -> Result<Tensor> {
        self.stat(&self.cfg.latents_mean)
    }

    /// latents_std as a (1, z_dim, 1, 1, 1) f32 tensor on the model's device.
    pub fn latents_std(&self) -> Result<Tensor> {
        self.stat(&self.cfg.latents_std)
    }

    fn stat(&self, v: &[f64]) -> Result<Tensor> {
        let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        Tensor::from_vec(v, (1, self.cfg.z_dim, 1, 1, 1), &self.device)
    }
}
