//! The flags that name weights beside `--model`: LoRA adapters and single-file components (ComfyUI's
//! repackaged files, GGUF transformers), and how they run (quantization, the VAE's dtype and tiling). Shared
//! by `generate`, `connect`, `film` and `serve`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use sorrel_film::{hash_ends, hex};
use sorrel_pipeline::{LoadOptions, LoraSpec};

/// `--lora`, `--transformer`, `--text-encoder`, `--vae`, `--image-encoder`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct WeightArgs {
    /// A LoRA adapter (safetensors: diffusers/PEFT, kohya/musubi or original Wan keys as ComfyUI uses)
    /// merged into the model at load, FILE or FILE:SCALE (scale 1 by default); repeatable. For a 4-step
    /// distillation LoRA pass the settings it was made for, e.g. --steps 4 --guidance 1 (see README).
    #[arg(long, value_name = "FILE[:SCALE]")]
    pub lora: Vec<LoraSpec>,
    /// The transformer's weights from this file instead of the model folder's: a GGUF file (Q8_0, Q4_0, Q4_K,
    /// ... as ComfyUI-GGUF ships; its matrices stay quantized in memory) or a single safetensors file, with
    /// original or diffusers names. Its sizes come from its tensors; the folder's text encoder and VAE are used.
    #[arg(long, value_name = "FILE")]
    pub transformer: Option<PathBuf>,
    /// The text encoder's weights from this safetensors file instead of the folder's (ComfyUI's
    /// `umt5_xxl_fp8_e4m3fn_scaled.safetensors` and other single files; fp8 is expanded to the compute dtype).
    #[arg(long, value_name = "FILE")]
    pub text_encoder: Option<PathBuf>,
    /// The VAE's weights from this safetensors file instead of the folder's (ComfyUI's `wan_2.1_vae.safetensors`).
    #[arg(long, value_name = "FILE")]
    pub vae: Option<PathBuf>,
    /// The image encoder's (CLIP vision) weights from this safetensors file instead of the folder's, for
    /// image-to-video models (ComfyUI's `clip_vision_h.safetensors`).
    #[arg(long, value_name = "FILE")]
    pub image_encoder: Option<PathBuf>,
    /// Quantize the transformer's matrices as they load: q8_0 (about 0.27x fp32's memory, closest to the
    /// original), q6_k, q5_k, q5_0, q5_1, q4_k, q4_0, q4_1. Each matrix is expanded for its own product.
    #[arg(long, value_name = "TYPE", value_parser = parse_quant)]
    pub quant: Option<candle_core::quantized::GgmlDType>,
    /// The VAE's weights and activations: f32 (default) or bf16. On CPUs with AVX512-BF16, bf16 decodes
    /// Wan2.1's VAE about 2.3x faster in about half the memory, as close to f32 as diffusers' own bf16 VAE
    /// (about 53 dB PSNR; docs/benchmarks.md).
    #[arg(long, value_name = "DTYPE", value_parser = parse_vae_dtype)]
    pub vae_dtype: Option<candle_core::DType>,
    /// Decode in 256-pixel tiles every 192 pixels, blended (diffusers' enable_tiling): auto (default: only
    /// when the whole-frame decode would not fit in memory), on, or off. Tiles bound the decode's memory at
    /// any size and change the video slightly near their seams.
    #[arg(long, value_name = "WHEN")]
    pub vae_tiling: Option<sorrel_pipeline::VaeTiling>,
}

fn parse_vae_dtype(s: &str) -> std::result::Result<candle_core::DType, String> {
    match s {
        "f32" | "fp32" | "float32" => Ok(candle_core::DType::F32),
        "bf16" | "bfloat16" => Ok(candle_core::DType::BF16),
        other => Err(format!("`{other}` is not a VAE dtype: use f32 or bf16")),
    }
}

fn parse_quant(s: &str) -> std::result::Result<candle_core::quantized::GgmlDType, String> {
    sorrel_core::gguf::parse_quant(s).map_err(|e| e.to_string())
}

impl WeightArgs {
    /// Sets these weights on `opts`.
    pub fn apply(&self, opts: LoadOptions) -> LoadOptions {
        LoadOptions {
            loras: self.lora.clone(),
            transformer: self.transformer.clone(),
            text_encoder: self.text_encoder.clone(),
            vae: self.vae.clone(),
            image_encoder: self.image_encoder.clone(),
            quant: self.quant,
            vae_dtype: self.vae_dtype.unwrap_or(opts.vae_dtype),
            vae_tiling: self.vae_tiling.unwrap_or(opts.vae_tiling),
            ..opts
        }
    }

    fn files(&self) -> impl Iterator<Item = (&'static str, &PathBuf)> {
        [
            ("transformer", &self.transformer),
            ("text encoder", &self.text_encoder),
            ("VAE", &self.vae),
            ("image encoder", &self.image_encoder),
        ]
        .into_iter()
        .filter_map(|(what, p)| p.as_ref().map(|p| (what, p)))
    }

    /// The model's name as the content credentials record it (see [`LoadOptions::describe`]).
    pub fn describe(&self, model: String) -> String {
        self.apply(LoadOptions::default()).describe(model)
    }

    /// An identity of these weights for caches (`film`'s shots): each replaced component's length with its
    /// first and last MiB, each adapter's bytes and scale. Empty when there are none, so caches made
    /// without them stay valid.
    pub fn fingerprint(&self) -> Result<String> {
        let mut out = String::new();
        for (what, p) in self.files() {
            let mut h = Sha256::new();
            h.update(what.as_bytes());
            hash_ends(&mut h, p)?;
            out.push_str(&hex(&h.finalize()));
        }
        if let Some(q) = self.quant {
            out.push_str(&format!("quant-{q:?}"));
        }
        if let Some(d) = self.vae_dtype.filter(|&d| d != candle_core::DType::F32) {
            out.push_str(&format!("vae-{d:?}"));
        }
        // Tiling on changes every large frame; auto only where memory is short, which a cache cannot see.
        if self.vae_tiling == Some(sorrel_pipeline::VaeTiling::On) {
            out.push_str("vae-tiled");
        }
        for l in &self.lora {
            let bytes = std::fs::read(&l.path)
                .with_context(|| format!("cannot read the LoRA {}", l.path.display()))?;
            let mut h = Sha256::new();
            h.update(&bytes);
            h.update(l.scale.to_le_bytes());
            out.push_str(&hex(&h.finalize()));
        }
        Ok(out)
    }
}
