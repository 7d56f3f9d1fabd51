//! `CLIPVisionModel` up to the penultimate layer, which is all image-to-video models read.
//!
//! Written here rather than taken from candle-transformers: its CLIP returns only the pooled output of the
//! last layer, and reading the penultimate layer also lets the last layer's weights go unloaded.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};
use sorrel_core::ops::{broadcast_add, dense, Dense};

use super::config::ClipVisionConfig;

fn layer_norm(dim: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    candle_nn::layer_norm(dim, eps, vb)
}

struct Layer {
    norm1: LayerNorm,
    q: Dense,
    k: Dense,
    v: Dense,
    out: Dense,
    norm2: LayerNorm,
    fc1: Dense,
    fc2: Dense,
    heads: usize,
    quick_gelu: bool,
}

impl Layer {
    fn new(cfg: &ClipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let a = vb.pp("self_attn");
        Ok(Self {
            norm1: layer_norm(d, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            q: dense(d, d, a.pp("q_proj"))?,
            k: dense(d, d, a.pp("k_proj"))?,
            v: dense(d, d, a.pp("v_proj"))?,
            out: dense(d, d, a.pp("out_proj"))?,
            norm2: layer_norm(d, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: dense(d, cfg.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: dense(cfg.intermediate_size, d, vb.pp("mlp.fc2"))?,
            heads: cfg.num_attention_heads,
            quick_gelu: cfg.hidden_act == "quick_gelu",
        })
    }

    /// x: (B, L, D) -> (B, L, D)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let hd = d / self.heads;
        let n = self.norm1.forward(x)?;
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, l, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q.forward(&n)?)?;
        let k = split(self.k.forward(&n)?)?;
        let v = split(self.v.forward(&n)?)?;
        let a = sorrel_core::attention::attention(&q, &k, &v)?
            .transpose(1, 2)?
            .reshape((b, l, d))?;
        let x = (x + self.out.forward(&a)?)?;
        let h = self.fc1.forward(&self.norm2.forward(&x)?)?;
        let h = if self.quick_gelu {
            (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?
        } else {
            h.gelu_erf()?
        };
        x + self.fc2.forward(&h)?
    }
}

/// The vision tower: patch embedding, class token, positions, pre-LayerNorm, then the layers but the last.
pub struct ClipVisionModel {
    cfg: ClipVisionConfig,
    /// (D, 3 * p * p): the patch conv as a matrix, since stride == kernel.
    patch_weight: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_norm: LayerNorm,
    layers: Vec<Layer>,
}

impl ClipVisionModel {
    /// Builds the tower from transformers' names, with or without the `vision_model.` prefix (transformers
    /// 4 saved it, 5 does not). The last layer is not loaded: its output is never read.
    pub fn new(cfg: &ClipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let vb = if vb.contains_tensor("vision_model.embeddings.class_embedding") {
            vb.pp("vision_model")
        } else {
            vb
        };
        let (d, p, c) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels);
        let e = vb.pp("embeddings");
        Ok(Self {
            cfg: cfg.clone(),
            patch_weight: e
                .get((d, c, p, p), "patch_embedding.weight")?
                .reshape((d, c * p * p))?,
            class_embedding: e.get(d, "class_embedding")?,
            position_embedding: e.get((cfg.tokens(), d), "position_embedding.weight")?,
            pre_norm: layer_norm(d, cfg.layer_norm_eps, vb.pp("pre_layrnorm"))?,
            layers: (0..cfg.num_hidden_layers - 1)
                .map(|i| Layer::new(cfg, vb.pp(format!("encoder.layers.{i}"))))
                .collect::<Result<_>>()?,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &ClipVisionConfig {
        &self.cfg
    }

    /// transformers' `hidden_states[-2]`: pixels (N, 3, S, S) as the processor makes them -> (N, tokens, D).
    pub fn penultimate_hidden_states(&self, pixels: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = pixels.dims4()?;
        let (s, p, d) = (
            self.cfg.image_size,
            self.cfg.patch_size,
            self.cfg.hidden_size,
        );
        if (h, w) != (s, s) || c != self.cfg.num_channels {
            candle_core::bail!(
                "the image encoder takes {}x{s}x{s} pixels, got {c}x{h}x{w}",
                self.cfg.num_channels
            );
        }
        let g = s / p;
        let dt = self.patch_weight.dtype();
        let patches = pixels
            .to_dtype(dt)?
            .reshape(&[n, c, g, p, g, p][..])?
            .permute([0, 2, 4, 1, 3, 5])?
            .reshape((n * g * g, c * p * p))?
            .matmul(&self.patch_weight.t()?)?
            .reshape((n, g * g, d))?;
        let class = self.class_embedding.reshape((1, 1, d))?.repeat((n, 1, 1))?;
        let x = broadcast_add(
            &Tensor::cat(&[class, patches], 1)?,
            &self.position_embedding.unsqueeze(0)?,
        )?;
        let mut x = self.pre_norm.forward(&x)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        x.to_dtype(DType::F32)
    }
}
