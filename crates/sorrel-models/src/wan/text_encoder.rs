//! The UMT5 encoder Wan2.1 conditions on (transformers' `UMT5EncoderModel`, umt5-xxl in the release), and
//! the prompt-embedding step of diffusers' `WanPipeline`.
//!
//! UMT5 is T5 v1.1 with one change that matters here: every layer owns a relative-attention-bias table
//! (T5 shares layer 0's). T5 conventions kept: RMS layer norm without mean or bias, computed in fp32; no
//! `1/sqrt(d)` scaling of attention scores; gated-GELU feed-forward.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, Linear, VarBuilder};
use serde::Deserialize;
use sorrel_core::ops::{broadcast_add, broadcast_mul, Dense};

fn default_vocab_size() -> usize {
    250112
}
fn default_d_model() -> usize {
    512
}
fn default_d_kv() -> usize {
    64
}
fn default_d_ff() -> usize {
    1024
}
fn default_num_layers() -> usize {
    8
}
fn default_num_heads() -> usize {
    6
}
fn default_num_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_eps() -> f64 {
    1e-6
}
fn default_feed_forward_proj() -> String {
    "gated-gelu".into()
}

/// The fields of transformers' `UMT5Config` (`text_encoder/config.json`) that the encoder uses. Missing
/// fields take transformers' defaults; unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Umt5Config {
    /// Rows of the token-embedding table.
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    /// Hidden size.
    #[serde(default = "default_d_model")]
    pub d_model: usize,
    /// Size of one attention head.
    #[serde(default = "default_d_kv")]
    pub d_kv: usize,
    /// Attention heads.
    #[serde(default = "default_num_heads")]
    pub num_heads: usize,
    /// Inner size of the feed-forward layer.
    #[serde(default = "default_d_ff")]
    pub d_ff: usize,
    /// Encoder blocks.
    #[serde(default = "default_num_layers")]
    pub num_layers: usize,
    /// Buckets of the relative-position bias (half per direction in the bidirectional encoder).
    #[serde(default = "default_num_buckets")]
    pub relative_attention_num_buckets: usize,
    /// Distance from which all relative positions share the last bucket.
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    /// `"gated-gelu"` (UMT5), or `"{act}"` / `"gated-{act}"` with act in gelu, gelu_new, gelu_pytorch_tanh,
    /// relu, silu, swish.
    #[serde(default = "default_feed_forward_proj")]
    pub feed_forward_proj: String,
    /// Epsilon of the RMS layer norms.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// Informational only: transformers recomputes it from `feed_forward_proj`, and so does this crate.
    #[serde(default)]
    pub dense_act_fn: Option<String>,
}

/// Feed-forward activations, named as in transformers' `ACT2FN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: exact (erf) GELU.
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: tanh approximation.
    GeluTanh,
    /// `relu`.
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl Activation {
    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluTanh => sorrel_core::ops::gelu_tanh(x),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
        }
    }
}

impl Umt5Config {
    /// Reads a transformers `config.json`; errors name the file.
    pub fn from_file(path: impl AsRef<Path>) -> sorrel_core::Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| sorrel_core::Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| {
            sorrel_core::Error::model(format!(
                "{} is not a valid UMT5 text-encoder config ({e}); expected transformers' UMT5Config JSON",
                path.display()
            ))
        })?;
        cfg.validate()
            .map_err(|why| sorrel_core::Error::model(format!("{}: {why}", path.display())))?;
        Ok(cfg)
    }

    /// `(gated, activation)` from `feed_forward_proj`, as `UMT5Config.__post_init__` derives them
    /// (`"gated-gelu"` means `gelu_new`, the tanh approximation).
    pub fn feed_forward(&self) -> Result<(bool, Activation), String> {
        let proj = self.feed_forward_proj.as_str();
        let (gated, act) = match proj.split_once('-') {
            Some(("gated", act)) => (true, act),
            None => (false, proj),
            Some(_) => {
                return Err(format!(
                    "feed_forward_proj {proj:?} is not of the form `gated-ACT` or `ACT`"
                ))
            }
        };
        let act = match (proj, act) {
            ("gated-gelu", _) => Activation::GeluTanh,
            (_, "gelu") => Activation::Gelu,
            (_, "gelu_new" | "gelu_pytorch_tanh") => Activation::GeluTanh,
            (_, "relu") => Activation::Relu,
            (_, "silu" | "swish") => Activation::Silu,
            (_, other) => {
                return Err(format!(
                "feed_forward_proj {proj:?} uses the activation {other:?}, which is not supported \
                     (supported: gelu, gelu_new, gelu_pytorch_tanh, relu, silu, swish)"
            ))
            }
        };
        Ok((gated, act))
    }

    /// Checks what the shapes alone cannot: the activation and the bucket layout.
    pub fn validate(&self) -> Result<(), String> {
        self.feed_forward()?;
        if self.relative_attention_num_buckets < 4 {
            return Err(format!(
                "relative_attention_num_buckets must be at least 4, got {}",
                self.relative_attention_num_buckets
            ));
        }
        Ok(())
    }
}

/// The ORIGINAL Wan2.1 release name (`models_t5_umt5-xxl-enc-bf16.pth`) of a transformers `UMT5EncoderModel`
/// weight name; names it does not know come back unchanged, so a lookup failure names them.
///
/// For `TensorSource::with_rename`: the model asks for transformers names and the file is searched for the
/// returned one. The inverse of `t5_key_to_original` in `tools/reference/make_fixtures.py`.
pub fn umt5_key_to_original(name: &str) -> String {
    match name {
        "shared.weight" | "encoder.embed_tokens.weight" => return "token_embedding.weight".into(),
        "encoder.final_layer_norm.weight" => return "norm.weight".into(),
        _ => {}
    }
    let mapped = name.strip_prefix("encoder.block.").and_then(|rest| {
        let (n, rest) = rest.split_once('.')?;
        n.parse::<usize>().ok()?;
        let tail = match rest {
            "layer.0.layer_norm.weight" => "norm1.weight",
            "layer.0.SelfAttention.q.weight" => "attn.q.weight",
            "layer.0.SelfAttention.k.weight" => "attn.k.weight",
            "layer.0.SelfAttention.v.weight" => "attn.v.weight",
            "layer.0.SelfAttention.o.weight" => "attn.o.weight",
            "layer.0.SelfAttention.relative_attention_bias.weight" => {
                "pos_embedding.embedding.weight"
            }
            "layer.1.layer_norm.weight" => "norm2.weight",
            "layer.1.DenseReluDense.wi_0.weight" => "ffn.gate.0.weight",
            "layer.1.DenseReluDense.wi_1.weight" => "ffn.fc1.weight",
            "layer.1.DenseReluDense.wo.weight" => "ffn.fc2.weight",
            _ => return None,
        };
        Some(format!("blocks.{n}.{tail}"))
    });
    mapped.unwrap_or_else(|| name.to_string())
}

/// T5's bidirectional relative-position bucket of `relative_position` (= key position - query position).
///
/// Half the buckets per direction; within a direction the first half are exact distances, the rest
/// logarithmic up to `max_distance`. The log ratio is computed in f32 like torch (its divisor is a Python
/// float cast to f32) and truncated; bucket edges at powers of two depend on that.
pub fn relative_position_bucket(
    relative_position: i64,
    num_buckets: usize,
    max_distance: usize,
) -> u32 {
    let half = (num_buckets / 2) as i64;
    let base = if relative_position > 0 { half } else { 0 };
    let n = relative_position.abs();
    let max_exact = half / 2;
    if n < max_exact {
        return (base + n) as u32;
    }
    let divisor = (max_distance as f64 / max_exact as f64).ln() as f32;
    let log_ratio = (n as f32 / max_exact as f32).ln() / divisor * (half - max_exact) as f32;
    (base + (max_exact + log_ratio as i64).min(half - 1)) as u32
}

/// `(L, L)` u32 bucket ids, row = query position, column = key position.
fn bucket_matrix(len: usize, cfg: &Umt5Config, device: &Device) -> candle_core::Result<Tensor> {
    let ids: Vec<u32> = (0..len as i64)
        .flat_map(|q| {
            (0..len as i64).map(move |k| {
                relative_position_bucket(
                    k - q,
                    cfg.relative_attention_num_buckets,
                    cfg.relative_attention_max_distance,
                )
            })
        })
        .collect();
    Tensor::from_vec(ids, (len, len), device)
}

/// The smallest finite value of `dtype`, which transformers puts where attention is masked.
fn dtype_min(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => -65504.0,
        DType::BF16 => -3.3895313892515355e38,
        DType::F64 => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// `a + b` with torch's type promotion for the one mix that occurs (an fp32 `wo` output in an fp16 model).
fn add_promoted(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if a.dtype() == b.dtype() {
        a + b
    } else {
        a.to_dtype(DType::F32)? + b.to_dtype(DType::F32)?
    }
}

/// transformers clamps fp16 hidden states after every sub-layer so that overflow does not turn into NaN.
fn clamp_fp16(h: Tensor) -> candle_core::Result<Tensor> {
    if h.dtype() != DType::F16 {
        return Ok(h);
    }
    let any_inf = h
        .to_dtype(DType::F32)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?
        .is_infinite();
    let limit = if any_inf { 65504.0 - 1000.0 } else { 65504.0 };
    h.clamp(-limit, limit)
}

/// T5's RMS norm: no mean subtraction, no bias, statistics in fp32, result in the weight's dtype.
#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(d: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(d, "weight")?,
            eps,
        })
    }

    /// x: (B, L, D)
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        let variance = x.sqr()?.mean_keepdim(D::Minus1)?;
        let x = broadcast_mul(&x, &(variance + self.eps)?.sqrt()?.recip()?)?;
        broadcast_mul(&x.to_dtype(self.weight.dtype())?, &self.weight)
    }
}

#[derive(Debug, Clone)]
struct SelfAttention {
    q: Dense,
    k: Dense,
    v: Dense,
    o: Dense,
    relative_attention_bias: Embedding,
    num_heads: usize,
    d_kv: usize,
}

impl SelfAttention {
    fn new(cfg: &Umt5Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let inner = cfg.num_heads * cfg.d_kv;
        let linear = |i, o, name: &str| {
            vb.get((o, i), &format!("{name}.weight"))
                .map(|w| Dense::from(Linear::new(w, None)))
        };
        let table = vb.get(
            (cfg.relative_attention_num_buckets, cfg.num_heads),
            "relative_attention_bias.weight",
        )?;
        Ok(Self {
            q: linear(cfg.d_model, inner, "q")?,
            k: linear(cfg.d_model, inner, "k")?,
            v: linear(cfg.d_model, inner, "v")?,
            o: linear(inner, cfg.d_model, "o")?,
            relative_attention_bias: Embedding::new(table, cfg.num_heads),
            num_heads: cfg.num_heads,
            d_kv: cfg.d_kv,
        })
    }

    /// x: (B, L, D); buckets: (L, L) u32; mask: (B, 1, 1, L), 0 or the dtype's minimum.
    fn forward(&self, x: &Tensor, buckets: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let heads = |t: Tensor| {
            t.reshape((b, l, self.num_heads, self.d_kv))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = heads(self.q.forward(x)?)?;
        let k = heads(self.k.forward(x)?)?;
        let v = heads(self.v.forward(x)?)?;
        // (L, L, H) -> (1, H, L, L)
        let bias = self
            .relative_attention_bias
            .forward(buckets)?
            .permute((2, 0, 1))?
            .unsqueeze(0)?;
        // Unscaled scores: T5 folds 1/sqrt(d_kv) into the initialisation of q.
        let scores = broadcast_add(&broadcast_add(&q.matmul(&k.t()?)?, &bias)?, mask)?;
        let probs = sorrel_core::ops::softmax_last_dim(&scores)?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, l, self.num_heads * self.d_kv))?;
        self.o.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct FeedForward {
    /// `wi_0` (gated) or `wi` (plain).
    wi_0: Dense,
    /// `wi_1`, the linear branch of a gated layer.
    wi_1: Option<Dense>,
    wo: Dense,
    act: Activation,
}

impl FeedForward {
    fn new(cfg: &Umt5Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let (gated, act) = cfg.feed_forward().map_err(candle_core::Error::Msg)?;
        let w = |vb: &VarBuilder, o, i, name: &str| {
            vb.get((o, i), &format!("{name}.weight"))
                .map(|w| Dense::from(Linear::new(w, None)))
        };
        // transformers keeps `wo` in fp32 when a model is loaded in fp16 (`_keep_in_fp32_modules`).
        let wo_vb = if vb.dtype() == DType::F16 {
            vb.to_dtype(DType::F32)
        } else {
            vb.clone()
        };
        Ok(Self {
            wi_0: w(
                &vb,
                cfg.d_ff,
                cfg.d_model,
                if gated { "wi_0" } else { "wi" },
            )?,
            wi_1: if gated {
                Some(w(&vb, cfg.d_ff, cfg.d_model, "wi_1")?)
            } else {
                None
            },
            wo: w(&wo_vb, cfg.d_model, cfg.d_ff, "wo")?,
            act,
        })
    }

    /// x: (B, L, D)
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.act.apply(&self.wi_0.forward(x)?)?;
        if let Some(wi_1) = &self.wi_1 {
            h = (h * wi_1.forward(x)?)?;
        }
        self.wo
            .forward(&h.to_dtype(self.wo.dtype().unwrap_or(h.dtype()))?)
    }
}

#[derive(Debug, Clone)]
struct Block {
    norm1: RmsNorm,
    attn: SelfAttention,
    norm2: RmsNorm,
    ffn: FeedForward,
}

impl Block {
    fn new(cfg: &Umt5Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let eps = cfg.layer_norm_epsilon;
        Ok(Self {
            norm1: RmsNorm::new(cfg.d_model, eps, vb.pp("layer.0.layer_norm"))?,
            attn: SelfAttention::new(cfg, vb.pp("layer.0.SelfAttention"))?,
            norm2: RmsNorm::new(cfg.d_model, eps, vb.pp("layer.1.layer_norm"))?,
            ffn: FeedForward::new(cfg, vb.pp("layer.1.DenseReluDense"))?,
        })
    }

    fn forward(&self, h: &Tensor, buckets: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let h = clamp_fp16(add_promoted(
            h,
            &self.attn.forward(&self.norm1.forward(h)?, buckets, mask)?,
        )?)?;
        clamp_fp16(add_promoted(
            &h,
            &self.ffn.forward(&self.norm2.forward(&h)?)?,
        )?)
    }
}

/// transformers' `UMT5EncoderModel`, inference only.
#[derive(Debug, Clone)]
pub struct Umt5Encoder {
    embed_tokens: Embedding,
    blocks: Vec<Block>,
    final_layer_norm: RmsNorm,
    cfg: Umt5Config,
}

impl Umt5Encoder {
    /// Builds the encoder from transformers weight names (`shared.weight`, or `encoder.embed_tokens.weight`
    /// when a checkpoint stores only that; `encoder.block.N.layer...`; `encoder.final_layer_norm.weight`).
    /// Weights take `vb`'s dtype, except `wo` stays fp32 for fp16 as in transformers.
    pub fn new(cfg: &Umt5Config, vb: VarBuilder) -> candle_core::Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let embed_name = if vb.contains_tensor("shared.weight") {
            "shared.weight"
        } else {
            "encoder.embed_tokens.weight"
        };
        let embed_tokens = Embedding::new(
            vb.get((cfg.vocab_size, cfg.d_model), embed_name)?,
            cfg.d_model,
        );
        let enc = vb.pp("encoder");
        let blocks = (0..cfg.num_layers)
            .map(|i| Block::new(cfg, enc.pp(format!("block.{i}"))))
            .collect::<candle_core::Result<_>>()?;
        let final_layer_norm = RmsNorm::new(
            cfg.d_model,
            cfg.layer_norm_epsilon,
            enc.pp("final_layer_norm"),
        )?;
        Ok(Self {
            embed_tokens,
            blocks,
            final_layer_norm,
            cfg: cfg.clone(),
        })
    }

    /// The configuration the encoder was built with.
    pub fn config(&self) -> &Umt5Config {
        &self.cfg
    }

    /// `last_hidden_state`: (B, L, d_model) in the weights' dtype.
    ///
    /// input_ids: (B, L) u32 or i64. attention_mask: (B, L), any dtype; nonzero marks a real token. Padded
    /// keys are excluded from attention; padded queries are still computed (and are not zero).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        if attention_mask.dims() != [b, l] {
            candle_core::bail!(
                "attention_mask has shape {:?} but input_ids has {:?}; both must be (batch, length)",
                attention_mask.dims(),
                input_ids.dims()
            );
        }
        let device = input_ids.device();
        let mut h = self.embed_tokens.forward(input_ids)?;
        let dtype = h.dtype();
        let buckets = bucket_matrix(l, &self.cfg, device)?;
        let keep = attention_mask.ne(0u32)?.reshape((b, 1, 1, l))?;
        let zeros = Tensor::zeros((b, 1, 1, l), dtype, device)?;
        let masked =
            Tensor::full(dtype_min(dtype) as f32, (b, 1, 1, l), device)?.to_dtype(dtype)?;
        let mask = keep.where_cond(&zeros, &masked)?;
        for block in &self.blocks {
            h = block.forward(&h, &buckets, &mask)?;
        }
        self.final_layer_norm.forward(&h)
    }

    /// What `WanPipeline._get_t5_prompt_embeds` returns for one video per prompt: the encoder output with
    /// every row from the prompt's length on (length = number of nonzero mask entries, so the mask must be
    /// right-padded as the tokenizer makes it) set to zero. (B, L, d_model).
    pub fn prompt_embeds(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let hidden = self.forward(input_ids, attention_mask)?;
        let (b, l, d) = hidden.dims3()?;
        let device = hidden.device();
        let lengths = attention_mask
            .ne(0u32)?
            .to_dtype(DType::F32)?
            .sum_keepdim(1)?; // (B, 1)
        let positions = Tensor::arange(0u32, l as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((1, l))?;
        let keep = positions
            .broadcast_lt(&lengths)?
            .unsqueeze(2)?
            .broadcast_as((b, l, d))?;
        keep.where_cond(&hidden, &hidden.zeros_like()?)
    }
}
