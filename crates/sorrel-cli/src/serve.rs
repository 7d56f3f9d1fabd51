//! `sorrel serve` and `sorrel worker`: flags to [`ServerConfig`], then run the node until Ctrl-C or SIGTERM.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sorrel_server::{Defaults, Limits, ModelSpec, Server, ServerConfig, WebhookConfig};

/// What every node needs, server or worker: its models, data folder, store and how it generates.
#[derive(clap::Args)]
pub struct NodeArgs {
    /// A model to serve, as NAME=DIR (clients pass NAME as `model`), DIR (named after the folder) or a
    /// Hugging Face id (served under that id; from the Hugging Face cache, as `generate --model`). Repeat
    /// for several; the first is the default. Without any, the embedded toy-world model is served as
    /// `sorrel-toyworld`.
    #[arg(long, short = 'm')]
    model: Vec<String>,
    /// Folder for the job database and the videos (default: $XDG_DATA_HOME/sorrel or ~/.local/share/sorrel).
    /// Nodes sharing a --store name the same folder (a network file system across machines): the videos
    /// are written there and served from there.
    #[arg(long, env = "SORREL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where the jobs live: postgres://user:password@host:port/database (shared by many nodes: every node
    /// then names the same --data-dir, on a shared file system across machines), or sqlite:PATH (default:
    /// jobs.db in the data folder). Also read from SORREL_STORE.
    #[arg(long, env = "SORREL_STORE")]
    store: Option<String>,
    /// Seconds a worker's claim on a job lasts unrenewed (renewed every third of it): a job whose worker
    /// died is run again this long after its last renewal.
    #[arg(long, default_value_t = 30.0)]
    lease_secs: f64,
    /// Compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// LoRAs and single-file components, applied to every served model (as `sorrel generate`'s flags).
    #[command(flatten)]
    weights: crate::weights::WeightArgs,
    /// Where the workers run their jobs (the GPU holds every served model once).
    #[command(flatten)]
    device: crate::device::DeviceArgs,
    /// Hours a finished video (and its record) is kept before it expires and is removed.
    #[arg(long, default_value_t = 24.0)]
    retention_hours: f64,
    /// Memory the workers may use for their jobs beyond the loaded models, shared equally (8G, 512M, or
    /// bytes); a request that needs more is refused. Default: what the machine has available once the
    /// models are loaded.
    #[arg(long, env = "SORREL_MEMORY_LIMIT")]
    memory_limit: Option<String>,
    #[command(flatten)]
    sign: crate::provenance::SignArgs,
}

/// Options of `sorrel worker`.
#[derive(clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Jobs generated at the same time by this process (each uses all cores).
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

/// Options of `sorrel serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Address to listen on. Without API keys only loopback addresses are allowed.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port; 0 picks a free one (the address is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Accepted bearer API key; repeat for several. Also read from SORREL_API_KEYS (comma-separated).
    #[arg(long = "api-key")]
    api_keys: Vec<String>,
    /// Jobs generated at the same time (each uses all cores; more than 1 helps only on big machines). 0 makes
    /// an API-only node, which needs a shared --store, loads no model, and takes requests for the models
    /// that `sorrel worker` processes publish there.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Longest prompt accepted, in characters.
    #[arg(long, default_value_t = 4000)]
    max_prompt_chars: usize,
    /// Longest clip accepted, in seconds (default: the longest the loaded models make: 62 for Wan2.1's
    /// 1,001 frames at 16 fps, 600 for SkyReels-V2 diffusion forcing and the embedded model).
    #[arg(long)]
    max_seconds: Option<u32>,
    /// Largest frame accepted, WIDTHxHEIGHT (each side separately).
    #[arg(long, default_value = "1280x1280")]
    max_size: String,
    /// Most denoising steps accepted.
    #[arg(long, default_value_t = 100)]
    max_steps: usize,
    /// Most queued or running videos per API key (more get 429).
    #[arg(long, default_value_t = 100)]
    max_queued_per_key: u32,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_body_bytes: usize,
    /// Size when a request gives none (default: the model's, 832x480 for Wan2.1).
    #[arg(long)]
    default_size: Option<String>,
    /// Seconds when a request gives none (default: the model's clip length, 4 for Wan2.1).
    #[arg(long)]
    default_seconds: Option<u32>,
    /// Denoising steps when a request gives none (default: the model's, 50 for Wan2.1).
    #[arg(long)]
    default_steps: Option<usize>,
    /// Guidance scale when a request gives none (default: the model's, 5 for Wan2.1).
    #[arg(long)]
    default_guidance: Option<f64>,
    /// Sent to clients as `openai-poll-after-ms` while a video is unfinished.
    #[arg(long, default_value_t = 1000)]
    poll_after_ms: u64,
    /// POST `video.completed` / `video.failed` events here (signed; see --webhook-secret).
    #[arg(long)]
    webhook_url: Option<String>,
    /// Signing secret for webhooks (`whsec_...` or any string).
    #[arg(long, env = "SORREL_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// Delivery attempts per webhook event.
    #[arg(long, default_value_t = 5)]
    webhook_attempts: u32,
}

fn model_spec(s: &str) -> Result<ModelSpec> {
    let (name, dir) = match s.split_once('=') {
        Some((name, dir)) => (
            name.to_string(),
            crate::hub::resolve_model(Path::new(dir), false)?,
        ),
        // A Hugging Face id is served under that id.
        None if !Path::new(s).exists() && sorrel_pipeline::hub::HubId::parse(s).is_some() => (
            s.to_string(),
            crate::hub::resolve_model(Path::new(s), false)?,
        ),
        None => {
            let dir = PathBuf::from(s);
            let name = dir
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_lowercase()))
                .with_context(|| format!("--model {s}: no such folder"))?;
            (name, dir)
        }
    };
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("--model {s}: the name `{name}` must be non-empty and have no spaces");
    }
    Ok(ModelSpec { name, dir })
}

fn wxh(flag: &str, s: &str) -> Result<(usize, usize)> {
    let (w, h) = s
        .split_once('x')
        .with_context(|| format!("{flag} `{s}` is not WIDTHxHEIGHT"))?;
    Ok((
        w.parse()
            .with_context(|| format!("{flag} `{s}`: bad width"))?,
        h.parse()
            .with_context(|| format!("{flag} `{s}`: bad height"))?,
    ))
}

/// The settings every node shares, from its flags; `workers` 0 (an API-only node) loads no model.
fn node_config(node: NodeArgs, workers: usize) -> Result<ServerConfig> {
    let models: Vec<ModelSpec> = if workers == 0 {
        if !node.model.is_empty() {
            bail!(
                "--workers 0 makes an API-only node, which loads no model: drop --model here and give it to \
                 `sorrel worker` (the workers publish their models in the shared store)"
            );
        }
        Vec::new()
    } else if node.model.is_empty() {
        vec![ModelSpec {
            name: crate::embedded::NAME.to_string(),
            dir: crate::embedded::model_dir()?,
        }]
    } else {
        node.model
            .iter()
            .map(|m| model_spec(m))
            .collect::<Result<_>>()?
    };
    if !(node.retention_hours.is_finite() && node.retention_hours > 0.0) {
        bail!("--retention-hours must be a positive number");
    }
    Ok(ServerConfig {
        data_dir: node
            .data_dir
            .unwrap_or_else(crate::provenance::default_data_dir),
        store: match &node.store {
            Some(url) => sorrel_server::StoreUrl::parse(url).map_err(anyhow::Error::msg)?,
            None => sorrel_server::StoreUrl::DataDir,
        },
        lease: lease_duration(node.lease_secs)?,
        models,
        dtype: crate::parse_dtype(&node.dtype)?,
        weights: node.weights.apply(Default::default()),
        device: node.device.open(false)?,
        workers,
        memory_limit: node
            .memory_limit
            .as_deref()
            .map(|s| sorrel_pipeline::memory::parse_limit("--memory-limit ", s))
            .transpose()?,
        retention: Duration::from_secs_f64(node.retention_hours * 3600.0),
        signing: node.sign.sign_cert.zip(node.sign.sign_key),
        record_prompt: node.sign.record_prompt,
        watermark: (!node.sign.watermark.no_watermark).then(|| node.sign.watermark.key.key()),
        ..ServerConfig::default()
    })
}

fn config(args: ServeArgs) -> Result<ServerConfig> {
    let mut api_keys = args.api_keys;
    if let Ok(env) = std::env::var("SORREL_API_KEYS") {
        api_keys.extend(
            env.split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(String::from),
        );
    }
    let base = node_config(args.node, args.workers)?;
    let (max_width, max_height) = wxh("--max-size", &args.max_size)?;
    let max_seconds = match args.max_seconds {
        Some(s) => s,
        // An API-only node does not know which models the workers will bring: the longest any makes.
        None if base.models.is_empty() => API_NODE_MAX_SECONDS,
        None => longest_seconds(&base.models),
    };
    let limits = Limits {
        max_prompt_chars: args.max_prompt_chars,
        max_seconds,
        max_width,
        max_height,
        max_steps: args.max_steps,
        max_queued_per_key: args.max_queued_per_key,
        max_body_bytes: args.max_body_bytes,
    };
    let size = match &args.default_size {
        Some(s) => {
            sorrel_server::params::parse_size(s, &limits)
                .map_err(|e| anyhow::anyhow!("--default-size: {}", e.message))?;
            Some(wxh("--default-size", s)?)
        }
        None => None,
    };
    if let Some(s) = args.default_seconds {
        if s == 0 || s > limits.max_seconds {
            bail!(
                "--default-seconds must be from 1 to --max-seconds ({})",
                limits.max_seconds
            );
        }
    }
    if let Some(s) = args.default_steps {
        if s == 0 || s > limits.max_steps {
            bail!(
                "--default-steps must be from 1 to --max-steps ({})",
                limits.max_steps
            );
        }
    }
    let webhook = match (args.webhook_url, args.webhook_secret) {
        (Some(url), Some(secret)) => Some(WebhookConfig {
            url,
            secret,
            attempts: args.webhook_attempts.max(1),
            first_retry: Duration::from_secs(2),
        }),
        (Some(_), None) => {
            bail!("--webhook-url needs --webhook-secret (or SORREL_WEBHOOK_SECRET) to sign events")
        }
        (None, _) => None,
    };
    Ok(ServerConfig {
        host: args.host,
        port: args.port,
        api_keys,
        limits,
        defaults: Defaults {
            size,
            seconds: args.default_seconds,
            steps: args.default_steps,
            guidance: args.default_guidance,
        },
        poll_after_ms: args.poll_after_ms,
        webhook,
        ..base
    })
}

/// `--max-seconds` of an API-only node left without one: SkyReels-V2 diffusion forcing and the embedded
/// model make clips this long; each request is still checked against its model's own description.
const API_NODE_MAX_SECONDS: u32 = 600;

/// The longest clip, in whole seconds, that any of `models` makes (its most frames at its rate), read from the
/// folders' configs; a folder that cannot be described counts as 20 s (its load reports the problem).
fn longest_seconds(models: &[ModelSpec]) -> u32 {
    models
        .iter()
        .map(|m| match sorrel_pipeline::WanPipeline::describe(&m.dir) {
            Ok(info) => (info.defaults.max_frames / info.defaults.fps as usize).max(1) as u32,
            Err(_) => 20,
        })
        .max()
        .unwrap_or(20)
}

/// Logs to stderr (`RUST_LOG` filters) and runs `node` on a multi-threaded runtime.
fn run_node(node: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(node)
}

/// Runs `sorrel serve`.
pub fn serve(args: ServeArgs) -> Result<()> {
    let config = config(args)?;
    run_node(async move {
        let open = config.api_keys.is_empty();
        let data_dir = config.data_dir.clone();
        let models: Vec<String> = config.models.iter().map(|m| m.name.clone()).collect();
        let server = Server::start(config).await?;
        let addr = server.local_addr()?;
        // Tests and scripts read this line to find the port.
        println!("listening on http://{addr}");
        std::io::stdout().flush().ok();
        if models.is_empty() {
            eprintln!(
                "API-only node: the models are those `sorrel worker` processes publish in the store; data folder {}",
                data_dir.display()
            );
        } else {
            eprintln!(
                "serving {} from data folder {}",
                models.join(", "),
                data_dir.display()
            );
        }
        eprintln!("the studio (a page for making videos in a browser): http://{addr}/");
        if open {
            eprintln!(
                "no API key configured: accepting requests from this machine only (set SORREL_API_KEYS to require keys)"
            );
        }
        server.run().await?;
        Ok(())
    })
}

/// Runs `sorrel worker`.
pub fn worker(args: WorkerArgs) -> Result<()> {
    let config = node_config(args.node, args.workers.max(1))?;
    run_node(async move {
        let data_dir = config.data_dir.clone();
        let models: Vec<String> = config.models.iter().map(|m| m.name.clone()).collect();
        let worker = Server::start_worker(config).await?;
        // Tests and scripts read this line to know the models are loaded.
        println!("worker ready: {}", models.join(", "));
        std::io::stdout().flush().ok();
        eprintln!(
            "taking jobs for {} from the store; videos go to {}",
            models.join(", "),
            data_dir.display()
        );
        worker.run().await?;
        Ok(())
    })
}

/// `--lease-secs` as a duration: at least a second (renewals come every third of it), at most a day.
fn lease_duration(secs: f64) -> anyhow::Result<Duration> {
    if !(1.0..=86_400.0).contains(&secs) {
        bail!("--lease-secs must be between 1 and 86400 (got {secs})");
    }
    Ok(Duration::from_secs_f64(secs))
}
