//! The Wan2.2 VAE's own pieces (`is_residual`): down and up blocks whose shortcut is a parameter-free
//! space-to-channel average (`AvgDown3D`) or channel-to-space copy (`DupUp3D`), and the 2x2 pixel patchify
//! around the whole VAE.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::blocks::{FeatCache, Resample, ResampleMode, ResidualBlock};

/// diffusers' `AvgDown3D`: folds `ft x fs x fs` neighbourhoods into channels, then averages groups of
/// consecutive channels down to `out` channels. Time is padded in front with zeros to a multiple of `ft`.
#[derive(Debug, Clone)]
pub(super) struct AvgDown {
    out: usize,
    ft: usize,
    fs: usize,
}

impl AvgDown {
    pub(super) fn new(out: usize, ft: usize, fs: usize) -> Self {
        Self { out, ft, fs }
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (ft, fs) = (self.ft, self.fs);
        let t = x.dim(2)?;
        let pad = (ft - t % ft) % ft;
        let x = if pad > 0 {
            x.pad_with_zeros(2, pad, 0)?
        } else {
            x.clone()
        };
        let (b, c, t, h, w) = x.dims5()?;
        let (t2, h2, w2) = (t / ft, h / fs, w / fs);
        let group = c * ft * fs * fs / self.out;
        x.reshape(vec![b, c, t2, ft, h2, fs, w2, fs])?
            .permute(vec![0, 1, 3, 5, 7, 2, 4, 6])?
            .contiguous()?
            .reshape((b, self.out, group, t2 * h2 * w2))?
            .mean(2)?
            .reshape((b, self.out, t2, h2, w2))
    }
}

/// diffusers' `DupUp3D`: repeats each channel, then unfolds channels into `ft x fs x fs` neighbourhoods.
/// On the first chunk the first `ft - 1` frames are dropped, matching the causal upsampler, which does not
/// double the first latent frame.
#[derive(Debug, Clone)]
pub(super) struct DupUp {
    out: usize,
    ft: usize,
    fs: usize,
    repeats: usize,
}

impl DupUp {
    pub(super) fn new(in_dim: usize, out: usize, ft: usize, fs: usize) -> Self {
        Self {
            out,
            ft,
            fs,
            repeats: out * ft * fs * fs / in_dim,
        }
    }

    pub(super) fn forward(&self, x: &Tensor, first_chunk: bool) -> Result<Tensor> {
        let (ft, fs) = (self.ft, self.fs);
        let (b, c, t, h, w) = x.dims5()?;
        // repeat_interleave along channels: channel i becomes channels i*r .. (i+1)*r.
        let x = x
            .unsqueeze(2)?
            .broadcast_as(vec![b, c, self.repeats, t, h, w])?
            .contiguous()?;
        let x = x
            .reshape(vec![b, self.out, ft, fs, fs, t, h, w])?
            .permute(vec![0, 1, 5, 2, 6, 3, 7, 4])?
            .contiguous()?
            .reshape((b, self.out, t * ft, h * fs, w * fs))?;
        if first_chunk && ft > 1 {
            x.narrow(2, ft - 1, t * ft - (ft - 1))
        } else {
            Ok(x)
        }
    }
}

/// diffusers' `WanResidualDownBlock`: resnets and an optional 2x downsampler, plus the averaging shortcut
/// around them.
#[derive(Debug, Clone)]
pub(super) struct ResidualDownBlock {
    resnets: Vec<ResidualBlock>,
    downsampler: Option<Resample>,
    shortcut: AvgDown,
}

impl ResidualDownBlock {
    pub(super) fn new(
        in_dim: usize,
        out_dim: usize,
        num_res_blocks: usize,
        temporal: bool,
        down: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let mut resnets = Vec::with_capacity(num_res_blocks);
        let mut d = in_dim;
        for j in 0..num_res_blocks {
            resnets.push(ResidualBlock::new(d, out_dim, vb.pp("resnets").pp(j))?);
            d = out_dim;
        }
        let downsampler = if down {
            let mode = if temporal {
                ResampleMode::Downsample3d
            } else {
                ResampleMode::Downsample2d
            };
            Some(Resample::new(out_dim, mode, out_dim, vb.pp("downsampler"))?)
        } else {
            None
        };
        let shortcut = AvgDown::new(
            out_dim,
            if temporal { 2 } else { 1 },
            if down { 2 } else { 1 },
        );
        Ok(Self {
            resnets,
            downsampler,
            shortcut,
        })
    }

    pub(super) fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let mut y = x.clone();
        for r in &self.resnets {
            y = r.forward(&y, cache)?;
        }
        if let Some(d) = &self.downsampler {
            y = d.forward(&y, cache)?;
        }
        y + self.shortcut.forward(x)?
    }
}

/// diffusers' `WanResidualUpBlock`: `num_res_blocks + 1` resnets and an optional 2x upsampler that keeps the
/// channel count, plus the copying shortcut around them.
#[derive(Debug, Clone)]
pub(super) struct ResidualUpBlock {
    resnets: Vec<ResidualBlock>,
    upsampler: Option<Resample>,
    shortcut: Option<DupUp>,
}

impl ResidualUpBlock {
    pub(super) fn new(
        in_dim: usize,
        out_dim: usize,
        num_res_blocks: usize,
        temporal: bool,
        up: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let resnets = (0..=num_res_blocks)
            .map(|j| {
                let d = if j == 0 { in_dim } else { out_dim };
                ResidualBlock::new(d, out_dim, vb.pp("resnets").pp(j))
            })
            .collect::<Result<Vec<_>>>()?;
        let (upsampler, shortcut) = if up {
            let mode = if temporal {
                ResampleMode::Upsample3d
            } else {
                ResampleMode::Upsample2d
            };
            (
                Some(Resample::new(out_dim, mode, out_dim, vb.pp("upsampler"))?),
                Some(DupUp::new(in_dim, out_dim, if temporal { 2 } else { 1 }, 2)),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            resnets,
            upsampler,
            shortcut,
        })
    }

    pub(super) fn forward(
        &self,
        x: &Tensor,
        cache: &mut FeatCache,
        first_chunk: bool,
    ) -> Result<Tensor> {
        let mut y = x.clone();
        for r in &self.resnets {
            y = r.forward(&y, cache)?;
        }
        if let Some(u) = &self.upsampler {
            y = u.forward(&y, cache)?;
        }
        match &self.shortcut {
            Some(s) => y + s.forward(x, first_chunk)?,
            None => Ok(y),
        }
    }
}

/// diffusers' `patchify`: (B, C, F, H, W) -> (B, C p p, F, H/p, W/p), channel `c p p + j p + i` holding
/// the pixel at row offset i and column offset j of each p x p patch.
pub(super) fn patchify(x: &Tensor, p: usize) -> Result<Tensor> {
    if p == 1 {
        return Ok(x.clone());
    }
    let (b, c, f, h, w) = x.dims5()?;
    if h % p != 0 || w % p != 0 {
        candle_core::bail!(
            "the VAE's patchify needs a height and width divisible by {p}, got {w}x{h}"
        );
    }
    x.reshape(vec![b, c, f, h / p, p, w / p, p])?
        .permute(vec![0, 1, 6, 4, 2, 3, 5])?
        .contiguous()?
        .reshape((b, c * p * p, f, h / p, w / p))
}

/// The inverse of [`patchify`].
pub(super) fn unpatchify(x: &Tensor, p: usize) -> Result<Tensor> {
    if p == 1 {
        return Ok(x.clone());
    }
    let (b, cp, f, h, w) = x.dims5()?;
    let c = cp / (p * p);
    x.reshape(vec![b, c, p, p, f, h, w])?
        .permute(vec![0, 1, 4, 5, 3, 6, 2])?
        .contiguous()?
        .reshape((b, c, f, h * p, w * p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn patchify_round_trips() {
        let x = Tensor::arange(0f32, 3. * 2. * 4. * 6., &Device::Cpu)
            .unwrap()
            .reshape((1, 3, 2, 4, 6))
            .unwrap();
        let p = patchify(&x, 2).unwrap();
        assert_eq!(p.dims(), &[1, 12, 2, 2, 3]);
        // channels 1 and 2 of patch (0, 0) in frame 0: row offset 1 (pixel (1, 0) = 6), column offset 1
        // (pixel (0, 1) = 1).
        let at = |ch: usize| {
            p.get(0)
                .unwrap()
                .get(ch)
                .unwrap()
                .get(0)
                .unwrap()
                .get(0)
                .unwrap()
                .get(0)
                .unwrap()
        };
        assert_eq!(at(1).to_scalar::<f32>().unwrap(), 6.0);
        assert_eq!(at(2).to_scalar::<f32>().unwrap(), 1.0);
        let back = unpatchify(&p, 2).unwrap();
        let d = (back - &x)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
    }
}
