//! `AutoencoderKLWan` (diffusers 0.42.1): the causal 3D VAEs of Wan2.1 and of Wan2.2 (`is_residual`,
//! 2x2 pixel patchify, 16x spatial compression).
//!
//! Video is processed in temporal chunks through a causal feature cache, exactly as diffusers does: every
//! cached causal conv keeps the last [`CACHE_T`] frames of its input from the previous chunk and uses them in
//! place of its front zero padding. Encode feeds frames `[0]`, `[1..5]`, `[5..9]`, ...; decode feeds one latent
//! frame at a time, so memory does not grow with video length.

mod blocks;
mod config;
mod decoder;
mod encoder;
mod residual;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use sorrel_core::conv3d::CausalConv3d;

use blocks::FeatCache;
pub use blocks::CACHE_T;
pub use config::{vae_key_from_original, VaeConfig};
use decoder::Decoder;
use encoder::Encoder;

/// Wan's causal video VAE (`AutoencoderKLWan`, diffusers 0.42.1 numerics, no tiling): Wan2.1's, or Wan2.2's
/// when the config says `is_residual` and `patch_size`.
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

    /// The dtype of the weights and activations (what the weights were loaded as). Results are f32 whatever
    /// it is.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// x: (B, in_channels, F, H, W) in [-1, 1]. Returns the posterior's (mean, logvar), f32, each (B, z_dim, T, h, w)
    /// with T = 1 + (F - 1) / 4 and h, w = H / s, W / s (s = 8 for Wan2.1, 16 for Wan2.2); logvar is clamped to [-30, 20] as in
    /// diffusers' `DiagonalGaussianDistribution`. Like diffusers, trailing frames beyond `1 + 4k` are dropped.
    pub fn encode(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = residual::patchify(&x.to_dtype(self.dtype)?, self.patch())?;
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
        let enc = enc.to_dtype(DType::F32)?;
        let mean = enc.narrow(1, 0, z)?;
        let logvar = enc.narrow(1, z, z)?.clamp(-30f32, 20f32)?;
        Ok((mean, logvar))
    }

    /// z: (B, z_dim, T, h, w), already de-normalised (`latents * std + mean`). Returns the video
    /// (B, 3, 1 + 4(T - 1), s h, s w) clamped to [-1, 1]. Latent frames stream
    /// through the decoder one at a time, so memory beyond the output does not grow with T.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_stream().push(z)
    }

    /// A decoder that takes the latent video a piece at a time and gives each piece's frames as it comes:
    /// its causal cache carries over between pieces, so the frames equal one [`Self::decode`] of the whole.
    pub fn decode_stream(&self) -> DecodeStream<'_> {
        DecodeStream {
            vae: self,
            cache: FeatCache::new(),
            first: true,
        }
    }

    fn patch(&self) -> usize {
        self.cfg.patch_size.unwrap_or(1)
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

/// Spatial tiling of a decode, as diffusers' `AutoencoderKLWan.enable_tiling()` does it: the latent is cut into
/// overlapping tiles, each decoded alone over all frames (its own causal cache), and neighbouring tiles are
/// blended linearly across their overlap. A decode then holds one tile's activations and caches, whatever the
/// frame size, plus the decoded tiles; the video differs from an untiled decode near the seams (the
/// convolutions see zero padding at a tile's edge), exactly as diffusers' tiled decode does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// A tile's (height, width) in output pixels (diffusers' `tile_sample_min_height/width`, 256).
    pub tile: (usize, usize),
    /// The distance between tiles in output pixels (`tile_sample_stride_height/width`, 192): tiles overlap by
    /// `tile - stride`.
    pub stride: (usize, usize),
}

impl Default for Tiling {
    /// diffusers' defaults: 256-pixel tiles every 192 pixels.
    fn default() -> Self {
        Self {
            tile: (256, 256),
            stride: (192, 192),
        }
    }
}

impl Tiling {
    /// Whether a `width` x `height` video is cut at all (diffusers tiles only frames larger than a tile).
    pub fn cuts(&self, width: usize, height: usize) -> bool {
        width > self.tile.1 || height > self.tile.0
    }

    /// Tiles of a `width` x `height` video: (rows, columns).
    pub fn grid(&self, cfg: &VaeConfig, width: usize, height: usize) -> (usize, usize) {
        let s = cfg.spatial_compression();
        let (lh, lw) = (height / s, width / s);
        (
            lh.div_ceil((self.stride.0 / s).max(1)),
            lw.div_ceil((self.stride.1 / s).max(1)),
        )
    }
}

impl AutoencoderKLWan {
    /// [`Self::decode`] in spatial tiles ([`Tiling`], diffusers' `tiled_decode`); a latent no larger than one
    /// tile is decoded whole, as diffusers does. Tile sizes are rounded down to whole latent pixels.
    pub fn decode_tiled(&self, z: &Tensor, tiling: &Tiling) -> Result<Tensor> {
        let (_, _, _, h, w) = z.dims5()?;
        let s = self.cfg.spatial_compression();
        let p = self.patch();
        let (tile_h, tile_w) = (tiling.tile.0 / s, tiling.tile.1 / s);
        if tile_h == 0 || tile_w == 0 || tiling.stride.0 < s || tiling.stride.1 < s {
            candle_core::bail!(
                "VAE tiling: tiles of {}x{} every {}x{} pixels are smaller than the VAE's {s}-pixel latent",
                tiling.tile.1,
                tiling.tile.0,
                tiling.stride.1,
                tiling.stride.0
            );
        }
        if tiling.stride.0 > tiling.tile.0 || tiling.stride.1 > tiling.tile.1 {
            candle_core::bail!(
                "VAE tiling: the stride must not exceed the tile (tiles would leave gaps)"
            );
        }
        if h <= tile_h && w <= tile_w {
            return self.decode(z);
        }
        let (stride_h, stride_w) = (tiling.stride.0 / s, tiling.stride.1 / s);
        // In the decoder's output (before unpatchify): pixels / patch.
        let (out_stride_h, out_stride_w) = (tiling.stride.0 / p, tiling.stride.1 / p);
        let blend_h = tiling.tile.0 / p - out_stride_h;
        let blend_w = tiling.tile.1 / p - out_stride_w;
        let (sample_h, sample_w) = (h * s / p, w * s / p);
        let mut rows: Vec<Vec<Tensor>> = Vec::new();
        for i in (0..h).step_by(stride_h) {
            let mut row = Vec::new();
            for j in (0..w).step_by(stride_w) {
                let tile = z
                    .narrow(3, i, tile_h.min(h - i))?
                    .narrow(4, j, tile_w.min(w - j))?;
                let mut stream = self.decode_stream();
                row.push(stream.push_raw(&tile)?.to_dtype(DType::F32)?);
            }
            rows.push(row);
        }
        // Each tile is blended with the tile above and the one to its left as they already are (blended
        // themselves): diffusers blends in place, in this order.
        let mut out_rows = Vec::with_capacity(rows.len());
        for i in 0..rows.len() {
            let mut out_row = Vec::with_capacity(rows[i].len());
            for j in 0..rows[i].len() {
                let mut tile = rows[i][j].clone();
                if i > 0 {
                    tile = blend(&rows[i - 1][j], &tile, blend_h, 3)?;
                }
                if j > 0 {
                    tile = blend(&rows[i][j - 1], &tile, blend_w, 4)?;
                }
                rows[i][j] = tile.clone();
                let (th, tw) = (tile.dim(3)?, tile.dim(4)?);
                out_row.push(tile.narrow(3, 0, out_stride_h.min(th))?.narrow(
                    4,
                    0,
                    out_stride_w.min(tw),
                )?);
            }
            out_rows.push(Tensor::cat(&out_row, 4)?);
        }
        let dec = Tensor::cat(&out_rows, 3)?;
        let dec =
            dec.narrow(3, 0, sample_h.min(dec.dim(3)?))?
                .narrow(4, 0, sample_w.min(dec.dim(4)?))?;
        residual::unpatchify(&dec, p)?.clamp(-1f32, 1f32)
    }
}

/// diffusers' `blend_v` (`dim` 3) and `blend_h` (`dim` 4): the first `extent` rows (columns) of `b` become
/// `a`'s last ones times `1 - k/extent` plus `b`'s times `k/extent`, in f32 with the weights rounded from the
/// doubles Python computes, each product and the sum rounded as PyTorch's separate ops round them.
fn blend(a: &Tensor, b: &Tensor, extent: usize, dim: usize) -> Result<Tensor> {
    let extent = extent.min(a.dim(dim)?).min(b.dim(dim)?);
    if extent == 0 {
        return Ok(b.clone());
    }
    let mut shape = vec![1usize; 5];
    shape[dim] = extent;
    let ramp = |f: &dyn Fn(f64) -> f64| {
        let v: Vec<f32> = (0..extent)
            .map(|k| f(k as f64 / extent as f64) as f32)
            .collect();
        Tensor::from_vec(v, shape.as_slice(), b.device())
    };
    let (keep_a, keep_b) = (ramp(&|x| 1.0 - x)?, ramp(&|x| x)?);
    let a_end = a.narrow(dim, a.dim(dim)? - extent, extent)?;
    let b_start = b.narrow(dim, 0, extent)?;
    let mixed = (a_end.broadcast_mul(&keep_a)? + b_start.broadcast_mul(&keep_b)?)?;
    let rest = b.narrow(dim, extent, b.dim(dim)? - extent)?;
    Tensor::cat(&[&mixed, &rest], dim)
}

/// [`AutoencoderKLWan::decode`] a piece at a time (see [`AutoencoderKLWan::decode_stream`]).
pub struct DecodeStream<'a> {
    vae: &'a AutoencoderKLWan,
    cache: FeatCache,
    /// Whether the next latent frame is the video's first (it decodes to one frame, the others to 4).
    first: bool,
}

impl DecodeStream<'_> {
    /// z: (B, z_dim, T, h, w), de-normalised, following what was pushed before. Returns its frames
    /// (B, 3, F, s h, s w), f32 whatever the weights' dtype, clamped to [-1, 1]: 1 + 4(T - 1) for the first piece, 4T after.
    pub fn push(&mut self, z: &Tensor) -> Result<Tensor> {
        let raw = self.push_raw(z)?;
        residual::unpatchify(&raw, self.vae.patch())?
            .clamp(-1f32, 1f32)?
            .to_dtype(DType::F32)
    }

    /// [`Self::push`] before unpatchify and the clamp, in the VAE's dtype (the tiles of a tiled decode).
    fn push_raw(&mut self, z: &Tensor) -> Result<Tensor> {
        let vae = self.vae;
        let z = z.to_dtype(vae.dtype)?;
        // post_quant_conv is 1x1x1: frame by frame is the same as all at once.
        let x = vae.post_quant_conv.forward(&z, None)?;
        let mut outs = Vec::with_capacity(x.dim(2)?);
        for i in 0..x.dim(2)? {
            self.cache.rewind();
            outs.push(
                vae.decoder
                    .forward(&x.narrow(2, i, 1)?, &mut self.cache, self.first)?,
            );
            self.first = false;
        }
        Tensor::cat(&outs, 2)
    }
}
