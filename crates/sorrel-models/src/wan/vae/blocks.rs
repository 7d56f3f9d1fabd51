//! The pieces both Wan VAEs are built from: the causal feature cache, the RMS norm, residual, attention and
//! middle blocks, and the 2x resamplers.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Conv2dConfig, VarBuilder};
use sorrel_core::conv2d::Conv2d;
use sorrel_core::conv3d::CausalConv3d;

/// Frames of a causal conv's input kept for the next chunk (diffusers' `CACHE_T`).
pub const CACHE_T: usize = 2;

/// One causal-cache slot per cached conv, consumed in the same order every chunk.
pub(super) enum Slot {
    /// First chunk: nothing cached yet.
    Empty,
    /// diffusers' "Rep": an upsample3d time_conv that skipped its first chunk; acts as zero frames.
    Rep,
    /// The last frames of the previous chunk's input.
    Frames(Tensor),
}

/// diffusers' `feat_cache` + `feat_idx`: slots are created on the first chunk and reused in order after.
pub(super) struct FeatCache {
    slots: Vec<Slot>,
    idx: usize,
}

impl FeatCache {
    pub(super) fn new() -> Self {
        Self {
            slots: Vec::new(),
            idx: 0,
        }
    }

    /// Starts a new chunk (diffusers resets `feat_idx` to `[0]`).
    pub(super) fn rewind(&mut self) {
        self.idx = 0;
    }

    /// The next slot's index, to come back to with [`FeatCache::seek`].
    pub(super) fn position(&self) -> usize {
        self.idx
    }

    /// Goes back to slot `idx`: the layers after it run again (on the chunk's next frame) through the same
    /// slots.
    pub(super) fn seek(&mut self, idx: usize) {
        self.idx = idx;
    }

    pub(super) fn next(&mut self) -> &mut Slot {
        if self.idx == self.slots.len() {
            self.slots.push(Slot::Empty);
        }
        self.idx += 1;
        &mut self.slots[self.idx - 1]
    }
}

/// The last `CACHE_T` frames of x, topped up in front with the previous cache's last frame when x is shorter
/// (diffusers' "cache last frame of last two chunk"). Copied so the cache does not pin the whole chunk.
pub(super) fn next_cache(x: &Tensor, prev: Option<&Tensor>) -> Result<Tensor> {
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
pub(super) fn cached_conv(
    conv: &CausalConv3d,
    x: &Tensor,
    cache: &mut FeatCache,
) -> Result<Tensor> {
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
pub(super) struct RmsNorm {
    gamma: Tensor,
    scale: f64,
}

impl RmsNorm {
    /// images: gamma is (C, 1, 1) for (N, C, H, W) input, else (C, 1, 1, 1) for (B, C, T, H, W).
    pub(super) fn new(dim: usize, images: bool, vb: VarBuilder) -> Result<Self> {
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

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if matches!(x.dtype(), DType::F32 | DType::BF16) {
            return sorrel_core::channel_norm::channel_rms_norm(x, &self.gamma, self.scale, false);
        }
        self.forward_composed(x)
    }

    /// The norm, then SiLU: one pass for f32 and bf16 (what every residual block and the output head do).
    pub(super) fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        if matches!(x.dtype(), DType::F32 | DType::BF16) {
            return sorrel_core::channel_norm::channel_rms_norm(x, &self.gamma, self.scale, true);
        }
        self.forward_composed(x)?.silu()
    }

    fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
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
pub(super) struct ResidualBlock {
    norm1: RmsNorm,
    conv1: CausalConv3d,
    norm2: RmsNorm,
    conv2: CausalConv3d,
    shortcut: Option<CausalConv3d>,
}

impl ResidualBlock {
    pub(super) fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
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

    pub(super) fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let h = match &self.shortcut {
            Some(s) => s.forward(x, None)?,
            None => x.clone(),
        };
        let y = self.norm1.forward_silu(x)?;
        let y = cached_conv(&self.conv1, &y, cache)?;
        let y = self.norm2.forward_silu(&y)?;
        let y = cached_conv(&self.conv2, &y, cache)?;
        y + h
    }
}

/// diffusers' `WanAttentionBlock`: single-head self-attention within each frame.
#[derive(Debug, Clone)]
pub(super) struct AttentionBlock {
    norm: RmsNorm,
    to_qkv: Conv2d,
    proj: Conv2d,
    dim: usize,
}

impl AttentionBlock {
    pub(super) fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let cfg = Conv2dConfig::default();
        Ok(Self {
            norm: RmsNorm::new(dim, true, vb.pp("norm"))?,
            to_qkv: candle_nn::conv2d(dim, dim * 3, 1, cfg, vb.pp("to_qkv"))?.into(),
            proj: candle_nn::conv2d(dim, dim, 1, cfg, vb.pp("proj"))?.into(),
            dim,
        })
    }

    /// x: (B, C, T, H, W)
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, t, h, w) = x.dims5()?;
        let frames = x.permute((0, 2, 1, 3, 4))?.reshape((b * t, c, h, w))?;
        let qkv = self.to_qkv.forward(&self.norm.forward(&frames)?)?;
        // (BT, 3C, HW) -> (BT, HW, 3C); q, k, v are consecutive channel blocks.
        // The products and softmax in f32 whatever the weights (candle 0.11 has no bf16 product on the CPU;
        // this block runs once per frame at the lowest resolution).
        let qkv = qkv
            .reshape((b * t, 3 * c, h * w))?
            .transpose(1, 2)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        let q = qkv.narrow(D::Minus1, 0, c)?.contiguous()?;
        let k = qkv.narrow(D::Minus1, c, c)?.contiguous()?;
        let v = qkv.narrow(D::Minus1, 2 * c, c)?.contiguous()?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (self.dim as f64).sqrt()))?;
        let attn = sorrel_core::ops::softmax_last_dim(&scores)?;
        let y = attn.matmul(&v)?; // (BT, HW, C)
        let y = y
            .transpose(1, 2)?
            .reshape((b * t, c, h, w))?
            .to_dtype(x.dtype())?;
        let y = self.proj.forward(&y)?;
        let y = y.reshape((b, t, c, h, w))?.permute((0, 2, 1, 3, 4))?;
        y + x
    }
}

/// diffusers' `WanMidBlock` with one attention layer: resnet, attention, resnet.
#[derive(Debug, Clone)]
pub(super) struct MidBlock {
    res0: ResidualBlock,
    attn: AttentionBlock,
    res1: ResidualBlock,
}

impl MidBlock {
    pub(super) fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            res0: ResidualBlock::new(dim, dim, vb.pp("resnets.0"))?,
            attn: AttentionBlock::new(dim, vb.pp("attentions.0"))?,
            res1: ResidualBlock::new(dim, dim, vb.pp("resnets.1"))?,
        })
    }

    pub(super) fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let x = self.res0.forward(x, cache)?;
        let x = self.attn.forward(&x)?;
        self.res1.forward(&x, cache)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum ResampleMode {
    Upsample2d,
    Upsample3d,
    Downsample2d,
    Downsample3d,
}

/// diffusers' `WanResample`: per-frame 2x spatial resampling, plus a causal temporal conv in the 3d modes.
#[derive(Debug, Clone)]
pub(super) struct Resample {
    mode: ResampleMode,
    /// `resample.1`: 3x3 conv after nearest upsampling (padding 1) or after right/bottom zero padding (stride 2).
    conv: Conv2d,
    time_conv: Option<CausalConv3d>,
}

impl Resample {
    /// `up_out`: the upsamplers' output channels (`dim / 2` in Wan2.1, `dim` in Wan2.2's residual blocks);
    /// downsamplers keep `dim`.
    pub(super) fn new(
        dim: usize,
        mode: ResampleMode,
        up_out: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (conv, time_conv) = match mode {
            ResampleMode::Upsample2d | ResampleMode::Upsample3d => {
                let cfg = Conv2dConfig {
                    padding: 1,
                    ..Default::default()
                };
                let conv = candle_nn::conv2d(dim, up_out, 3, cfg, vb.pp("resample.1"))?.into();
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
    pub(super) fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
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
