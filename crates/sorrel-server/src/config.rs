//! Server settings: where data lives, who may call, what is loaded, and the limits on requests.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use candle_core::DType;

/// A model folder and the name clients use for it in `model`.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// The API name, e.g. `wan2.1-t2v-1.3b`.
    pub name: String,
    /// The folder (either Wan layout).
    pub dir: PathBuf,
}

/// Upper bounds on what one request may ask for.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest prompt (and negative prompt), in characters.
    pub max_prompt_chars: usize,
    /// Longest clip, in whole seconds.
    pub max_seconds: u32,
    /// Widest frame, in pixels.
    pub max_width: usize,
    /// Tallest frame, in pixels.
    pub max_height: usize,
    /// Most denoising steps.
    pub max_steps: usize,
    /// Most queued or running jobs per API key.
    pub max_queued_per_key: u32,
    /// Largest request body (JSON or multipart), in bytes.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_prompt_chars: 4000,
            max_seconds: 20,
            max_width: 1280,
            max_height: 1280,
            max_steps: 100,
            max_queued_per_key: 100,
            max_body_bytes: 16 << 20,
        }
    }
}

/// What a request gets for fields it leaves out; `None` takes the model's own default (its
/// `sorrel_defaults.json`, or Wan2.1's 832x480, 50 steps, guidance 5, and its clip length).
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    /// (width, height).
    pub size: Option<(usize, usize)>,
    /// Whole seconds.
    pub seconds: Option<u32>,
    /// Denoising steps.
    pub steps: Option<usize>,
    /// Guidance scale.
    pub guidance: Option<f64>,
}

/// Where to announce finished and failed videos.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The receiver's URL (http or https).
    pub url: String,
    /// The signing secret (`whsec_` + base64, as Standard Webhooks and OpenAI use, or any string).
    pub secret: String,
    /// Attempts per event before giving up (with exponential back-off between them).
    pub attempts: u32,
    /// Delay before the first retry; doubled each time.
    pub first_retry: Duration,
}

/// Everything `sorrel serve` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Holds `jobs.db`, `videos/<id>/` and the lock file. With a shared store, every node names the same
    /// folder (a network file system for nodes on several machines): outputs are written there.
    pub data_dir: PathBuf,
    /// Where the jobs live.
    pub store: crate::store::StoreUrl,
    /// How long a worker's claim on a job lasts without a renewal; renewed every third of it. A job whose
    /// worker died goes back to the queue this long after its last renewal.
    pub lease: Duration,
    /// Address to listen on.
    pub host: IpAddr,
    /// Port (0 picks a free one; the chosen address is printed).
    pub port: u16,
    /// Accepted bearer keys; empty means no auth, and then only loopback addresses are allowed.
    pub api_keys: Vec<String>,
    /// The models to load; the first is the default.
    pub models: Vec<ModelSpec>,
    /// Compute dtype of the text encoder and transformer.
    pub dtype: DType,
    /// Weights beside every served model's folder: LoRAs and single-file components (its `dtype` and
    /// `device` are not used: `dtype` and `device` here are).
    pub weights: sorrel_pipeline::LoadOptions,
    /// Where the workers run the models (`--device`): the CPU, or a GPU that holds every served model.
    pub device: candle_core::Device,
    /// Jobs generated at once by this process; 0 (an API-only node) needs a shared store.
    pub workers: usize,
    /// Bytes this process's workers may use for their jobs beyond the loaded models, shared equally;
    /// `None`: what the machine has available once the models are loaded. A request that needs more is
    /// refused (400 at create time, or a failed job on a worker node).
    pub memory_limit: Option<u64>,
    /// Request limits.
    pub limits: Limits,
    /// Request defaults.
    pub defaults: Defaults,
    /// How long finished videos (and their records) are kept.
    pub retention: Duration,
    /// Sent as `openai-poll-after-ms` while a job is unfinished.
    pub poll_after_ms: u64,
    /// Optional event delivery.
    pub webhook: Option<WebhookConfig>,
    /// Certificate chain and key to sign content credentials with; `None` uses the local signing CA in
    /// `data_dir/c2pa` (created on first use).
    pub signing: Option<(PathBuf, PathBuf)>,
    /// Record prompts in the content credentials.
    pub record_prompt: bool,
    /// The invisible watermark's key; `None` turns the watermark off (the credentials then say so).
    pub watermark: Option<sorrel_provenance::watermark::WatermarkKey>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("sorrel-data"),
            store: crate::store::StoreUrl::DataDir,
            lease: Duration::from_secs(30),
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8000,
            api_keys: Vec::new(),
            models: Vec::new(),
            dtype: DType::F32,
            weights: Default::default(),
            device: candle_core::Device::Cpu,
            workers: 1,
            memory_limit: None,
            limits: Limits::default(),
            defaults: Defaults::default(),
            retention: Duration::from_secs(24 * 3600),
            poll_after_ms: 1000,
            webhook: None,
            signing: None,
            record_prompt: false,
            watermark: Some(Default::default()),
        }
    }
}
