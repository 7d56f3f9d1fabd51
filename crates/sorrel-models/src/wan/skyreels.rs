//! What SkyReels-V2's transformer (`SkyReelsV2Transformer3DModel`, diffusers 0.42.1) adds to Wan's: the
//! sampling frame rate embedded into the timestep modulation, block-causal self-attention for diffusion
//! forcing's asynchronous mode, and timestep features computed in f64.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use sorrel_core::attention::attention;
use sorrel_core::ops::{dense, Dense};

/// `fps_embedding` (two rows: 16 fps, anything else) and `fps_projection` (Linear, SiLU, Linear to the six
/// modulation vectors).
pub(crate) struct FpsEmbedding {
    table: Tensor,
    proj_1: Dense,
    proj_2: Dense,
}

impl FpsEmbedding {
    pub(crate) fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            table: vb.get((2, dim), "fps_embedding.weight")?,
            proj_1: dense(dim, dim, vb.pp("fps_projection.net.0.proj"))?,
            proj_2: dense(dim, 6 * dim, vb.pp("fps_projection.net.2"))?,
        })
    }

    /// The modulation offset (1, 1, 6, D) in f32 for video sampled at `fps`: diffusers' pipelines pass row 0
    /// for 16 fps and row 1 otherwise.
    pub(crate) fn offset(&self, fps: u32) -> Result<Tensor> {
        let row = self.table.narrow(0, usize::from(fps != 16), 1)?;
        let d = row.dim(1)?;
        self.proj_2
            .forward(&self.proj_1.forward(&row)?.silu()?)?
            .to_dtype(DType::F32)?
            .reshape((1, 1, 6, d))
    }
}

/// Self-attention in which the tokens of each block of `block` tokens (whole latent frames) attend to their
/// own block and the blocks before it: diffusers' boolean causal mask, computed block by block on the
/// growing key prefix instead of masking a full score matrix. q, k, v: (B, H, S, hd), S a multiple of `block`.
pub(crate) fn block_causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    block: usize,
) -> Result<Tensor> {
    let s = q.dim(2)?;
    if block == 0 || !s.is_multiple_of(block) {
        candle_core::bail!(
            "block-causal attention: {s} tokens are not whole blocks of {block} (the latent frames must be a \
             multiple of the causal block size)"
        );
    }
    let outs = (0..s / block)
        .map(|b| {
            let end = (b + 1) * block;
            attention(
                &q.narrow(2, b * block, block)?,
                &k.narrow(2, 0, end)?,
                &v.narrow(2, 0, end)?,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&outs, 2)
}

/// Sinusoidal timestep features as diffusers' `get_1d_sincos_pos_embed_from_grid(flip_sin_to_cos=True)`,
/// which SkyReels-V2 uses: the same frequencies as Wan's, with the angles in f64 (at t near 1000 the f32
/// angles of Wan's version differ by up to 1e-4).
/// t: (N,) -> (N, dim) f32, [cos | sin]
pub(crate) fn timestep_features_f64(t: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f64> = (0..half)
        .map(|i| 1.0 / 10000f64.powf(i as f64 / half as f64))
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t
        .to_dtype(DType::F64)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    Tensor::cat(&[args.cos()?, args.sin()?], D::Minus1)?.to_dtype(DType::F32)
}
