//! Loading a Wan2.1 text-to-video model from a diffusers folder (`model_index.json` + subfolders, as
//! Wan-AI/*-Diffusers ship) or from the original Wan2.1 release layout.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use serde_json::Value;
use sorrel_core::weights::Renamer;
use sorrel_core::{Error, LoraSet, LoraSpec, Result, TensorSource};

use crate::experts::{ExpertLoader, Experts};
use crate::modes::{Mode, ModelInfo};
use sorrel_models::clip::{ClipImageProcessorConfig, ClipVisionConfig, ClipVisionModel};
use sorrel_models::wan::config::WanTransformerConfig;
use sorrel_models::wan::convert;
use sorrel_models::wan::text_encoder::{umt5_key_to_original, Umt5Config, Umt5Encoder};
use sorrel_models::wan::tokenizer::WanTokenizer;
use sorrel_models::wan::transformer::WanTransformer3DModel;
use sorrel_models::wan::vae::{vae_key_from_original, AutoencoderKLWan, VaeConfig};

/// Which on-disk layout a model folder uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `model_index.json` with `tokenizer/`, `text_encoder/`, `transformer/`, `vae/`, `scheduler/`.
    Diffusers,
    /// The original release: `config.json`, `diffusion_pytorch_model*.safetensors`, `Wan2.1_VAE.pth`,
    /// `models_t5_umt5-xxl-enc-bf16.pth`, `google/umt5-xxl/tokenizer.json`.
    Original,
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Compute dtype of the transformer and text encoder (weights of any float dtype are converted).
    pub dtype: DType,
    /// Where to run.
    pub device: Device,
    /// LoRA adapters merged into the transformer's weights as they load (`--lora FILE[:SCALE]`).
    pub loras: Vec<LoraSpec>,
    /// The transformer's weights from this file instead of the folder's (`--transformer FILE`): a GGUF file
    /// (quantized matrices stay quantized) or a single safetensors file, with diffusers or original Wan names,
    /// optionally prefixed `model.diffusion_model.` as ComfyUI saves them. The folder's config still applies.
    pub transformer: Option<PathBuf>,
    /// The text encoder's weights from this safetensors file (`--text-encoder FILE`; transformers' or the
    /// original release's names; fp32, fp16, bf16 or ComfyUI's "scaled" fp8-e4m3).
    pub text_encoder: Option<PathBuf>,
    /// The VAE's weights from this safetensors file (`--vae FILE`; the original release's or diffusers' names).
    pub vae: Option<PathBuf>,
    /// The image encoder's (CLIP vision) weights from this safetensors file (`--image-encoder FILE`, such as
    /// ComfyUI's `clip_vision_h.safetensors`), for image-to-video models.
    pub image_encoder: Option<PathBuf>,
    /// Quantize the transformer's linear layers to this type as they load (`--quant q8_0`); matrices a GGUF
    /// file already stores quantized stay as they are.
    pub quant: Option<candle_core::quantized::GgmlDType>,
    /// The VAE's weights and activations (`--vae-dtype`): f32 (the default, as diffusers' Wan pipelines keep
    /// the VAE) or bf16 (the AVX512-BF16 convolutions: faster, half the memory, diffusers' bf16 accuracy).
    pub vae_dtype: DType,
    /// Whether the VAE decodes in spatial tiles (`--vae-tiling`, diffusers' `enable_tiling`).
    pub vae_tiling: VaeTiling,
}

/// When the VAE decodes in spatial tiles ([`sorrel_models::wan::vae::Tiling`]: diffusers' 256-pixel tiles every
/// 192 pixels, blended). Tiling bounds the decode's memory whatever the frame size, and changes the video
/// slightly near the seams, as diffusers' tiled decode does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VaeTiling {
    /// Only when the whole-frame decode would not fit in the memory available (the default).
    #[default]
    Auto,
    /// Always, for frames larger than a tile.
    On,
    /// Never (a request too large for memory is refused).
    Off,
}

impl std::str::FromStr for VaeTiling {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "`{other}` is not a VAE tiling: use auto, on or off"
            )),
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            loras: Vec::new(),
            transformer: None,
            text_encoder: None,
            vae: None,
            image_encoder: None,
            quant: None,
            vae_dtype: DType::F32,
            vae_tiling: VaeTiling::Auto,
        }
    }
}

impl LoadOptions {
    /// A model's name as content credentials record it: each component replaced by a file (file name only,
    /// no local paths in a published file) and each adapter with its scale.
    pub fn describe(&self, model: String) -> String {
        let name = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string())
        };
        let files = [
            ("transformer", &self.transformer),
            ("text encoder", &self.text_encoder),
            ("VAE", &self.vae),
            ("image encoder", &self.image_encoder),
        ];
        let with_files = files.iter().fold(model, |acc, (what, p)| match p {
            Some(p) => format!("{acc} with {what} {}", name(p)),
            None => acc,
        });
        let with_loras = self
            .loras
            .iter()
            .fold(with_files, |acc, l| format!("{acc} + LoRA {}", l.label()));
        let quantized = match self.quant {
            Some(q) => format!("{with_loras}, quantized to {q:?}"),
            None => with_loras,
        };
        match self.vae_dtype {
            DType::F32 => quantized,
            d => format!("{quantized}, VAE in {d:?}"),
        }
    }
}

/// The VAE's dtype from `opts`: f32 or bf16 (f16 has no convolution kernels on the CPU here).
fn vae_dtype(opts: &LoadOptions) -> Result<DType> {
    match opts.vae_dtype {
        DType::F32 | DType::BF16 => Ok(opts.vae_dtype),
        d => Err(Error::invalid(format!(
            "the VAE cannot run in {d:?}: use f32 or bf16"
        ))),
    }
}

/// One naming a single weights file may use: a tensor every such file has, and the mapping from the names
/// the model asks for to that naming.
struct Naming {
    marker: &'static str,
    rename: Renamer,
}

/// A single weights file (ComfyUI's repackaged files, `--transformer/--text-encoder/--vae`) with the renaming
/// its keys need: the first naming whose marker tensor it holds, under whatever prefix the file puts before
/// it (`model.diffusion_model.`, `first_stage_model.`, ...).
fn single_file(path: &Path, component: &str, namings: Vec<Naming>) -> Result<TensorSource> {
    let src = TensorSource::open(&[path.to_path_buf()])?;
    let keys = src.keys();
    for naming in namings {
        let found = keys.iter().find_map(|k| {
            let prefix = k.strip_suffix(naming.marker)?;
            (prefix.is_empty() || prefix.ends_with('.')).then(|| prefix.to_string())
        });
        if let Some(prefix) = found {
            let rename = naming.rename;
            return Ok(src.with_rename(Arc::new(move |n: &str| format!("{prefix}{}", rename(n)))));
        }
    }
    Err(Error::model(format!(
        "{} is not a Wan {component}: it has none of the tensors a {component} file has in any layout Sorrel \
         reads (for example {})",
        path.display(),
        keys.first().map(|k| format!("its first tensor is `{k}`")).unwrap_or_else(|| "it is empty".into())
    )))
}

fn transformer_file(path: &Path) -> Result<TensorSource> {
    single_file(
        path,
        "transformer",
        vec![
            Naming {
                marker: "blocks.0.self_attn.q.weight",
                rename: Arc::new(|n: &str| convert::transformer_key_to_original(n)),
            },
            Naming {
                marker: "blocks.0.attn1.to_q.weight",
                rename: Arc::new(|n: &str| n.to_string()),
            },
        ],
    )
}

fn text_encoder_file(path: &Path) -> Result<TensorSource> {
    single_file(
        path,
        "text encoder",
        vec![
            Naming {
                marker: "encoder.block.0.layer.0.SelfAttention.q.weight",
                rename: Arc::new(|n: &str| n.to_string()),
            },
            Naming {
                marker: "blocks.0.attn.q.weight",
                rename: Arc::new(|n: &str| umt5_key_to_original(n)),
            },
        ],
    )
}

fn image_encoder_file(path: &Path) -> Result<TensorSource> {
    single_file(
        path,
        "image encoder (CLIP vision)",
        vec![Naming {
            marker: "embeddings.patch_embedding.weight",
            rename: Arc::new(|n: &str| n.to_string()),
        }],
    )
}

fn vae_file(path: &Path, cfg: &VaeConfig) -> Result<TensorSource> {
    let cfg = cfg.clone();
    single_file(
        path,
        "VAE",
        vec![
            Naming {
                marker: "decoder.conv1.weight",
                rename: Arc::new(move |n: &str| vae_key_from_original(n, &cfg)),
            },
            Naming {
                marker: "decoder.conv_in.weight",
                rename: Arc::new(|n: &str| n.to_string()),
            },
        ],
    )
}

/// The folder's transformer config with the sizes a `--transformer` file actually has, read from its tensor
/// shapes: so a 14B file runs beside a 1.3B folder's text encoder and VAE (they are the same in both), and a
/// file that is not a Wan transformer of any size fails on its names rather than on a shape.
fn fit_config(base: &WanTransformerConfig, src: &TensorSource) -> Result<WanTransformerConfig> {
    let mut cfg = base.clone();
    let dim_of = |name: &str, axis: usize| src.shape(name).and_then(|s| s.get(axis).copied());
    if let Some(pe) = src.shape("patch_embedding.weight") {
        if pe.len() == 5 {
            cfg.in_channels = pe[1];
            cfg.patch_size = [pe[2], pe[3], pe[4]];
        }
        if pe[0] % cfg.attention_head_dim != 0 {
            return Err(Error::model(format!(
                "the transformer file's width {} is not a whole number of {}-channel heads",
                pe[0], cfg.attention_head_dim
            )));
        }
        cfg.num_attention_heads = pe[0] / cfg.attention_head_dim;
    }
    let layers = (0..)
        .take_while(|i| {
            src.shape(&format!("blocks.{i}.attn1.to_q.weight"))
                .is_some()
        })
        .count();
    if layers > 0 {
        cfg.num_layers = layers;
    }
    if let Some(d) = dim_of("blocks.0.ffn.net.0.proj.weight", 0) {
        cfg.ffn_dim = d;
    }
    if let Some(d) = dim_of("condition_embedder.text_embedder.linear_1.weight", 1) {
        cfg.text_dim = d;
    }
    if let Some(d) = dim_of("condition_embedder.time_embedder.linear_1.weight", 1) {
        cfg.freq_dim = d;
    }
    if let Some(d) = dim_of("proj_out.weight", 0) {
        cfg.out_channels = d / cfg.patch_size.iter().product::<usize>();
    }
    Ok(cfg)
}

/// Builds the transformer from `src` (with the adapters), keeping a GGUF file's quantized matrices quantized.
fn build_transformer(
    cfg: &WanTransformerConfig,
    src: TensorSource,
    opts: &LoadOptions,
    place: &Path,
) -> Result<WanTransformer3DModel> {
    let lora = open_loras(opts)?;
    // After `with_lora`: quantized matrices take the adapters beside them, the rest merge them.
    let src = src.with_lora(lora.clone());
    let quantized = src.quantized_weights();
    let vb = src.into_var_builder(opts.dtype, &opts.device);
    let model = sorrel_core::gguf::with_quantized(quantized, || {
        sorrel_core::gguf::with_quantize_on_load(opts.quant, || WanTransformer3DModel::new(cfg, vb))
    })
    .map_err(in_component("transformer", place))?;
    lora.check_all_used()?;
    Ok(model)
}

/// Wan2.2 A14B's experts: `first` (from `transformer/`) runs at timesteps at and above `ratio` x 1000, the
/// one in `transformer_2/` below. Both are (re)loaded on demand with the same options (LoRAs merged into
/// each, as they are trained for both); the second's config must match the first's.
fn two_experts(
    dir: &Path,
    first: WanTransformer3DModel,
    cfg: &WanTransformerConfig,
    ratio: f64,
    opts: &LoadOptions,
) -> Result<Experts> {
    if !(0.0..=1.0).contains(&ratio) {
        return Err(Error::model(format!(
            "{}: boundary_ratio {ratio} must be between 0 and 1",
            dir.join("model_index.json").display()
        )));
    }
    let second_dir = need(
        dir.join("transformer_2"),
        "two-expert (Wan2.2 A14B) diffusers folder",
    )?;
    let second_cfg = WanTransformerConfig::from_diffusers_file(&need(
        second_dir.join("config.json"),
        "two-expert (Wan2.2 A14B) diffusers folder",
    )?)?;
    if &second_cfg != cfg {
        return Err(Error::model(format!(
            "{}: transformer_2's config differs from transformer's; Wan2.2 A14B's experts share one",
            second_dir.display()
        )));
    }
    let loader = |sub: &str| -> ExpertLoader {
        let (dir, cfg, opts) = (dir.join(sub), cfg.clone(), opts.clone());
        Box::new(move || {
            let src = TensorSource::open_dir(&dir, "diffusion_pytorch_model")?;
            build_transformer(&cfg, src, &opts, &dir)
        })
    };
    // diffusers compares timesteps against boundary_ratio * num_train_timesteps (1000 for every Wan model).
    Ok(Experts::two(
        first,
        ratio * 1000.0,
        [loader("transformer"), loader("transformer_2")],
    ))
}

/// The adapters of `opts`, matched against diffusers names and the original release's.
fn open_loras(opts: &LoadOptions) -> Result<Arc<LoraSet>> {
    Ok(Arc::new(LoraSet::open(
        &opts.loras,
        Some(Arc::new(|n: &str| convert::transformer_key_to_original(n))),
    )?))
}

/// The original release's file names.
const ORIGINAL_VAE: &str = "Wan2.1_VAE.pth";
const ORIGINAL_T5: &str = "models_t5_umt5-xxl-enc-bf16.pth";

/// Wan2.1's native frame rate.
pub const WAN21_FPS: u32 = 16;

/// A loaded Wan2.1 text-to-video model.
pub struct WanPipeline {
    /// The folder it was loaded from.
    pub dir: PathBuf,
    /// Its layout.
    pub layout: Layout,
    /// What it is and can do: defaults, limits, compression, modes.
    pub info: ModelInfo,
    pub(crate) tokenizer: WanTokenizer,
    pub(crate) text_encoder: Umt5Encoder,
    /// The transformer, or Wan2.2 A14B's two experts (one resident at a time).
    pub(crate) transformer: Experts,
    /// The transformer's configuration (both experts share it).
    pub(crate) transformer_config: WanTransformerConfig,
    pub(crate) vae: AutoencoderKLWan,
    pub(crate) vae_config: VaeConfig,
    /// When the decode is tiled.
    pub(crate) vae_tiling: VaeTiling,
    /// CLIP's vision tower and its processor, for image-to-video models.
    pub(crate) image_encoder: Option<ImageEncoder>,
    /// The folder's `scheduler_config.json`, if it has one.
    pub(crate) scheduler_config: Option<PathBuf>,
    pub(crate) device: Device,
}

/// The image encoder of image-to-video models and the processor that prepares its input.
pub(crate) struct ImageEncoder {
    pub(crate) model: ClipVisionModel,
    pub(crate) processor: ClipImageProcessorConfig,
}

/// diffusers pipeline classes whose folders Sorrel loads.
const PIPELINE_CLASSES: [&str; 5] = [
    "WanPipeline",
    "WanImageToVideoPipeline",
    "WanVideoToVideoPipeline",
    "WanVACEPipeline",
    "SkyReelsV2DiffusionForcingPipeline",
];

/// diffusers' pipeline class of SkyReels-V2's diffusion-forcing text-to-video models.
pub(crate) const FORCING_CLASS: &str = "SkyReelsV2DiffusionForcingPipeline";

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map_err(|e| Error::model(format!("{} is not valid JSON: {e}", path.display())))
}

fn parse<T: serde::de::DeserializeOwned>(v: Value, what: &str) -> Result<T> {
    serde_json::from_value(v).map_err(|e| Error::model(format!("{what}: {e}")))
}

fn need(path: PathBuf, what: &str) -> Result<PathBuf> {
    if path.exists() {
        Ok(path)
    } else {
        Err(Error::model(format!(
            "{} is missing: the folder is not a complete Wan2.1 {what} (see docs/models.md for the expected files)",
            path.display()
        )))
    }
}

/// Adds the component and folder to an error raised while building a model from its weights.
fn in_component(what: &str, dir: &Path) -> impl Fn(candle_core::Error) -> Error {
    let (what, dir) = (what.to_string(), dir.display().to_string());
    move |e| Error::model(format!("cannot load the {what} from {dir}: {e}"))
}

impl WanPipeline {
    /// The video VAE, for work outside text-to-video (such as measuring what its reconstructions keep).
    pub fn vae(&self) -> &AutoencoderKLWan {
        &self.vae
    }

    /// The device the models run on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Detects the folder's layout.
    pub fn detect_layout(dir: &Path) -> Result<Layout> {
        if !dir.is_dir() {
            return Err(Error::model(format!(
                "model folder {} does not exist or is not a folder: pass --model with a Wan2.1 diffusers folder \
                 (containing model_index.json) or an original Wan2.1 release folder",
                dir.display()
            )));
        }
        if dir.join("model_index.json").is_file() {
            Ok(Layout::Diffusers)
        } else if dir.join(ORIGINAL_VAE).is_file() || dir.join(ORIGINAL_T5).is_file() {
            Ok(Layout::Original)
        } else {
            Err(Error::model(format!(
                "{} is not a Wan2.1 model folder: it has neither model_index.json (diffusers layout) nor {ORIGINAL_VAE} \
                 (original release layout)",
                dir.display()
            )))
        }
    }

    /// What the model in `dir` is and can do, read from its config files only (no weights): defaults and
    /// limits, the VAE's compression, the transformer's patch and the modes, so a bad request fails in
    /// milliseconds instead of after a minutes-long load.
    pub fn describe(dir: &Path) -> Result<ModelInfo> {
        let (vae_cfg, tr_cfg, index): (VaeConfig, WanTransformerConfig, PipelineIndex) =
            match Self::detect_layout(dir)? {
                Layout::Diffusers => {
                    let index = pipeline_index(dir)?;
                    (
                        parse(
                            read_json(&need(
                                need(dir.join("vae"), "diffusers folder")?.join("config.json"),
                                "diffusers folder",
                            )?)?,
                            "vae/config.json",
                        )?,
                        WanTransformerConfig::from_diffusers_file(&need(
                            need(dir.join("transformer"), "diffusers folder")?.join("config.json"),
                            "diffusers folder",
                        )?)?,
                        index,
                    )
                }
                Layout::Original => {
                    let sidecar = dir.join("sorrel_original_configs.json");
                    let vae_json = if sidecar.is_file() {
                        read_json(&sidecar)?
                            .get("vae")
                            .cloned()
                            .unwrap_or_else(convert::original_vae_config)
                    } else {
                        convert::original_vae_config()
                    };
                    (
                        parse(vae_json, "VAE config")?,
                        WanTransformerConfig::from_original_file(&need(
                            dir.join("config.json"),
                            "original release folder",
                        )?)?,
                        PipelineIndex {
                            class: "WanPipeline".into(),
                            expand_timesteps: false,
                            boundary_ratio: None,
                        },
                    )
                }
            };
        let defaults = crate::ModelDefaults::for_dir(dir, &index)?;
        let compression = (
            vae_cfg.spatial_compression(),
            vae_cfg.temporal_compression(),
        );
        let rolls_out = defaults.rolls_out();
        Ok(ModelInfo {
            defaults,
            compression,
            patch: tr_cfg.patch_size,
            rope_max_seq_len: tr_cfg.rope_max_seq_len,
            modes: modes_of(
                dir,
                &tr_cfg,
                vae_cfg.z_dim,
                compression.1,
                rolls_out,
                index.expand_timesteps,
                index.class == FORCING_CLASS,
            )?,
            diffusion_forcing: (index.class == FORCING_CLASS).then_some(tr_cfg.num_frame_per_block),
            pipeline_class: index.class,
            expand_timesteps: index.expand_timesteps,
            boundary_ratio: index.boundary_ratio,
        })
    }

    /// Loads every component of the model in `dir`.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        match Self::detect_layout(dir)? {
            Layout::Diffusers => Self::load_diffusers(dir, opts),
            Layout::Original => Self::load_original(dir, opts),
        }
    }

    fn load_diffusers(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let info = Self::describe(dir)?;
        if info.boundary_ratio.is_some() && opts.transformer.is_some() {
            return Err(Error::invalid(
                "--transformer replaces one transformer, but this model has two experts (transformer/ and \
                 transformer_2/): put each file's weights in its folder instead"
                    .to_string(),
            ));
        }
        let (dev, dt) = (&opts.device, opts.dtype);

        let tok_dir = need(dir.join("tokenizer"), "diffusers folder")?;
        let tokenizer =
            WanTokenizer::from_file(&need(tok_dir.join("tokenizer.json"), "diffusers folder")?)?;

        let te_dir = need(dir.join("text_encoder"), "diffusers folder")?;
        let te_cfg: Umt5Config = parse(
            read_json(&need(te_dir.join("config.json"), "diffusers folder")?)?,
            "text_encoder/config.json",
        )?;
        let (te_src, te_place) = match &opts.text_encoder {
            Some(f) => (text_encoder_file(f)?, f.clone()),
            None => (TensorSource::open_dir(&te_dir, "model")?, te_dir.clone()),
        };
        let text_encoder = Umt5Encoder::new(&te_cfg, te_src.into_var_builder(dt, dev))
            .map_err(in_component("text encoder", &te_place))?;

        let tr_dir = need(dir.join("transformer"), "diffusers folder")?;
        let tr_cfg = WanTransformerConfig::from_diffusers_file(&need(
            tr_dir.join("config.json"),
            "diffusers folder",
        )?)?;
        let (src, place) = match &opts.transformer {
            Some(f) => (transformer_file(f)?, f.clone()),
            None => (
                TensorSource::open_dir(&tr_dir, "diffusion_pytorch_model")?,
                tr_dir.clone(),
            ),
        };
        let tr_cfg = match &opts.transformer {
            Some(_) => fit_config(&tr_cfg, &src)?,
            None => tr_cfg,
        };
        let first = build_transformer(&tr_cfg, src, opts, &place)?;
        let transformer = match info.boundary_ratio {
            Some(ratio) => two_experts(dir, first, &tr_cfg, ratio, opts)?,
            None => Experts::one(first),
        };

        let vae_dir = need(dir.join("vae"), "diffusers folder")?;
        let vae_config: VaeConfig = parse(
            read_json(&need(vae_dir.join("config.json"), "diffusers folder")?)?,
            "vae/config.json",
        )?;
        // The VAE runs in f32: its decode is where low precision shows as banding, and it is a small share
        // of the time.
        let (vae_src, vae_place) = match &opts.vae {
            Some(f) => (vae_file(f, &vae_config)?, f.clone()),
            None => (
                TensorSource::open_dir(&vae_dir, "diffusion_pytorch_model")?,
                vae_dir.clone(),
            ),
        };
        let vae =
            AutoencoderKLWan::new(&vae_config, vae_src.into_var_builder(vae_dtype(opts)?, dev))
                .map_err(in_component("VAE", &vae_place))?;

        let image_encoder = if tr_cfg.image_dim.is_some() {
            Some(load_image_encoder(dir, dev, opts.image_encoder.as_deref())?)
        } else {
            None
        };
        let sched = dir.join("scheduler").join("scheduler_config.json");
        Ok(Self {
            dir: dir.to_path_buf(),
            layout: Layout::Diffusers,
            info,
            image_encoder,
            tokenizer,
            text_encoder,
            transformer,
            transformer_config: tr_cfg,
            vae,
            vae_config,
            vae_tiling: opts.vae_tiling,
            scheduler_config: sched.is_file().then_some(sched),
            device: dev.clone(),
        })
    }

    fn load_original(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let (dev, dt) = (&opts.device, opts.dtype);
        // The release hard-codes the VAE and T5 configs in Wan's code; a sidecar may override them (Sorrel's
        // tiny test fixtures use one).
        let sidecar = dir.join("sorrel_original_configs.json");
        let (vae_json, te_json) = if sidecar.is_file() {
            let v = read_json(&sidecar)?;
            (
                v.get("vae")
                    .cloned()
                    .unwrap_or_else(convert::original_vae_config),
                v.get("text_encoder")
                    .cloned()
                    .unwrap_or_else(convert::original_text_encoder_config),
            )
        } else {
            (
                convert::original_vae_config(),
                convert::original_text_encoder_config(),
            )
        };

        let tokenizer = WanTokenizer::from_file(&need(
            dir.join("google").join("umt5-xxl").join("tokenizer.json"),
            "original release folder",
        )?)?;

        let te_cfg: Umt5Config = parse(te_json, "text encoder config")?;
        let te_src = match &opts.text_encoder {
            Some(f) => text_encoder_file(f)?,
            None => TensorSource::open(&[need(dir.join(ORIGINAL_T5), "original release folder")?])?
                .with_rename(Arc::new(|n: &str| umt5_key_to_original(n))),
        };
        let text_encoder = Umt5Encoder::new(&te_cfg, te_src.into_var_builder(dt, dev)).map_err(
            in_component("text encoder", opts.text_encoder.as_deref().unwrap_or(dir)),
        )?;

        let tr_cfg = WanTransformerConfig::from_original_file(&need(
            dir.join("config.json"),
            "original release folder",
        )?)?;
        let (src, place) = match &opts.transformer {
            Some(f) => (transformer_file(f)?, f.clone()),
            None => (
                TensorSource::open_dir(dir, "diffusion_pytorch_model")?
                    .with_rename(Arc::new(|n: &str| convert::transformer_key_to_original(n))),
                dir.to_path_buf(),
            ),
        };
        let tr_cfg = match &opts.transformer {
            Some(_) => fit_config(&tr_cfg, &src)?,
            None => tr_cfg,
        };
        let transformer = Experts::one(build_transformer(&tr_cfg, src, opts, &place)?);

        let vae_config: VaeConfig = parse(vae_json, "VAE config")?;
        let vae_src = match &opts.vae {
            Some(f) => vae_file(f, &vae_config)?,
            None => {
                let cfg_for_names = vae_config.clone();
                TensorSource::open(&[need(dir.join(ORIGINAL_VAE), "original release folder")?])?
                    .with_rename(Arc::new(move |n: &str| {
                        vae_key_from_original(n, &cfg_for_names)
                    }))
            }
        };
        let vae =
            AutoencoderKLWan::new(&vae_config, vae_src.into_var_builder(vae_dtype(opts)?, dev))
                .map_err(in_component("VAE", opts.vae.as_deref().unwrap_or(dir)))?;

        Ok(Self {
            dir: dir.to_path_buf(),
            layout: Layout::Original,
            info: Self::describe(dir)?,
            image_encoder: None,
            tokenizer,
            text_encoder,
            transformer,
            transformer_config: tr_cfg,
            vae,
            vae_config,
            vae_tiling: opts.vae_tiling,
            scheduler_config: None,
            device: dev.clone(),
        })
    }

    /// The diffusion transformer (of a two-expert model, the resident expert, loading the first if a
    /// failed load left none).
    pub fn transformer(&self) -> Result<Arc<WanTransformer3DModel>> {
        self.transformer.resident()
    }

    /// The transformer's configuration.
    pub fn transformer_config(&self) -> &WanTransformerConfig {
        &self.transformer_config
    }

    /// The frame rate the model was trained at, and so the rate its motion looks right at: Wan2.1
    /// generates 16 fps video (its diffusers pipelines export at 16 fps too); Sorrel's own models say
    /// theirs in `sorrel_defaults.json`.
    pub fn native_fps(&self) -> u32 {
        self.info.defaults.fps
    }

    /// Pixels per latent pixel (spatial) and frames per latent frame after the first (temporal).
    pub fn compression(&self) -> (usize, usize) {
        self.info.compression
    }

    /// The flow shift of the folder's scheduler config, or 3.0 (what Wan-AI ship for Wan2.1 T2V).
    pub fn default_flow_shift(&self) -> f64 {
        self.scheduler_config
            .as_ref()
            .and_then(|p| read_json(p).ok())
            .and_then(|v| {
                v.get("flow_shift")
                    .or_else(|| v.get("shift"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(3.0)
    }
}

/// What a diffusers folder's `model_index.json` says about the pipeline, beyond its components.
pub(crate) struct PipelineIndex {
    /// `_class_name`.
    pub(crate) class: String,
    /// Wan2.2 TI2V's per-token timesteps.
    pub(crate) expand_timesteps: bool,
    /// Wan2.2 A14B's switch between its two experts.
    pub(crate) boundary_ratio: Option<f64>,
}

/// Reads a diffusers folder's `model_index.json`, refusing with the reason what Sorrel cannot run.
pub(crate) fn pipeline_index(dir: &Path) -> Result<PipelineIndex> {
    let path = dir.join("model_index.json");
    let index = read_json(&path)?;
    let component = |k: &str| {
        index
            .get(k)
            .and_then(|v| v.get(1))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let expand_timesteps = index.get("expand_timesteps").and_then(Value::as_bool) == Some(true);
    let boundary_ratio = index.get("boundary_ratio").and_then(Value::as_f64);
    if component("transformer_2").is_some() != boundary_ratio.is_some() {
        return Err(Error::model(format!(
            "{}: a second transformer (transformer_2) needs boundary_ratio, the switch between the two \
             experts, and boundary_ratio needs transformer_2",
            path.display()
        )));
    }
    let class = index
        .get("_class_name")
        .and_then(Value::as_str)
        .unwrap_or("WanPipeline")
        .to_string();
    match component("transformer").as_deref() {
        Some("SkyReelsV2Transformer3DModel") if class == FORCING_CLASS => {}
        Some("WanTransformer3DModel") => {}
        Some("WanVACETransformer3DModel") if !expand_timesteps => {}
        other => {
            return Err(Error::model(format!(
                "{}: transformer class {other:?} in a {class} is not supported; Sorrel loads Wan models with \
                 WanTransformer3DModel (Wan2.1 and Wan2.2: text-to-video, image-to-video, first/last-frame), \
                 WanVACETransformer3DModel (Wan2.1 VACE) and SkyReels-V2's SkyReelsV2Transformer3DModel in \
                 {FORCING_CLASS} (diffusion forcing, text-to-video)",
                path.display()
            )))
        }
    }
    if !PIPELINE_CLASSES.contains(&class.as_str()) {
        return Err(Error::model(format!(
            "{}: pipeline class `{class}` is not supported yet; Sorrel loads {}",
            path.display(),
            PIPELINE_CLASSES.join(", ")
        )));
    }
    Ok(PipelineIndex {
        class,
        expand_timesteps,
        boundary_ratio,
    })
}

/// The modes a transformer runs, from its config: a VACE transformer composes (references, masks, extension)
/// and starts from given frames through its control input; a text-to-video transformer (latent channels in)
/// also restyles videos; an image-conditioned one (latents, mask and encoded condition in) starts from a first
/// frame, or from a first and a last frame when it has the two-image position table.
///
/// Wan2.2 TI2V (`expand_timesteps`) also starts from a first frame, held clean at timestep 0.
///
/// A text-to-video transformer trained with clean given frames (`rolls_out`, from `sorrel_defaults.json`)
/// also starts from a first frame and continues and joins clips, window by window.
fn modes_of(
    dir: &Path,
    cfg: &WanTransformerConfig,
    z: usize,
    tc: usize,
    rolls_out: bool,
    expand_timesteps: bool,
    forcing: bool,
) -> Result<Vec<Mode>> {
    let want_i2v = 2 * z + tc;
    match cfg.image_dim {
        // SkyReels-V2 diffusion forcing: text to video of any length, from a first frame, or continuing a clip.
        None if cfg.in_channels == z && forcing => Ok(vec![
            Mode::TextToVideo,
            Mode::ImageToVideo,
            Mode::Continue,
        ]),
        // Wan2.2 TI2V: image-to-video by a first latent frame held at t = 0; restyling as any T2V model.
        None if cfg.in_channels == z && cfg.vace_layers.is_none() && expand_timesteps => Ok(vec![
            Mode::TextToVideo,
            Mode::ImageToVideo,
            Mode::VideoToVideo,
        ]),
        None if cfg.in_channels == z && cfg.vace_layers.is_none() && rolls_out => Ok(vec![
            Mode::TextToVideo,
            Mode::ImageToVideo,
            Mode::VideoToVideo,
            Mode::Continue,
        ]),
        // VACE takes every composition through its control input; restyling by noise strength is not one.
        None if cfg.in_channels == z && cfg.vace_layers.is_some() => Ok(vec![
            Mode::TextToVideo,
            Mode::ImageToVideo,
            Mode::FirstLastFrame,
            Mode::Compose,
        ]),
        None if cfg.in_channels == z => Ok(vec![Mode::TextToVideo, Mode::VideoToVideo]),
        // Wan2.2 I2V-A14B: the same mask and condition channels, no CLIP image tokens.
        None if cfg.in_channels == want_i2v && cfg.vace_layers.is_none() => {
            Ok(vec![Mode::ImageToVideo])
        }
        Some(_) if cfg.in_channels == want_i2v => Ok(if cfg.pos_embed_seq_len.is_some() {
            vec![Mode::FirstLastFrame]
        } else {
            vec![Mode::ImageToVideo]
        }),
        image => Err(Error::model(format!(
            "{}: the transformer takes {} input channels, but with this VAE ({z} latent channels) a \
             text-to-video model takes {z} and an image-to-video model {want_i2v}{}",
            dir.display(),
            cfg.in_channels,
            if image.is_some() {
                " (this one has image_dim, so it should be image-to-video)"
            } else {
                ""
            }
        ))),
    }
}

/// Loads `image_encoder/` (CLIP's vision tower, f32) and `image_processor/`.
fn load_image_encoder(dir: &Path, dev: &Device, file: Option<&Path>) -> Result<ImageEncoder> {
    let enc_dir = need(dir.join("image_encoder"), "image-to-video diffusers folder")?;
    let cfg = ClipVisionConfig::from_file(&need(
        enc_dir.join("config.json"),
        "image-to-video diffusers folder",
    )?)?;
    // The vision tower runs in f32, as Wan-AI's own example loads it: it runs once per generation.
    let (src, place) = match file {
        Some(f) => (image_encoder_file(f)?, f.to_path_buf()),
        None => (TensorSource::open_dir(&enc_dir, "model")?, enc_dir.clone()),
    };
    let model = ClipVisionModel::new(&cfg, src.into_var_builder(DType::F32, dev))
        .map_err(in_component("image encoder", &place))?;
    let proc_path = need(
        dir.join("image_processor").join("preprocessor_config.json"),
        "image-to-video diffusers folder",
    )?;
    let processor = ClipImageProcessorConfig::from_file(&proc_path)?;
    if processor.crop() != Some((cfg.image_size, cfg.image_size)) {
        return Err(Error::model(format!(
            "{}: crop_size {:?} does not match the image encoder's {}x{} input",
            proc_path.display(),
            processor.crop(),
            cfg.image_size,
            cfg.image_size
        )));
    }
    Ok(ImageEncoder { model, processor })
}
