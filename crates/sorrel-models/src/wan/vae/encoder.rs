//! diffusers' `WanEncoder3d`.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use sorrel_core::conv3d::CausalConv3d;

use super::blocks::*;
use super::residual::ResidualDownBlock;
use super::VaeConfig;

/// One entry of the encoder's flat `down_blocks` list.
#[derive(Debug, Clone)]
pub(super) enum DownLayer {
    Res(ResidualBlock),
    Resample(Resample),
    /// Wan2.2: one whole level (resnets, downsampler and the averaging shortcut).
    Level(ResidualDownBlock),
}

/// diffusers' `WanEncoder3d`: Wan2.1's flat list of resnets and resamplers, or Wan2.2's residual levels.
#[derive(Debug, Clone)]
pub(super) struct Encoder {
    conv_in: CausalConv3d,
    down: Vec<DownLayer>,
    mid: MidBlock,
    norm_out: RmsNorm,
    conv_out: CausalConv3d,
}

impl Encoder {
    pub(super) fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
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
        let mut layers = Vec::new();
        for i in 0..n {
            let (mut in_dim, out_dim) = (dims[i], dims[i + 1]);
            if cfg.is_residual {
                let down = i != n - 1;
                let level = ResidualDownBlock::new(
                    in_dim,
                    out_dim,
                    cfg.num_res_blocks,
                    down && cfg.temperal_downsample[i],
                    down,
                    vbd.pp(i),
                )?;
                layers.push(DownLayer::Level(level));
                continue;
            }
            for _ in 0..cfg.num_res_blocks {
                layers.push(DownLayer::Res(ResidualBlock::new(
                    in_dim,
                    out_dim,
                    vbd.pp(layers.len()),
                )?));
                in_dim = out_dim;
            }
            if i != n - 1 {
                let mode = if cfg.temperal_downsample[i] {
                    ResampleMode::Downsample3d
                } else {
                    ResampleMode::Downsample2d
                };
                layers.push(DownLayer::Resample(Resample::new(
                    out_dim,
                    mode,
                    out_dim,
                    vbd.pp(layers.len()),
                )?));
            }
        }
        let out_dim = dims[n];
        Ok(Self {
            conv_in,
            down: layers,
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

    pub(super) fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let mut x = cached_conv(&self.conv_in, x, cache)?;
        for layer in &self.down {
            x = match layer {
                DownLayer::Res(r) => r.forward(&x, cache)?,
                DownLayer::Resample(r) => r.forward(&x, cache)?,
                DownLayer::Level(l) => l.forward(&x, cache)?,
            };
        }
        let x = self.mid.forward(&x, cache)?;
        let x = self.norm_out.forward_silu(&x)?;
        cached_conv(&self.conv_out, &x, cache)
    }
}
