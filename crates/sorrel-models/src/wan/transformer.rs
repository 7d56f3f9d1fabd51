//! `WanTransformer3DModel`: patch embedding, 3D RoPE, self/cross attention with RMS qk-norm, AdaLN
//! modulation from the timestep, GELU feed-forward, and the un-patchify head.
//!
//! Follows diffusers' `transformer_wan.py`. Norms and the modulation arithmetic run in f32 whatever the
//! compute dtype, as diffusers keeps `norm*`, `scale_shift_table` and `time_embedder` in f32.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use sorrel_core::adaln::{gated_residual, norm_affine};
use sorrel_core::attention::attention;
use sorrel_core::ops::{broadcast_add, dense, gelu_tanh, Dense};

use super::config::WanTransformerConfig;

/// torch.nn.RMSNorm over the last dim with a learned scale.
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps: eps as f32,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        sorrel_core::ops::rms_norm(x, &self.weight, self.eps)
    }
}

/// Affine LayerNorm (the cross-attention norm), computed in f32.
struct AffineLayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl AffineLayerNorm {
    fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        // Read in f32 whatever the compute dtype: diffusers keeps these norms' weights fp32 (its
        // `_keep_in_fp32_modules`); rounding them to bf16 first made a bf16 forward 14 % further from fp32.
        let vb = vb.set_dtype(DType::F32);
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps,
        })
    }
    /// x: (B, S, D) -> (B, S, D) in `out`, computed in f32.
    fn forward(&self, x: &Tensor, out: DType) -> Result<Tensor> {
        norm_affine(x, &self.weight, &self.bias, self.eps, out)
    }
}

/// `WanImageEmbedding`: CLIP image features -> model width, as LayerNorm, Linear, exact GELU, Linear,
/// LayerNorm (both norms affine, eps 1e-5, in f32). First/last-frame models first add a learned position
/// table over the two images' tokens.
struct ImageEmbedding {
    norm1: AffineLayerNorm,
    proj: Dense,
    out: Dense,
    norm2: AffineLayerNorm,
    /// (1, 2 * tokens per image, image_dim) f32
    pos_embed: Option<Tensor>,
}

impl ImageEmbedding {
    fn new(cfg: &WanTransformerConfig, image_dim: usize, vb: VarBuilder) -> Result<Self> {
        let d = cfg.inner_dim();
        Ok(Self {
            norm1: AffineLayerNorm::new(image_dim, 1e-5, vb.pp("norm1"))?,
            proj: dense(image_dim, image_dim, vb.pp("ff.net.0.proj"))?,
            out: dense(image_dim, d, vb.pp("ff.net.2"))?,
            norm2: AffineLayerNorm::new(d, 1e-5, vb.pp("norm2"))?,
            pos_embed: cfg
                .pos_embed_seq_len
                .map(|n| vb.get((1, n, image_dim), "pos_embed")?.to_dtype(DType::F32))
                .transpose()?,
        })
    }

    /// x: (N, L, image_dim), one row per image -> (N, L, D) in `dt`; with a position table, the images
    /// pair up: (N, L, image_dim) -> (N/2, 2L, D).
    fn forward(&self, x: &Tensor, dt: DType) -> Result<Tensor> {
        let (n, l, c) = x.dims3()?;
        let x = x.to_dtype(DType::F32)?;
        let x = match &self.pos_embed {
            Some(pos) => {
                if n % 2 == 1 || pos.dim(1)? != 2 * l {
                    candle_core::bail!(
                        "this first/last-frame model takes two images of {} tokens each, got {n} of {l}",
                        pos.dim(1)? / 2
                    );
                }
                broadcast_add(&x.reshape((n / 2, 2 * l, c))?, pos)?
            }
            None => x,
        };
        let h = self.norm1.forward(&x, dt)?;
        let h = self.out.forward(&self.proj.forward(&h)?.gelu_erf()?)?;
        self.norm2.forward(&h, dt)
    }
}

/// The image-to-video models' second set of keys and values in cross-attention, read from the image tokens.
struct ImageKeyValues {
    add_k: Dense,
    add_v: Dense,
    norm_added_k: RmsNorm,
}

/// Multi-head attention with RMS norm across heads on q and k; RoPE on self-attention only. In the
/// cross-attention of image-to-video models the queries also attend to the image tokens, with their own
/// keys and values, and the two results are summed (diffusers' `WanAttnProcessor`).
struct Attention {
    to_q: Dense,
    to_k: Dense,
    to_v: Dense,
    to_out: Dense,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    image_kv: Option<ImageKeyValues>,
    heads: usize,
}

/// (B, L, H*hd) -> (B, H, L, hd), contiguous.
fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, l, d) = x.dims3()?;
    x.reshape((b, l, heads, d / heads))?
        .transpose(1, 2)?
        .contiguous()
}

impl Attention {
    fn new(dim: usize, heads: usize, eps: f64, image_kv: bool, vb: VarBuilder) -> Result<Self> {
        let image_kv = if image_kv {
            Some(ImageKeyValues {
                add_k: dense(dim, dim, vb.pp("add_k_proj"))?,
                add_v: dense(dim, dim, vb.pp("add_v_proj"))?,
                norm_added_k: RmsNorm::new(dim, eps, vb.pp("norm_added_k"))?,
            })
        } else {
            None
        };
        Ok(Self {
            to_q: dense(dim, dim, vb.pp("to_q"))?,
            to_k: dense(dim, dim, vb.pp("to_k"))?,
            to_v: dense(dim, dim, vb.pp("to_v"))?,
            to_out: dense(dim, dim, vb.pp("to_out.0"))?,
            norm_q: RmsNorm::new(dim, eps, vb.pp("norm_q"))?,
            norm_k: RmsNorm::new(dim, eps, vb.pp("norm_k"))?,
            image_kv,
            heads,
        })
    }

    /// x: (B, S, D); context: (B, L, D) for cross-attention (with the image tokens (B, Li, D) for
    /// image-to-video models); rope: (cos, sin) each (S, head_dim/2) for self-attention; causal: tokens per
    /// block of block-causal self-attention (SkyReels-V2's asynchronous diffusion forcing).
    fn forward(
        &self,
        x: &Tensor,
        context: Option<&Context>,
        rope: Option<&(Tensor, Tensor)>,
        causal: Option<usize>,
    ) -> Result<Tensor> {
        let (b, s, d) = x.dims3()?;
        let kv_in = context.map(|c| &c.text).unwrap_or(x);
        let q = split_heads(&self.norm_q.forward(&self.to_q.forward(x)?)?, self.heads)?;
        let k = split_heads(
            &self.norm_k.forward(&self.to_k.forward(kv_in)?)?,
            self.heads,
        )?;
        let v = split_heads(&self.to_v.forward(kv_in)?, self.heads)?;
        let (q, k) = match rope {
            Some((cos, sin)) => (
                sorrel_core::ops::rope_i(&q, cos, sin)?,
                sorrel_core::ops::rope_i(&k, cos, sin)?,
            ),
            None => (q, k),
        };
        let mut out = match causal {
            Some(block) => super::skyreels::block_causal_attention(&q, &k, &v, block)?,
            None => attention(&q, &k, &v)?,
        }; // (B, H, S, hd)
        match (&self.image_kv, context.and_then(|c| c.image.as_ref())) {
            (Some(ikv), Some(img)) => {
                let ki = split_heads(
                    &ikv.norm_added_k.forward(&ikv.add_k.forward(img)?)?,
                    self.heads,
                )?;
                let vi = split_heads(&ikv.add_v.forward(img)?, self.heads)?;
                out = (attention(&q, &ki, &vi)? + out)?;
            }
            (Some(_), None) => {
                candle_core::bail!(
                    "this image-to-video transformer needs image tokens in its context"
                )
            }
            (None, Some(_)) => {
                candle_core::bail!(
                    "this transformer takes no image tokens (it is not an image-to-video model)"
                )
            }
            (None, None) => {}
        }
        let out = out.transpose(1, 2)?.reshape((b, s, d))?;
        self.to_out.forward(&out)
    }
}

/// What the model is conditioned on besides the latents and the timestep, prepared once per generation:
/// the cross-attention's tokens from [`WanTransformer3DModel::embed_context`], and VACE's control input.
#[derive(Debug, Clone)]
pub struct Context {
    /// Embedded text tokens, (B, L, D).
    pub text: Tensor,
    /// Embedded image tokens, (B, Li, D), for image-to-video models.
    pub image: Option<Tensor>,
    /// VACE models: the control latents and the scale of each control hint.
    pub control: Option<Control>,
    /// SkyReels-V2 models with `inject_sample_info`: the frame rate the video is sampled at.
    pub sample_fps: Option<u32>,
    /// SkyReels-V2: latent frames per causal block of self-attention (diffusers' `causal_block_size`);
    /// `None`: the config's `num_frame_per_block`.
    pub causal_block: Option<usize>,
}

impl Context {
    /// `a` and `b` as one batch (a first), so two predictions (guidance's conditional and unconditional)
    /// can run as one forward. Their token counts must match, as prompts padded to one length do.
    pub fn batch(a: &Context, b: &Context) -> candle_core::Result<Context> {
        let both = |x: &Tensor, y: &Tensor| Tensor::cat(&[x, y], 0);
        Ok(Context {
            text: both(&a.text, &b.text)?,
            image: match (&a.image, &b.image) {
                (Some(x), Some(y)) => Some(both(x, y)?),
                _ => None,
            },
            control: match (&a.control, &b.control) {
                (Some(x), Some(y)) => Some(Control {
                    latents: both(&x.latents, &y.latents)?,
                    scales: x.scales.clone(),
                }),
                _ => None,
            },
            sample_fps: a.sample_fps,
            causal_block: a.causal_block,
        })
    }
}

/// VACE's control input.
#[derive(Debug, Clone)]
pub struct Control {
    /// (B, vace_in_channels, T, h, w): encoded inactive and reactive video and the unshuffled mask.
    pub latents: Tensor,
    /// One scale per VACE layer (diffusers' `conditioning_scale`, 1.0 by default).
    pub scales: Vec<f64>,
}

/// Linear -> GELU (tanh approximation) -> Linear.
struct FeedForward {
    proj: Dense,
    out: Dense,
}

impl FeedForward {
    fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            proj: dense(dim, hidden, vb.pp("net.0.proj"))?,
            out: dense(hidden, dim, vb.pp("net.2"))?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // The tanh approximation is what "gelu-approximate" means in diffusers.
        let one = |x: &Tensor| self.out.forward(&gelu_tanh(&self.proj.forward(x)?)?);
        let dims = x.dims();
        let width = *dims.last().unwrap_or(&1);
        let rows = x.elem_count() / width.max(1);
        if rows <= FFN_ROWS || x.track_op() {
            return one(x);
        }
        // At inference, rows in chunks: the hidden activations are 5.8 times the model's width (two copies
        // around the GELU), 2.3 GB at Wan2.1's 32,760 tokens in f32, against 0.3 GB a chunk. Each row's
        // result is the same either way.
        let flat = x.reshape((rows, width))?;
        let parts = (0..rows)
            .step_by(FFN_ROWS)
            .map(|i| one(&flat.narrow(0, i, FFN_ROWS.min(rows - i))?))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)?.reshape(dims)
    }
}

/// Rows (tokens) the feed-forward takes at a time at inference.
pub const FFN_ROWS: usize = 4096;

/// One Wan transformer block (self-attention with RoPE, cross-attention, feed-forward, AdaLN from the
/// timestep); VACE's control blocks are the same block between two projections.
pub(crate) struct Block {
    attn1: Attention,
    attn2: Attention,
    norm2: Option<AffineLayerNorm>,
    ffn: FeedForward,
    /// (1, 6, D) in f32
    scale_shift_table: Tensor,
    eps: f64,
}

impl Block {
    pub(crate) fn new(cfg: &WanTransformerConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.inner_dim();
        let h = cfg.num_attention_heads;
        Ok(Self {
            attn1: Attention::new(dim, h, cfg.eps, false, vb.pp("attn1"))?,
            attn2: Attention::new(
                dim,
                h,
                cfg.eps,
                cfg.added_kv_proj_dim.is_some(),
                vb.pp("attn2"),
            )?,
            norm2: if cfg.cross_attn_norm {
                Some(AffineLayerNorm::new(dim, cfg.eps, vb.pp("norm2"))?)
            } else {
                None
            },
            ffn: FeedForward::new(dim, cfg.ffn_dim, vb.pp("ffn"))?,
            // fp32 in diffusers too (see AffineLayerNorm::new).
            scale_shift_table: vb
                .clone()
                .set_dtype(DType::F32)
                .get((1, 6, dim), "scale_shift_table")?,
            eps: cfg.eps,
        })
    }

    /// x: (B, S, D); context: text (B, L, D) and image tokens; temb6: (B, S', 6, D) f32 with S' = 1 (one
    /// timestep for every token) or S (a timestep per token).
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        context: &Context,
        temb6: &Tensor,
        rope: &(Tensor, Tensor),
        causal: Option<usize>,
    ) -> Result<Tensor> {
        let dt = x.dtype();
        let m = broadcast_add(&self.scale_shift_table.unsqueeze(0)?, temb6)?; // (B, S', 6, D)
        let chunk = |i: usize| m.narrow(2, i, 1)?.squeeze(2); // (B, S', D)
        let (shift_msa, scale_msa, gate_msa) = (chunk(0)?, chunk(1)?, chunk(2)?);
        let (c_shift, c_scale, c_gate) = (chunk(3)?, chunk(4)?, chunk(5)?);

        // As diffusers: norms, modulation and gated residuals in f32, each result rounded to the compute
        // dtype once (fused passes, see sorrel_core::adaln).
        let n = norm_affine(x, &(scale_msa + 1.0)?, &shift_msa, self.eps, dt)?;
        let a = self.attn1.forward(&n, None, Some(rope), causal)?;
        let x = gated_residual(x, &a, &gate_msa, dt)?;

        let n = match &self.norm2 {
            Some(norm) => norm.forward(&x, dt)?,
            None => x.clone(),
        };
        let x = (&x + self.attn2.forward(&n, Some(context), None, None)?)?;

        let n = norm_affine(&x, &(c_scale + 1.0)?, &c_shift, self.eps, dt)?;
        let f = self.ffn.forward(&n)?;
        gated_residual(&x, &f, &c_gate, dt)
    }
}

/// The patch embedding (a conv whose stride is its kernel) as one matrix product.
/// x: (B, C, F, H, W) in the compute dtype; weight: (D, C*pt*ph*pw) -> (B, N, D), N = F/pt * H/ph * W/pw.
pub(crate) fn patchify(
    x: Tensor,
    [pt, ph, pw]: [usize; 3],
    weight: &Tensor,
    bias: &Tensor,
) -> Result<Tensor> {
    let (b, c, f, h, w) = x.dims5()?;
    let (gf, gh, gw) = (f / pt, h / ph, w / pw);
    // (B, C, gf, pt, gh, ph, gw, pw) -> (B, gf, gh, gw, C, pt, ph, pw) -> (B*N, C*pt*ph*pw)
    let patches = x
        .reshape(&[b, c, gf, pt, gh, ph, gw, pw][..])?
        .permute([0, 2, 4, 6, 1, 3, 5, 7])?
        .reshape((b * gf * gh * gw, c * pt * ph * pw))?;
    // One (B*N, K) x (K, D) product: a weight broadcast over the batch would, in training, sum B copies of its
    // gradient.
    sorrel_core::ops::linear_2d(&patches.contiguous()?, weight, Some(bias))?.reshape((
        b,
        gf * gh * gw,
        (),
    ))
}

/// Sinusoidal timestep features as diffusers' `Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)`.
/// t: (B,) -> (B, dim) f32, [cos | sin]
fn timestep_features(t: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f32.ln()) * i as f32 / half as f32).exp())
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    let emb = Tensor::cat(&[args.cos()?, args.sin()?], 1)?;
    if dim % 2 == 1 {
        emb.pad_with_zeros(1, 0, 1)
    } else {
        Ok(emb)
    }
}

/// The 3D rotary tables: per token (frame, row, column) the concatenated per-axis angles.
/// Returns (cos, sin), each (F*H*W, head_dim/2) in f32 whatever the compute dtype, as diffusers keeps its
/// `rope` module in fp32. Angles are computed in f64 as diffusers does.
fn rope_tables(
    head_dim: usize,
    (f, h, w): (usize, usize, usize),
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let hw_dim = 2 * (head_dim / 6);
    let t_dim = head_dim - 2 * hw_dim;
    let inv = |dim: usize| -> Vec<f64> {
        (0..dim / 2)
            .map(|i| 1.0 / 10000f64.powf((2 * i) as f64 / dim as f64))
            .collect()
    };
    let (ft, fh, fw) = (inv(t_dim), inv(hw_dim), inv(hw_dim));
    let half = head_dim / 2;
    let n = f * h * w;
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for fi in 0..f {
        for hi in 0..h {
            for wi in 0..w {
                let angles = ft
                    .iter()
                    .map(|q| fi as f64 * q)
                    .chain(fh.iter().map(|q| hi as f64 * q))
                    .chain(fw.iter().map(|q| wi as f64 * q));
                for a in angles {
                    cos.push(a.cos() as f32);
                    sin.push(a.sin() as f32);
                }
            }
        }
    }
    Ok((
        Tensor::from_vec(cos, (n, half), device)?,
        Tensor::from_vec(sin, (n, half), device)?,
    ))
}

/// The Wan2.1 diffusion transformer.
pub struct WanTransformer3DModel {
    cfg: WanTransformerConfig,
    /// (D, C*pt*ph*pw): the patch conv as a matrix, since stride == kernel.
    patch_weight: Tensor,
    patch_bias: Tensor,
    time_1: Dense,
    time_2: Dense,
    time_proj: Dense,
    text_1: Dense,
    text_2: Dense,
    image_embedder: Option<ImageEmbedding>,
    vace: Option<super::vace::VaceBranch>,
    /// SkyReels-V2's frame-rate conditioning.
    fps: Option<super::skyreels::FpsEmbedding>,
    blocks: Vec<Block>,
    proj_out: Dense,
    /// (1, 2, D) f32
    scale_shift_table: Tensor,
    dtype: DType,
}

impl WanTransformer3DModel {
    /// Builds the model from a VarBuilder using diffusers' key names.
    pub fn new(cfg: &WanTransformerConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.inner_dim();
        let [pt, ph, pw] = cfg.patch_size;
        let patch_weight = vb
            .get((d, cfg.in_channels, pt, ph, pw), "patch_embedding.weight")?
            .reshape((d, cfg.in_channels * pt * ph * pw))?;
        let patch_bias = vb.get(d, "patch_embedding.bias")?;
        let ce = vb.pp("condition_embedder");
        // The timestep MLP stays in f32 (diffusers' `_keep_in_fp32_modules`).
        let te = ce.pp("time_embedder").set_dtype(DType::F32);
        let blocks = (0..cfg.num_layers)
            .map(|i| Block::new(cfg, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            patch_weight,
            patch_bias,
            time_1: dense(cfg.freq_dim, d, te.pp("linear_1"))?,
            time_2: dense(d, d, te.pp("linear_2"))?,
            time_proj: dense(d, 6 * d, ce.pp("time_proj"))?,
            text_1: dense(cfg.text_dim, d, ce.pp("text_embedder.linear_1"))?,
            text_2: dense(d, d, ce.pp("text_embedder.linear_2"))?,
            image_embedder: cfg
                .image_dim
                .map(|c| ImageEmbedding::new(cfg, c, ce.pp("image_embedder")))
                .transpose()?,
            vace: cfg
                .vace_layers
                .as_ref()
                .map(|layers| super::vace::VaceBranch::new(cfg, layers, &vb))
                .transpose()?,
            fps: cfg
                .inject_sample_info
                .then(|| super::skyreels::FpsEmbedding::new(d, vb.clone()))
                .transpose()?,
            blocks,
            proj_out: dense(d, cfg.out_channels * pt * ph * pw, vb.pp("proj_out"))?,
            // fp32 in diffusers too (see AffineLayerNorm::new).
            scale_shift_table: vb
                .clone()
                .set_dtype(DType::F32)
                .get((1, 2, d), "scale_shift_table")?,
            dtype: vb.dtype(),
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &WanTransformerConfig {
        &self.cfg
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Checks that a latent of (frames, height, width) can be patchified and fits the RoPE table.
    pub fn check_latent_size(
        &self,
        f: usize,
        h: usize,
        w: usize,
    ) -> std::result::Result<(), String> {
        super::config::check_latent_grid(self.cfg.patch_size, self.cfg.rope_max_seq_len, f, h, w)
    }

    /// VACE models: the number of VACE layers, each taking one control scale.
    pub fn vace_layer_count(&self) -> Option<usize> {
        self.vace.as_ref().map(|v| v.layer_count())
    }

    /// Whether the model takes image tokens (an image-to-video or first/last-frame model).
    pub fn takes_image(&self) -> bool {
        self.image_embedder.is_some()
    }

    /// Patch-embedded text context for cross-attention, reusable across steps.
    /// context: (B, L, text_dim) -> (B, L, D)
    pub fn embed_text(&self, context: &Tensor) -> Result<Tensor> {
        let x = gelu_tanh(&self.text_1.forward(&context.to_dtype(self.dtype)?)?)?;
        self.text_2.forward(&x)
    }

    /// The cross-attention context, reusable across steps: text (B, L, text_dim) and, for image-to-video
    /// models, CLIP image features (N, Li, image_dim) with one row per image (two rows, first and last
    /// frame, for first/last-frame models).
    pub fn embed_context(&self, text: &Tensor, image: Option<&Tensor>) -> Result<Context> {
        let image = match (&self.image_embedder, image) {
            (Some(e), Some(img)) => Some(e.forward(img, self.dtype)?),
            (None, None) => None,
            (Some(_), None) => {
                candle_core::bail!("this image-to-video transformer needs CLIP image features")
            }
            (None, Some(_)) => {
                candle_core::bail!(
                    "this transformer takes no image (it is not an image-to-video model)"
                )
            }
        };
        Ok(Context {
            text: self.embed_text(text)?,
            image,
            control: None,
            sample_fps: None,
            causal_block: None,
        })
    }

    /// One denoising prediction.
    /// x: (B, C, F, H, W) latents; t: (B,) timesteps, or (B, N) one per token (N = the patch grid's size, in
    /// frame, row, column order); context: (B, L, text_dim) text embeddings.
    /// Returns (B, C_out, F, H, W).
    pub fn forward(&self, x: &Tensor, t: &Tensor, context: &Tensor) -> Result<Tensor> {
        self.forward_with_context(x, t, &self.embed_context(context, None)?)
    }

    /// As [`Self::forward`], with the context already passed through [`Self::embed_context`].
    pub fn forward_with_context(
        &self,
        x: &Tensor,
        t: &Tensor,
        context: &Context,
    ) -> Result<Tensor> {
        let (b, _, f, h, w) = x.dims5()?;
        let [pt, ph, pw] = self.cfg.patch_size;
        if let Err(m) = self.check_latent_size(f, h, w) {
            candle_core::bail!("{m}");
        }
        let (gf, gh, gw) = (f / pt, h / ph, w / pw);
        let d = self.cfg.inner_dim();
        let dt = self.dtype;

        let hs0 = patchify(
            x.to_dtype(dt)?,
            self.cfg.patch_size,
            &self.patch_weight,
            &self.patch_bias,
        )?;
        let mut hs = hs0.clone();

        // Timestep conditioning (f32): one timestep per video (B,) or one per token (B, N), as Wan2.2's
        // image-to-video and diffusion forcing use.
        let n = gf * gh * gw;
        let per = match t.dims() {
            [tb] if *tb == b => 1,
            [tb, tn] if *tb == b && *tn == n => n,
            other => candle_core::bail!(
                "timesteps of shape {other:?}: expected ({b},) or ({b}, {n}) for {b} video(s) of {n} tokens"
            ),
        };
        let tf = if self.cfg.is_skyreels() {
            super::skyreels::timestep_features_f64(&t.flatten_all()?, self.cfg.freq_dim)?
        } else {
            timestep_features(&t.flatten_all()?, self.cfg.freq_dim)?
        };
        let temb = self
            .time_2
            .forward(&self.time_1.forward(&tf)?.silu()?)?
            .reshape((b, per, d))?; // f32
        let tproj = self
            .time_proj
            .forward(&temb.to_dtype(dt)?.silu()?)?
            .to_dtype(DType::F32)?
            .reshape((b, per, 6, d))?;
        // SkyReels-V2: the sampling rate shifts every modulation vector (not the output norm's).
        let tproj = match (&self.fps, context.sample_fps) {
            (Some(e), Some(fps)) => broadcast_add(&tproj, &e.offset(fps)?)?,
            (Some(_), None) => candle_core::bail!(
                "this SkyReels-V2 transformer embeds the sampling frame rate: the context needs sample_fps"
            ),
            (None, _) => tproj,
        };
        let block_frames = context.causal_block.unwrap_or(self.cfg.num_frame_per_block);
        let causal = if block_frames > 1 {
            if !gf.is_multiple_of(block_frames) {
                candle_core::bail!(
                    "{gf} latent frames are not whole causal blocks of {block_frames} frames: use a frame count \
                     whose latent frames are a multiple of {block_frames}"
                );
            }
            Some(block_frames * gh * gw)
        } else {
            None
        };

        let rope = rope_tables(self.cfg.attention_head_dim, (gf, gh, gw), x.device())?;
        let hints = match (&self.vace, &context.control) {
            (Some(v), Some(c)) => Some(v.hints(&hs0, c, context, &tproj, &rope)?),
            (None, None) => None,
            (Some(_), None) => candle_core::bail!("this VACE transformer needs control latents"),
            (None, Some(_)) => {
                candle_core::bail!(
                    "this transformer takes no control latents (it is not a VACE model)"
                )
            }
        };
        for (i, block) in self.blocks.iter().enumerate() {
            hs = block.forward(&hs, context, &tproj, &rope, causal)?;
            if let (Some(v), Some(hints)) = (&self.vace, &hints) {
                if let Some(hint) = v.hint_after(i, hints) {
                    hs = (hs + hint)?;
                }
            }
        }

        let m = broadcast_add(&self.scale_shift_table.unsqueeze(0)?, &temb.unsqueeze(2)?)?; // (B, S', 2, D)
        let (shift, scale) = (
            m.narrow(2, 0, 1)?.squeeze(2)?,
            m.narrow(2, 1, 1)?.squeeze(2)?,
        );
        let hs = norm_affine(&hs, &(scale + 1.0)?, &shift, self.cfg.eps, dt)?;
        let out = self.proj_out.forward(&hs)?; // (B, N, pt*ph*pw*Cout)
        let co = self.cfg.out_channels;
        // Un-patchify: (B, gf, gh, gw, pt, ph, pw, Co) -> (B, Co, gf, pt, gh, ph, gw, pw)
        out.reshape(&[b, gf, gh, gw, pt, ph, pw, co][..])?
            .permute([0, 7, 1, 4, 2, 5, 3, 6])?
            .reshape((b, co, f, h, w))
    }
}
