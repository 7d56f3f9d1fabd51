//! diffusers' `WanDecoder3d`.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use sorrel_core::conv3d::CausalConv3d;

use super::blocks::*;
use super::residual::ResidualUpBlock;
use super::VaeConfig;

/// diffusers' `WanUpBlock`: `num_res_blocks + 1` resnets, then an optional upsampler.
#[derive(Debug, Clone)]
pub(super) struct UpBlock {
    resnets: Vec<ResidualBlock>,
    upsampler: Option<Resample>,
}

/// One decoder level: Wan2.1's up block or Wan2.2's residual one.
#[derive(Debug, Clone)]
pub(super) enum UpLevel {
    Plain(UpBlock),
    Residual(ResidualUpBlock),
}

impl UpBlock {
    pub(super) fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
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

/// diffusers' `WanDecoder3d`, with Wan2.1's or Wan2.2's (`is_residual`) up blocks.
///
/// The levels after the last temporal upsampler (and the output head) run one frame at a time: from there on
/// every layer works on each frame alone (convolutions that are causal in time through the cache, norms
/// over channels, 2D upsampling), so a frame at a time gives the same video as the chunk at once, and the
/// largest activations (full resolution, 96 channels) are held for one frame instead of four.
#[derive(Debug, Clone)]
pub(super) struct Decoder {
    conv_in: CausalConv3d,
    mid: MidBlock,
    up: Vec<UpLevel>,
    norm_out: RmsNorm,
    conv_out: CausalConv3d,
    /// The first up level that runs frame by frame (`up.len()`: only the head).
    frame_by_frame_from: usize,
}

impl Decoder {
    pub(super) fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
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
            // Wan2.1's upsamplers halve the channels, which the next block's input reflects; Wan2.2's keep them.
            let in_dim = if i > 0 && !cfg.is_residual {
                dims[i] / 2
            } else {
                dims[i]
            };
            let out_dim = dims[i + 1];
            let up_flag = i != n - 1;
            if cfg.is_residual {
                up.push(UpLevel::Residual(ResidualUpBlock::new(
                    in_dim,
                    out_dim,
                    cfg.num_res_blocks,
                    up_flag && temperal_upsample[i],
                    up_flag,
                    vbu,
                )?));
                continue;
            }
            let resnets = (0..=cfg.num_res_blocks)
                .map(|j| {
                    let d = if j == 0 { in_dim } else { out_dim };
                    ResidualBlock::new(d, out_dim, vbu.pp("resnets").pp(j))
                })
                .collect::<Result<Vec<_>>>()?;
            let upsampler = if up_flag {
                let mode = if temperal_upsample[i] {
                    ResampleMode::Upsample3d
                } else {
                    ResampleMode::Upsample2d
                };
                Some(Resample::new(
                    out_dim,
                    mode,
                    out_dim / 2,
                    vbu.pp("upsamplers").pp(0),
                )?)
            } else {
                None
            };
            up.push(UpLevel::Plain(UpBlock { resnets, upsampler }));
        }
        let out_dim = dims[n];
        // Wan2.2's residual levels have temporal shortcuts (and first-chunk frame drops) in every level that
        // upsamples in time; Wan2.1's plain levels only in their upsampler.
        let temporal = |i: usize| i != n - 1 && (temperal_upsample[i] || cfg.is_residual);
        let frame_by_frame_from = (0..n).rev().find(|&i| temporal(i)).map_or(0, |i| i + 1);
        Ok(Self {
            conv_in,
            mid,
            up,
            frame_by_frame_from,
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

    /// `first_chunk`: x is the first latent frame (Wan2.2's shortcuts then drop their leading frames).
    pub(super) fn forward(
        &self,
        x: &Tensor,
        cache: &mut FeatCache,
        first_chunk: bool,
    ) -> Result<Tensor> {
        let x = cached_conv(&self.conv_in, x, cache)?;
        let mut x = self.mid.forward(&x, cache)?;
        let (chunked, framewise) = self.up.split_at(self.frame_by_frame_from);
        for level in chunked {
            x = self.level(level, &x, cache, first_chunk)?;
        }
        let start = cache.position();
        let t = x.dim(2)?;
        let mut frames = Vec::with_capacity(t);
        for f in 0..t {
            cache.seek(start);
            let mut y = x.narrow(2, f, 1)?;
            for level in framewise {
                y = self.level(level, &y, cache, first_chunk)?;
            }
            let y = self.norm_out.forward_silu(&y)?;
            frames.push(cached_conv(&self.conv_out, &y, cache)?);
        }
        Tensor::cat(&frames, 2)
    }

    fn level(
        &self,
        level: &UpLevel,
        x: &Tensor,
        cache: &mut FeatCache,
        first_chunk: bool,
    ) -> Result<Tensor> {
        match level {
            UpLevel::Plain(b) => b.forward(x, cache),
            UpLevel::Residual(b) => b.forward(x, cache, first_chunk),
        }
    }
}
