//! Whether a generation fits in memory, checked before it starts. A request too large for the machine is
//! refused with a message that names the sizes and what to change. Without the check, the process dies
//! halfway through: Rust aborts on a failed allocation, and Linux's out-of-memory killer sends SIGKILL.
//!
//! The estimate counts the working memory beyond the loaded weights, at the two stages that dominate it:
//! - one transformer block over the window's tokens (activations are freed block by block);
//! - one piece of the VAE decode at full resolution (latent frames stream through the decoder).
//!
//! Both are sized from the configs, with constants measured by `sorrel-models/examples/memory_probe.rs`
//! (numbers in `docs/benchmarks.md`).

use sorrel_core::attention::SCORE_BUDGET;
use sorrel_core::{Error, Result};

use crate::denoise::BATCHED_GUIDANCE_TOKENS;
use crate::loader::{VaeTiling, WanPipeline};
use crate::request::{Conditioning, GenerateRequest};
use sorrel_models::wan::config::WanTransformerConfig;
use sorrel_models::wan::vae::{Tiling, VaeConfig};

/// Live tensors of one transformer block's self-attention on the unfused path (f16, or bf16 without
/// AVX512-BF16), in units of (batch x tokens x width) f32: the input, its normalised and modulated copy, q, k
/// and v, rotated q and k, head-major copies, the blocks of the attention output and their concatenation,
/// the projection. Fitted to `memory_probe transformer` on Wan2.1-1.3B's width at 7,800 and 32,760 tokens
/// before attention was fused (17.8, rounded up): see `docs/benchmarks.md`.
const ATTENTION_TENSORS: u64 = 18;

/// The fused path's (tokens x width) tensors and feed-forward chunks (`FFN_ROWS` x ffn_dim), in the compute
/// dtype: `memory_probe transformer` on Wan2.1-1.3B (f32 at 7,800 and 32,760 tokens and 2,048 x 2; bf16 at
/// 7,800 and 32,760) fits 10.1 and 1.5 (f32) and 9.3 and 2.6 (bf16); these cover every measurement within
/// 1.35x (test below).
const FUSED_TENSORS: f64 = 11.0;
const FFN_CHUNK_TENSORS: f64 = 2.5;

/// Live full-resolution tensors in one piece of a VAE decode, in units of one (4 frames x height x width x
/// the decoder's first-level channels) f32 tensor. `memory_probe vae` on the Wan2.1 VAE measured 9.9 to 11.9
/// from 832x480 down to 128x128 since the decoder's last levels run a frame at a time (18.4 to 21.3 before):
/// the largest, rounded up.
const VAE_TENSORS: f64 = 12.0;
/// The same for a bf16 VAE, in units of the bf16 tensor: `memory_probe vae W H bf16` measured 9.8 to 12.6 from
/// 832x480 down to 128x128 (the f32 output frames and fixed buffers weigh more beside halved activations).
const VAE_TENSORS_BF16: f64 = 13.0;

/// What a generation needs beyond the loaded weights, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// The transformer's tokens per forward (of the first window, for a video made window by window).
    pub tokens: usize,
    /// One transformer block's activations over those tokens.
    pub transformer: u64,
    /// One piece of the VAE decode.
    pub vae: u64,
    /// Decoded frames held at once: one window's (the whole video's unless it is made window by window),
    /// twice, and any clips given to continue.
    pub frames: u64,
    /// What the decode would need in tiles, where `--vae-tiling off` keeps it whole (for the advice).
    pub vae_tiled: Option<u64>,
}

impl Need {
    /// The most needed at once: the larger stage, with the frames made so far.
    pub fn peak(&self) -> u64 {
        self.transformer.max(self.vae) + self.frames
    }

    /// An error if `available` bytes cannot hold it, naming the stages' sizes and what to change.
    pub fn check(&self, available: u64, req: &GenerateRequest) -> Result<()> {
        if self.peak() <= available {
            return Ok(());
        }
        let gb = |b: u64| b as f64 / 1e9;
        let tiles_fit = self
            .vae_tiled
            .is_some_and(|t| t.max(self.transformer) + self.frames <= available);
        let stage = if self.vae >= self.transformer && tiles_fit {
            "most of it to decode the frames; in tiles it fits: --vae-tiling auto or on".to_string()
        } else if self.vae >= self.transformer {
            "most of it to decode the frames".to_string()
        } else {
            format!("most of it for {} tokens in the transformer", self.tokens)
        };
        Err(Error::invalid(format!(
            "a {}x{} video of {} frames needs about {:.1} GB of memory beyond the loaded model ({stage}), and \
             {:.1} GB is available for it: ask for a smaller size or fewer frames, or free memory \
             (SORREL_MEMORY_LIMIT sets what counts as available)",
            req.width,
            req.height,
            req.frames,
            gb(self.peak()),
            gb(available)
        )))
    }
}

impl WanPipeline {
    /// What generating `req` (a request already validated) needs beyond the loaded weights.
    pub fn memory_need(&self, req: &GenerateRequest) -> Result<Need> {
        let window = req.window_latent_frames(&self.info)?;
        let (_, h, w) = req.latent_size(self.info.compression);
        let [pt, ph, pw] = self.info.patch;
        let tokens = (window + req.reference_count()).div_ceil(pt) * (h / ph) * (w / pw);
        let guided = req.guidance.max(req.guidance_2.unwrap_or(0.0)) > 1.0;
        let batch = if guided && tokens <= BATCHED_GUIDANCE_TOKENS {
            2
        } else {
            1
        };
        let transformer = transformer_block(
            &self.transformer_config,
            self.transformer()?.dtype(),
            tokens,
            batch,
            self.info.defaults.max_sequence_length,
        );
        let given = match &req.conditioning {
            Conditioning::Continue { before, after } => before.len() + after.len(),
            _ => 0,
        };
        // The decoded frames of one window (the whole video unless it is made window by window: a
        // window's frames go to the output before the next is made), and their copy as pictures for the
        // encoder; clips given to continue are held whole.
        let tc = self.info.compression.1;
        let decoded = ((window.max(1) - 1) * tc + 1).min(req.frames);
        let picture = (req.height * req.width * 3 * 4) as u64;
        let frames = (2 * decoded + given) as u64 * picture;
        let dtype = self.vae.dtype();
        let whole = vae_piece(&self.vae_config, dtype, req.width, req.height);
        let tiling = Tiling::default();
        // Diffusion forcing decodes as it goes (one cache for the whole frame): never tiled.
        let (vae, vae_tiled) =
            if self.info.diffusion_forcing.is_some() || !tiling.cuts(req.width, req.height) {
                (whole, None)
            } else {
                let tiled = vae_tiled(
                    &self.vae_config,
                    dtype,
                    &tiling,
                    req.width,
                    req.height,
                    decoded,
                );
                match self.vae_tiling {
                    VaeTiling::Off => (whole, Some(tiled)),
                    VaeTiling::On => (tiled, None),
                    VaeTiling::Auto => (whole.min(tiled), None),
                }
            };
        Ok(Need {
            tokens,
            transformer,
            vae,
            frames,
            vae_tiled,
        })
    }

    /// Refuses `req` if it does not fit in `available` bytes (`None`: [`available_on`] the pipeline's device
    /// now, the GPU's free memory on a GPU; `Ok` where that cannot be read).
    pub fn check_memory(&self, req: &GenerateRequest, available: Option<u64>) -> Result<()> {
        match available.map_or_else(|| available_on(&self.device), |b| Ok(Some(b)))? {
            Some(bytes) => self.memory_need(req)?.check(bytes, req).map_err(|e| {
                match sorrel_core::device::gpu_memory(&self.device) {
                    Some((_, total)) => Error::invalid(format!(
                        "{e}; this is the GPU's memory ({} in all; --device cpu uses the machine's)",
                        sorrel_core::device::gib(total)
                    )),
                    None => e,
                }
            }),
            None => Ok(()),
        }
    }
}

/// One transformer block's working memory over `tokens` tokens, `batch` at once (2 with batched
/// guidance), against `text` tokens of prompt, with weights (and compute) in `dtype`.
pub fn transformer_block(
    cfg: &WanTransformerConfig,
    dtype: candle_core::DType,
    tokens: usize,
    batch: u64,
    text: usize,
) -> u64 {
    let width = (cfg.num_attention_heads * cfg.attention_head_dim) as u64;
    let ffn_dim = cfg.ffn_dim as u64;
    let rows = batch * tokens as u64;
    if sorrel_core::attention::fused_on_cpu(dtype) {
        // f32, and bf16 where the CPU multiplies it natively: attention holds no scores (flash attention)
        // and the feed-forward takes `FFN_ROWS` tokens at a time, so the block holds FUSED_TENSORS (tokens x
        // width) tensors and the hidden activations of one chunk, in the compute dtype.
        let bytes = if dtype == candle_core::DType::F32 {
            4
        } else {
            2
        };
        let chunk = rows.min(sorrel_models::wan::transformer::FFN_ROWS as u64);
        return ((FUSED_TENSORS * (rows * width) as f64) as u64
            + (FFN_CHUNK_TENSORS * (chunk * ffn_dim) as f64) as u64)
            * bytes;
    }
    // Otherwise (f16, or bf16 without AVX512-BF16) a block computes in f32 (products are widened per layer),
    // so activations count 4 bytes each, and the block also holds its weights widened.
    let widened = (8 * width * width + 2 * width * ffn_dim) * 4;
    let heads = cfg.num_attention_heads as u64;
    // Scores and their softmax, one block of queries at a time (at least one row of keys).
    let scores =
        |keys: u64| 2 * (rows * heads * keys).min((SCORE_BUDGET as u64).max(batch * heads * keys));
    let attention =
        ATTENTION_TENSORS * rows * width + scores(tokens as u64).max(scores(text as u64));
    let ffn = 3 * rows * width + 2 * rows * ffn_dim;
    attention.max(ffn) * 4 + widened
}

/// One piece of a VAE decode to `width` x `height` frames (four frames at a time, at full resolution), with
/// activations in `dtype` (f32, or bf16 at 2 bytes).
pub fn vae_piece(cfg: &VaeConfig, dtype: candle_core::DType, width: usize, height: usize) -> u64 {
    let patch = cfg.patch_size.unwrap_or(1);
    let channels = cfg.decoder_base_dim.unwrap_or(cfg.base_dim) * cfg.dim_mult[0];
    let piece = 4 * (height / patch) * (width / patch) * channels * dtype.size_in_bytes();
    let tensors = if dtype == candle_core::DType::F32 {
        VAE_TENSORS
    } else {
        VAE_TENSORS_BF16
    };
    (tensors * piece as f64) as u64
}

/// A tiled decode ([`Tiling`]) of `frames` frames of `width` x `height`: one tile's decode, and every decoded
/// tile kept (f32) until they are blended, as diffusers keeps them.
pub fn vae_tiled(
    cfg: &VaeConfig,
    dtype: candle_core::DType,
    tiling: &Tiling,
    width: usize,
    height: usize,
    frames: usize,
) -> u64 {
    let (tile_h, tile_w) = (tiling.tile.0.min(height), tiling.tile.1.min(width));
    let (rows, cols) = tiling.grid(cfg, width, height);
    let tiles = (rows * cols * tile_h * tile_w * 3 * 4 * frames) as u64;
    vae_piece(cfg, dtype, tile_w, tile_h) + tiles
}

/// Bytes this process may still allocate: `SORREL_MEMORY_LIMIT` if set (`8G`, `512M`, or bytes), else the
/// smaller of the kernel's `MemAvailable` and what the cgroup (a container's limit) leaves. `None` where
/// neither can be read; an error for a `SORREL_MEMORY_LIMIT` that is not a size.
pub fn available() -> Result<Option<u64>> {
    if let Ok(limit) = std::env::var("SORREL_MEMORY_LIMIT") {
        return parse_limit("SORREL_MEMORY_LIMIT=", &limit).map(Some);
    }
    // Memory this process freed but kept for reuse is available to it: hand it back first, so it counts.
    sorrel_core::threads::release_free_memory();
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let cgroup = cgroup_room();
    Ok(match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// Bytes the work on `device` may still allocate: [`available`] on the CPU; on a GPU, its free memory (the
/// working tensors live there, the loaded weights already count against it), or `SORREL_MEMORY_LIMIT` if set.
pub fn available_on(device: &candle_core::Device) -> Result<Option<u64>> {
    match sorrel_core::device::gpu_memory(device) {
        Some((free, _)) if std::env::var_os("SORREL_MEMORY_LIMIT").is_none() => Ok(Some(free)),
        _ => available(),
    }
}

/// What a cgroup v2 memory limit leaves (`memory.max` less `memory.current`), where there is one.
fn cgroup_room() -> Option<u64> {
    let read = |name: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{name}")).ok();
    let max: u64 = read("memory.max")?.trim().parse().ok()?; // "max" (no limit) does not parse
    let current: u64 = read("memory.current")?.trim().parse().ok()?;
    Some(max.saturating_sub(current))
}

/// A memory limit given as `what` followed by `s` (a flag or an environment variable), in bytes, or an error
/// that names it and says what a size looks like.
pub fn parse_limit(what: &str, s: &str) -> Result<u64> {
    parse_bytes(s).ok_or_else(|| {
        Error::invalid(format!(
            "{what}{s} is not a size: use bytes or a number with G, M or K, such as 8G"
        ))
    })
}

/// `8G`, `512M`, `64K` (powers of 1024) or a plain number of bytes.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, scale) = match s.char_indices().last()? {
        (i, 'G' | 'g') => (&s[..i], 1u64 << 30),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'K' | 'k') => (&s[..i], 1 << 10),
        _ => (s, 1),
    };
    let value: f64 = digits.trim().parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some((value * scale as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    /// Wan2.1-1.3B's transformer.
    fn wan13b() -> WanTransformerConfig {
        serde_json::from_value(serde_json::json!({
            "num_attention_heads": 12, "attention_head_dim": 128, "ffn_dim": 8960, "num_layers": 30,
            "text_dim": 4096, "in_channels": 16, "out_channels": 16, "freq_dim": 256, "patch_size": [1, 2, 2],
        }))
        .unwrap()
    }

    /// The estimates cover what `memory_probe` measured on full-size Wan2.1 components (2026-12-06, working
    /// memory in bytes; the transformer's after attention was fused) without asking for much more: at most
    /// 1.35x.
    #[test]
    fn estimates_cover_the_measured_working_memory() {
        let gb = 1e9;
        let cfg = wan13b();
        // (tokens, batch, dtype, measured): f32 and bf16 with flash attention and the chunked feed-forward;
        // the bf16 rows where the CPU has AVX512-BF16, which is what they measured.
        let bf16_fused = sorrel_core::attention::fused_on_cpu(DType::BF16);
        for (tokens, batch, dtype, measured) in [
            (7_800, 1, DType::F32, 0.700 * gb),
            (32_760, 1, DType::F32, 2.247 * gb),
            (2_048, 2, DType::F32, 0.596 * gb),
            (7_800, 1, DType::BF16, 0.413 * gb),
            (32_760, 1, DType::BF16, 1.126 * gb),
        ] {
            if dtype == DType::BF16 && !bf16_fused {
                continue;
            }
            let est = transformer_block(&cfg, dtype, tokens, batch, 512) as f64;
            assert!(
                (measured..=1.35 * measured).contains(&est),
                "transformer at {tokens} x {batch} ({dtype:?}): estimate {:.3} GB, measured {:.3} GB",
                est / gb,
                measured / gb
            );
        }
        let vae = VaeConfig::default();
        for (w, h, dtype, measured) in [
            (128, 128, DType::F32, 0.299 * gb),
            (256, 256, DType::F32, 1.093 * gb),
            (512, 256, DType::F32, 2.108 * gb),
            (832, 480, DType::F32, 6.050 * gb),
            // 2026-12-07, the bf16 VAE (AVX512-BF16 convolutions).
            (128, 128, DType::BF16, 0.159 * gb),
            (256, 256, DType::BF16, 0.582 * gb),
            (512, 256, DType::BF16, 1.142 * gb),
            (832, 480, DType::BF16, 2.998 * gb),
        ] {
            let est = vae_piece(&vae, dtype, w, h) as f64;
            assert!(
                (measured..=1.35 * measured).contains(&est),
                "VAE at {w}x{h} ({dtype:?}): estimate {:.3} GB, measured {:.3} GB",
                est / gb,
                measured / gb
            );
        }
    }

    /// A tiled decode needs one tile's working memory at any frame size, plus the decoded tiles: at 1080p with
    /// 81 frames a fraction of the whole-frame decode.
    #[test]
    fn tiles_bound_the_decode_at_any_size() {
        let (vae, t) = (VaeConfig::default(), Tiling::default());
        let whole = vae_piece(&vae, DType::F32, 1920, 1080);
        let tiled = vae_tiled(&vae, DType::F32, &t, 1920, 1080, 81);
        assert!(5 * tiled < whole, "tiled {tiled}, whole {whole}");
        assert_eq!(
            vae_tiled(&vae, DType::F32, &t, 1920, 1080, 0),
            vae_tiled(&vae, DType::F32, &t, 3840, 2160, 0)
        );
        assert_eq!(t.grid(&vae, 1920, 1080), (6, 10));
        assert!(!t.cuts(256, 256) && t.cuts(264, 256));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("8G"), Some(8 << 30));
        assert_eq!(parse_bytes("1.5g"), Some(3 << 29));
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("-1G"), None);
        assert_eq!(parse_bytes(""), None);
    }
}
