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
        residual::unpatchify(&Tensor::cat(&outs, 2)?, vae.patch())?
            .clamp(-1f32, 1f32)?
            .to_dtype(DType::F32)
    }
}
