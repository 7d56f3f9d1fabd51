//! `sorrel`: text-to-video generation from the command line.

mod device;
mod embedded;
mod eval;
mod film;
mod hub;
mod output;
mod planner_chat;
mod provenance;
mod serve;
mod train;
mod weights;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sorrel_pipeline::{
    Conditioning, Event, GenerateRequest, LoadOptions, Mode, Picture, Splice, WanPipeline,
};

use output::OutputTarget;
use sorrel_media::{EncodeOptions, StillFormat};

#[derive(Parser)]
#[command(
    name = "sorrel",
    version,
    about = "Open text-to-video generation",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a video from a prompt.
    Generate(GenerateArgs),
    /// Join two clips with generated frames between them (needs a VACE model or the embedded model); writes
    /// the whole joined clip.
    Connect(ConnectArgs),
    /// Serve the OpenAI-compatible /v1/videos API with a durable job queue.
    Serve(serve::ServeArgs),
    /// Generate videos for API nodes that share a PostgreSQL store (`sorrel serve --store postgres://...`):
    /// takes queued jobs for its models under a lease, and serves no HTTP.
    Worker(serve::WorkerArgs),
    /// Check a file's content credentials (C2PA): who made it, with what, and whether it changed since.
    Verify(provenance::VerifyArgs),
    /// Train the embedded toy-world model from scratch.
    Train(train::TrainArgs),
    /// Make a film from a story: shots, recurring characters, long takes (see docs/film.md).
    Film(film::FilmArgs),
    /// Score a toy-world model on prompts no training clip used.
    Eval(eval::EvalArgs),
    /// List the models on this machine, or download one by Hugging Face id.
    Models(hub::ModelsArgs),
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// What the video shows.
    prompt: String,
    #[command(flatten)]
    opts: GenerateOptions,
}

#[derive(clap::Args)]
struct ConnectArgs {
    /// The clip that comes first.
    first: PathBuf,
    /// The clip that comes after.
    second: PathBuf,
    /// What the joining frames show (default: on models that roll out, such as the embedded one, no
    /// caption, since the clips show the scene; on others "the scene continues smoothly in one shot").
    #[arg(long)]
    prompt: Option<String>,
    #[command(flatten)]
    opts: GenerateOptions,
}

/// `generate`'s options apart from the prompt, shared with `connect`.
#[derive(clap::Args)]
struct GenerateOptions {
    /// Model: a Wan2.1 diffusers folder (with model_index.json), an original Wan2.1 release folder, or a
    /// Hugging Face id such as Wan-AI/Wan2.1-T2V-1.3B-Diffusers[@REVISION] (read from the Hugging Face cache,
    /// downloaded into it if missing unless HF_HUB_OFFLINE=1). Default: the embedded toy-world model (32x32,
    /// 8 frames; see docs/models/toyworld.md).
    #[arg(long, short = 'm', env = "SORREL_MODEL")]
    model: Option<PathBuf>,
    /// What to steer away from.
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Number of frames (Wan2.1: 4k+1 such as 17, 33, 81; default: the model's, 81 for Wan2.1). The
    /// embedded model makes any number, window by window (up to 600 s of video).
    #[arg(long)]
    frames: Option<usize>,
    /// Length in seconds at the model's frame rate, instead of --frames (e.g. --seconds 60 makes 480 frames
    /// on the embedded model, 8 fps).
    #[arg(long, conflicts_with = "frames")]
    seconds: Option<f64>,
    /// Width in pixels (Wan2.1: a multiple of 16).
    #[arg(long)]
    width: Option<usize>,
    /// Height in pixels (Wan2.1: a multiple of 16).
    #[arg(long)]
    height: Option<usize>,
    /// Size as WIDTHxHEIGHT, e.g. 832x480 (default: the model's, 832x480 for Wan2.1).
    #[arg(long, conflicts_with_all = ["width", "height"])]
    size: Option<String>,
    /// Denoising steps (default: the model's, 50 for Wan2.1).
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale, 1 or less turns guidance off (default: the model's, 5 for Wan2.1).
    #[arg(long)]
    guidance: Option<f64>,
    /// Guidance of a two-expert model's low-noise expert (Wan2.2 A14B; default: the model's, 3 for T2V-A14B).
    #[arg(long)]
    guidance_2: Option<f64>,
    /// Diffusion-forcing models (SkyReels-V2 DF): frames per window (default: the model's, 97 at 540P).
    #[arg(long, help_heading = "Diffusion forcing (SkyReels-V2 DF)")]
    window_frames: Option<usize>,
    /// Diffusion forcing: frames each window repeats from the video so far (default 17).
    #[arg(long, help_heading = "Diffusion forcing (SkyReels-V2 DF)")]
    overlap_frames: Option<usize>,
    /// Diffusion forcing: noise mixed into the repeated frames, as a timestep (default 20).
    #[arg(long, help_heading = "Diffusion forcing (SkyReels-V2 DF)")]
    addnoise: Option<f64>,
    /// Diffusion forcing: steps each causal block trails the one before (0 = synchronous, 5 asynchronous).
    #[arg(
        long,
        default_value_t = 0,
        help_heading = "Diffusion forcing (SkyReels-V2 DF)"
    )]
    ar_step: usize,
    /// Diffusion forcing: latent frames per causal block (default: the model's; 5 with --ar-step 5).
    #[arg(long, help_heading = "Diffusion forcing (SkyReels-V2 DF)")]
    causal_block: Option<usize>,
    /// Noise seed; a random one is chosen and printed if omitted.
    #[arg(long)]
    seed: Option<u64>,
    /// Sampler: unipc or euler (default: the model folder's scheduler config).
    #[arg(long)]
    scheduler: Option<String>,
    /// Override the sampler's flow shift (Wan2.1 T2V uses 3.0 at 480p, 5.0 at 720p).
    #[arg(long)]
    flow_shift: Option<f64>,
    /// Text tokens per prompt (default: what the model was trained with, 512 for Wan2.1).
    #[arg(long)]
    max_sequence_length: Option<usize>,
    /// Compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    #[command(flatten)]
    weights: weights::WeightArgs,
    #[command(flatten)]
    device: device::DeviceArgs,
    /// Start from this noise: a safetensors file with tensor `latents` of shape (1,16,T,H/8,W/8). With
    /// --video it is the raw noise mixed into the encoded video.
    #[arg(long)]
    init_latents: Option<PathBuf>,
    /// Image to video: this picture (PNG, JPEG, WebP, GIF) is the first frame. A picture of another size is
    /// scaled to cover the video size and cropped at the centre. Needs an image-to-video model.
    #[arg(long, value_name = "FILE", conflicts_with = "video")]
    image: Option<PathBuf>,
    /// First/last frame: this picture is the last frame (with --image). Needs a first/last-frame model.
    #[arg(long, value_name = "FILE", requires = "image")]
    last_image: Option<PathBuf>,
    /// Video to video: restyle this clip (MP4, WebM, GIF, APNG, WebP; others through ffmpeg). Frames default
    /// to the clip's length (rounded down to what the model takes); each frame is fitted to the size as
    /// --image is.
    #[arg(long, value_name = "FILE")]
    video: Option<PathBuf>,
    /// With --video: how much to change it, in (0, 1]: 0.3 keeps it close, 1 ignores it.
    #[arg(long, requires = "video", default_value_t = 0.7)]
    strength: f64,
    /// A picture of what should appear (a character, an object); repeatable. Needs a VACE model.
    #[arg(long, value_name = "FILE", conflicts_with = "image")]
    reference: Vec<PathBuf>,
    /// With --video: what to regenerate, white where new content goes and black where the video stays
    /// (a picture for every frame, or a video of masks). Needs a VACE model.
    #[arg(long, value_name = "FILE", requires = "video")]
    mask: Option<PathBuf>,
    /// Continue this clip by --frames (or --seconds) new frames; the output is the whole clip. Needs a VACE
    /// model or the embedded model.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["image", "video", "extend_backward"])]
    extend: Option<PathBuf>,
    /// Add --frames (or --seconds) new frames before this clip; the output is the whole clip. Needs a VACE
    /// model or the embedded model.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["image", "video"])]
    extend_backward: Option<PathBuf>,
    /// Output file: .mp4 (H.264, default), .webm (AV1), .gif, .png (animated), .webp, a folder or
    /// `name_%04d.png` (PNG sequence), or .npy (float32 frames F,H,W,3 in [0,1]). Default:
    /// sorrel-SEED.mp4.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// Frames per second of the written video (default: the model's native rate, 16 for Wan2.1, 8 for the
    /// embedded model).
    #[arg(long)]
    fps: Option<u32>,
    /// Video codec for .mp4: h264 (plays everywhere) or av1 (royalty-free, smaller, slower).
    #[arg(long, default_value = "h264")]
    codec: String,
    /// Picture quality from 1 (smallest file) to 100 (best) for MP4, WebM and WebP.
    #[arg(long, default_value_t = 75)]
    quality: u8,
    /// Target bitrate in kbit/s for MP4 and WebM, instead of a fixed quality.
    #[arg(long)]
    bitrate: Option<u32>,
    /// Also write the middle frame as a still image (.png, .jpg or .webp).
    #[arg(long)]
    thumbnail: Option<PathBuf>,
    /// Also write a sprite sheet (a 4-column grid of up to 16 frames) as .png, .jpg or .webp.
    #[arg(long)]
    spritesheet: Option<PathBuf>,
    /// No progress bar or timing summary.
    #[arg(long, short = 'q')]
    quiet: bool,
    #[command(flatten)]
    sign: provenance::SignArgs,
}

/// `--size WIDTHxHEIGHT`.
pub(crate) fn parse_wxh(s: &str) -> Result<(usize, usize)> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .with_context(|| format!("--size `{s}` is not WIDTHxHEIGHT (e.g. 832x480)"))?;
    let w = w
        .trim()
        .parse()
        .with_context(|| format!("--size `{s}`: width `{w}` is not a number"))?;
    let h = h
        .trim()
        .parse()
        .with_context(|| format!("--size `{s}`: height `{h}` is not a number"))?;
    Ok((w, h))
}

fn parse_size(args: &GenerateOptions, default: (usize, usize)) -> Result<(usize, usize)> {
    if let Some(s) = &args.size {
        return parse_wxh(s);
    }
    Ok((
        args.width.unwrap_or(default.0),
        args.height.unwrap_or(default.1),
    ))
}

/// `--seconds` as a frame count at `fps` ([`sorrel_pipeline::frames_covering`]), refusing lengths no model
/// could make.
fn seconds_to_frames(seconds: f64, fps: u32, tc: usize) -> Result<usize> {
    if !seconds.is_finite() || seconds <= 0.0 {
        bail!("--seconds {seconds} is not supported: give a positive length such as 5 or 60");
    }
    // Past this, the count is absurd for any model; the model's own limit gives the precise error.
    if seconds > 1e6 {
        bail!("--seconds {seconds} is not supported: that is over eleven days of video");
    }
    Ok(sorrel_pipeline::frames_covering(seconds, fps, tc))
}

pub(crate) fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s {
        "f32" | "fp32" | "float32" => DType::F32,
        "bf16" | "bfloat16" => DType::BF16,
        "f16" | "fp16" | "float16" => DType::F16,
        other => bail!("unknown dtype `{other}`: use f32, bf16 or f16"),
    })
}

fn load_init_latents(path: &PathBuf) -> Result<candle_core::Tensor> {
    let mut t = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("cannot read init latents from {}", path.display()))?;
    t.remove("latents")
        .with_context(|| format!("{} has no tensor named `latents`", path.display()))?
        .to_dtype(DType::F32)
        .context("init latents are not a float tensor")
}

fn picture(frame: sorrel_media::Frame) -> Picture {
    Picture {
        width: frame.width as usize,
        height: frame.height as usize,
        rgb: frame.rgb,
    }
}

fn read_clip(flag: &str, path: &Path) -> Result<Vec<Picture>> {
    let clip = sorrel_media::read_video(path)
        .with_context(|| format!("{flag} {}: not a video Sorrel can read", path.display()))?;
    Ok(clip.frames().iter().cloned().map(picture).collect())
}

fn read_picture(flag: &str, path: &Path) -> Result<Picture> {
    Ok(picture(sorrel_media::read_image(path).with_context(
        || format!("{flag} {}: not a picture Sorrel can read", path.display()),
    )?))
}

/// What the flags give besides the prompt, read before any weights load.
enum Inputs {
    /// A conditioning used as is.
    Plain(Conditioning),
    /// A clip to extend (`backward`: before it).
    Extend { clip: Vec<Picture>, backward: bool },
    /// Two clips to join.
    Connect(Vec<Picture>, Vec<Picture>),
}

impl Inputs {
    fn read(args: &GenerateOptions, connect: Option<&(PathBuf, PathBuf)>) -> Result<Self> {
        if let Some((a, b)) = connect {
            return Ok(Inputs::Connect(
                read_clip("first clip", a)?,
                read_clip("second clip", b)?,
            ));
        }
        if let Some(p) = &args.extend {
            return Ok(Inputs::Extend {
                clip: read_clip("--extend", p)?,
                backward: false,
            });
        }
        if let Some(p) = &args.extend_backward {
            return Ok(Inputs::Extend {
                clip: read_clip("--extend-backward", p)?,
                backward: true,
            });
        }
        if let Some(path) = &args.image {
            return Ok(Inputs::Plain(Conditioning::Image {
                first: read_picture("--image", path)?,
                last: args
                    .last_image
                    .as_ref()
                    .map(|p| read_picture("--last-image", p))
                    .transpose()?,
            }));
        }
        let video = args
            .video
            .as_ref()
            .map(|p| read_clip("--video", p))
            .transpose()?;
        if args.mask.is_some() || !args.reference.is_empty() {
            let mask = match (&args.mask, &video) {
                (Some(p), Some(v)) => {
                    let m = read_clip("--mask", p)?;
                    // One picture masks every frame.
                    Some(if m.len() == 1 {
                        vec![m[0].clone(); v.len()]
                    } else {
                        m
                    })
                }
                _ => None,
            };
            let references = args
                .reference
                .iter()
                .map(|p| read_picture("--reference", p))
                .collect::<Result<_>>()?;
            return Ok(Inputs::Plain(Conditioning::Compose {
                video,
                mask,
                references,
            }));
        }
        Ok(Inputs::Plain(match video {
            Some(frames) => Conditioning::Video {
                frames,
                strength: args.strength,
            },
            None => Conditioning::None,
        }))
    }

    /// The size of the given clips, which extension and connection keep.
    fn clip_size(&self) -> Option<(usize, usize)> {
        match self {
            Inputs::Extend { clip, .. } | Inputs::Connect(clip, _) => {
                clip.first().map(|p| (p.width, p.height))
            }
            Inputs::Plain(_) => None,
        }
    }
}

/// The prompt `connect` uses when none is given. A model trained with given frames learnt an empty caption
/// (the share of captions dropped for guidance) and reads the scene from the clips; a sentence outside its
/// vocabulary would only reach it as unknown tokens. Other models get a neutral sentence.
fn default_connect_prompt(info: &sorrel_pipeline::ModelInfo) -> &'static str {
    if info.defaults.rolls_out() {
        ""
    } else {
        "the scene continues smoothly in one shot"
    }
}

/// `generate` and `connect` (which gives the two clips, and may leave the prompt out).
fn generate(
    prompt: Option<&str>,
    args: &GenerateOptions,
    connect: Option<(PathBuf, PathBuf)>,
) -> Result<()> {
    // Check everything cheap before loading weights or spending minutes generating; a bad certificate
    // first, in milliseconds.
    let identity = args.sign.identity()?;
    let model = match &args.model {
        Some(m) => hub::resolve_model(m, args.quiet)?,
        None => embedded::model_dir()?,
    };
    let info = WanPipeline::describe(&model)?;
    let defaults = &info.defaults;
    let prompt = prompt.unwrap_or_else(|| default_connect_prompt(&info));
    let inputs = Inputs::read(args, connect.as_ref())?;
    let (width, height) = parse_size(
        args,
        inputs
            .clip_size()
            .unwrap_or((defaults.width, defaults.height)),
    )?;
    let dtype = parse_dtype(&args.dtype)?;
    let seed = args.seed.unwrap_or_else(rand_seed);
    let out_path = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("sorrel-{seed}.mp4")));
    let encode = EncodeOptions {
        codec: args.codec.parse()?,
        quality: args.quality,
        bitrate_kbps: args.bitrate,
        ..EncodeOptions::default()
    };
    let target = OutputTarget::parse(&out_path, &encode)?;
    for still in [&args.thumbnail, &args.spritesheet].into_iter().flatten() {
        StillFormat::from_path(still)?;
        sorrel_media::check_writable(still)?;
    }
    if let Some(fps) = args.fps {
        if !(1..=sorrel_media::MAX_FPS).contains(&fps) {
            bail!(
                "--fps {fps} is not supported: use a whole number from 1 to {}",
                sorrel_media::MAX_FPS
            );
        }
    }
    let init_latents = args
        .init_latents
        .as_ref()
        .map(load_init_latents)
        .transpose()?;
    let tc = info.compression.1;
    // A diffusion-forcing model extends a clip by whole latent frames (tc new frames each), not 1 + k tc.
    let forcing_extends = info.diffusion_forcing.is_some()
        && matches!(inputs, Inputs::Extend { .. } | Inputs::Connect(..));
    let asked = args
        .seconds
        .map(|s| {
            seconds_to_frames(s, defaults.fps, tc).map(|n| match forcing_extends {
                true => (n - 1).max(1).div_ceil(tc) * tc,
                false => n,
            })
        })
        .transpose()?
        .or(args.frames);
    // A model trained with given frames continues and joins clips itself, window by window; a VACE model
    // generates one window and it is spliced between the clips.
    let continues = info.can(Mode::Continue);
    // --frames counts the new frames of an extension or a join: by default one window's worth.
    let new_frames = asked.unwrap_or(if forcing_extends {
        defaults.frames / tc * tc
    } else if continues {
        defaults.frames
    } else {
        defaults
            .frames
            .saturating_sub(sorrel_pipeline::compose::context_frames(tc))
            .max(1)
    });
    let (conditioning, splice) = match inputs {
        Inputs::Plain(c) => (c, None),
        Inputs::Extend { clip, backward } if continues => {
            let (before, after) = if backward {
                (vec![], clip)
            } else {
                (clip, vec![])
            };
            (Conditioning::Continue { before, after }, None)
        }
        Inputs::Connect(before, after) if continues => {
            (Conditioning::Continue { before, after }, None)
        }
        Inputs::Extend { clip, backward } => {
            let s = Splice::extend(&clip, new_frames, backward, tc, (width, height))?;
            (s.conditioning.clone(), Some(s))
        }
        Inputs::Connect(a, b) => {
            let s = Splice::connect(&a, &b, new_frames, tc, (width, height))?;
            (s.conditioning.clone(), Some(s))
        }
    };
    let frames = match (&conditioning, &splice, asked) {
        (_, Some(s), _) => s.frames,
        (Conditioning::Continue { .. }, None, _) => new_frames,
        (_, None, Some(n)) => n,
        // A given video sets the length, down to the nearest count the VAE takes.
        (
            Conditioning::Video { frames, .. }
            | Conditioning::Compose {
                video: Some(frames),
                ..
            },
            None,
            None,
        ) => ((frames.len().min(defaults.max_frames) - 1) / tc * tc + 1).max(1),
        (_, None, None) => defaults.frames,
    };
    let req = GenerateRequest {
        prompt: prompt.to_string(),
        negative_prompt: args.negative_prompt.clone(),
        width,
        height,
        frames,
        steps: args.steps.unwrap_or(defaults.steps),
        guidance: args.guidance.unwrap_or(defaults.guidance),
        guidance_2: args.guidance_2.or(defaults.guidance_2),
        seed,
        max_sequence_length: args.max_sequence_length,
        scheduler: args.scheduler.clone(),
        flow_shift: args.flow_shift,
        init_latents,
        conditioning,
        forcing: sorrel_pipeline::Forcing {
            window_frames: args.window_frames,
            overlap_frames: args.overlap_frames,
            addnoise: args.addnoise,
            ar_step: args.ar_step,
            causal_block: args.causal_block,
            sample_fps: None,
        },
    };
    // The mode first: a model that cannot do it makes every other detail moot.
    info.check_mode(req.mode())?;
    req.check()?;
    req.check_for(&info)?;
    if let (Conditioning::Image { first, .. }, false) = (&req.conditioning, args.quiet) {
        if (first.width, first.height) != (width, height) {
            eprintln!(
                "note: --image is {}x{}; it is scaled to cover {width}x{height} and cropped at the centre",
                first.width, first.height
            );
        }
    }

    let device = args.device.open(args.quiet)?;
    let t0 = Instant::now();
    let pipe = WanPipeline::load(
        &model,
        &args.weights.apply(LoadOptions {
            dtype,
            device,
            ..LoadOptions::default()
        }),
    )?;
    req.validate(&pipe)?;
    let _ = JOB.set(format!(
        "a {width}x{height} video of {} frames on {}",
        req.frames,
        sorrel_core::device::describe(pipe.device())
    ));
    // Refused now, with what to change, rather than killed by the kernel halfway through.
    pipe.check_memory(&req, None)?;
    let load_time = t0.elapsed();

    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(req.steps as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {pos}/{len} steps  {elapsed} elapsed, ETA {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    // A video made window by window says which window it is on, and how many frames are written.
    let window = std::cell::Cell::new(None::<(usize, usize)>);
    let written_frames = std::cell::Cell::new(0usize);
    let total_frames = req.frames
        + match &req.conditioning {
            Conditioning::Continue { before, after } => before.len() + after.len(),
            _ => 0,
        };
    let stage_message = |stage: &str| match window.get() {
        Some((i, n)) => format!(
            "window {i}/{n}, {} of {} frames written, {stage}",
            written_frames.get(),
            total_frames
        ),
        None => stage.to_string(),
    };
    // Whether `--vae-tiling auto` tiled the decode (the memory was short): said once the bar is gone.
    let tiled = std::cell::Cell::new(false);
    let mut on_event = |ev: &Event| {
        match ev {
            Event::Stage(s) => {
                tiled.set(tiled.get() || *s == "vae decode in tiles");
                bar.set_message(stage_message(s))
            }
            Event::Window { index, total } => {
                window.set(Some((*index, *total)));
                bar.set_message(stage_message("denoising"));
            }
            Event::Step { index, total, .. } => {
                // Video to video runs only the last part of the schedule.
                bar.set_length(*total as u64);
                bar.set_position(*index as u64)
            }
        }
        true
    };

    let fps = args.fps.unwrap_or_else(|| pipe.native_fps());
    // Each run gets its own payload (seed and a fresh nonce), so two files with one seed stay apart.
    let (mark, watermark) = match args
        .sign
        .watermark
        .embedder(&format!("{seed}-{:016x}", rand_seed()))
    {
        Some((e, payload)) => (Some(e), Some(payload)),
        None => (None, None),
    };
    let mut encode_time = std::time::Duration::ZERO;
    // Extension and connection write the whole clip: the given frames around the new ones, so those
    // collect the new frames first; everything else streams its frames to the file as they are decoded
    // (a diffusion-forcing model window by window).
    let (made, out) = match (&splice, &req.conditioning) {
        (Some(_), _) | (None, Conditioning::Continue { .. }) if !forcing_extends => {
            let video = pipe.generate(&req, &mut on_event)?;
            let frames = match (&splice, &req.conditioning) {
                (Some(s), _) => s.assemble(&video.frames)?,
                (None, Conditioning::Continue { before, after }) => {
                    sorrel_pipeline::join_clips(before, &video.frames, after)?
                }
                _ => unreachable!("matched above"),
            };
            let t_enc = Instant::now();
            let mut out = target.stream(fps, &encode, mark)?;
            out.push(&frames, frames.dim(0)?)?;
            encode_time += t_enc.elapsed();
            let made = sorrel_pipeline::Streamed {
                frames: frames.dim(0)?,
                timings: video.timings,
                unknown_words: video.unknown_words,
            };
            (made, out)
        }
        _ => {
            let mut out = target.stream(fps, &encode, mark)?;
            // A diffusion-forcing extension writes the clip first, then the new frames as they come.
            let lead = match &req.conditioning {
                Conditioning::Continue { before, .. } => {
                    let given = sorrel_pipeline::rollout::as_frames(
                        before,
                        (width, height),
                        pipe.device(),
                    )?;
                    out.push(&given, before.len() + req.frames)?;
                    before.len()
                }
                _ => 0,
            };
            written_frames.set(lead);
            let mut made =
                pipe.generate_streamed(&req, &mut on_event, &mut |frames: &Tensor, total| {
                    let t_enc = Instant::now();
                    out.push(frames, lead + total)
                        .map_err(|e| sorrel_core::Error::Output(format!("{e:#}")))?;
                    encode_time += t_enc.elapsed();
                    written_frames.set(written_frames.get() + frames.dim(0)?);
                    Ok(())
                })?;
            made.frames += lead;
            (made, out)
        }
    };
    bar.finish_and_clear();
    if tiled.get() && args.weights.vae_tiling.is_none() {
        eprintln!(
            "note: the VAE decoded in 256-pixel tiles, as whole frames would not fit in the memory available \
             (--vae-tiling on|off chooses)"
        );
    }
    if !made.unknown_words.is_empty() {
        eprintln!(
            "warning: the tokenizer does not know: {}",
            made.unknown_words.join(", ")
        );
    }
    let (f, h, w) = (made.frames, height, width);
    if !args.quiet {
        eprintln!("encoding {f} frames at {fps} fps...");
    }
    let t_enc = Instant::now();
    let signer = provenance::Signer {
        identity,
        generation: sorrel_provenance::Generation {
            model: args.weights.describe(match &args.model {
                Some(m) => model_name(m),
                None => embedded::NAME.to_string(),
            }),
            seed,
            steps: req.steps,
            prompt: args.sign.record_prompt.then(|| prompt.to_string()),
            watermark,
        },
    };
    let (written, signed, stills) = out.finish(&signer)?;
    // Stills are PNG, JPEG or WebP, which always carry credentials.
    write_stills(args, &stills, &signer)?;
    encode_time += t_enc.elapsed();
    if !args.quiet {
        eprintln!("load {:.2}s", load_time.as_secs_f64());
        for line in timing_lines(&made.timings) {
            eprintln!("{line}");
        }
        eprintln!("encode {:.2}s", encode_time.as_secs_f64());
    }
    println!(
        "wrote {}: {f} frames {w}x{h} at {fps} fps ({:.4} s), seed {seed}",
        target.describe(&written, &encode),
        f as f64 / fps as f64
    );
    match (watermark, &target) {
        (Some(p), OutputTarget::Media { .. }) => println!("invisible watermark embedded, payload {p:016x}"),
        (Some(_), OutputTarget::Npy(_)) => eprintln!(
            "note: .npy holds the exact, unmarked frames; only video and image outputs carry the watermark"
        ),
        (None, _) => eprintln!("note: --no-watermark: the frames carry no invisible watermark"),
    }
    match signed {
        provenance::Signature::Embedded => println!(
            "signed content credentials (C2PA, {})",
            signer.identity.origin
        ),
        provenance::Signature::Sidecar(sidecar) => eprintln!(
            "note: {} cannot carry C2PA content credentials inside; they are in the sidecar {} (signed, {}): \
             keep the two together",
            out_path.display(),
            sidecar.display(),
            signer.identity.origin
        ),
        provenance::Signature::Unsigned => eprintln!(
            "note: {} cannot carry C2PA content credentials and is not signed; write .mp4, .png, .gif, .webp \
             or .webm for a signed file",
            out_path.display()
        ),
    }
    Ok(())
}

/// The model's name for the credentials: its folder's name.
fn model_name(dir: &std::path::Path) -> String {
    dir.canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
        .unwrap_or_else(|| dir.display().to_string())
}

/// The `--thumbnail` and `--spritesheet` images, if asked for, signed.
fn write_stills(
    args: &GenerateOptions,
    stills: &output::Stills,
    signer: &provenance::Signer,
) -> Result<()> {
    let still = |path: &std::path::Path, frame: &sorrel_media::Frame| -> Result<()> {
        let bytes = sorrel_media::encode_still(frame, StillFormat::from_path(path)?)?;
        signer.write(path, &bytes)?;
        Ok(())
    };
    if let Some(path) = &args.thumbnail {
        still(path, &stills.thumbnail)?;
        println!("wrote thumbnail {}", path.display());
    }
    if let Some(path) = &args.spritesheet {
        still(path, &stills.sprite_sheet)?;
        println!("wrote sprite sheet {}", path.display());
    }
    Ok(())
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// The stage timings as lines to print, the denoising steps summed into one line where they first appear
/// (a minute-long rollout runs thousands of steps; one line each would bury the rest).
fn timing_lines(timings: &[(String, std::time::Duration)]) -> Vec<String> {
    let is_step = |name: &str| name.starts_with("step ");
    let steps: Vec<f64> = timings
        .iter()
        .filter(|(n, _)| is_step(n))
        .map(|(_, d)| d.as_secs_f64())
        .collect();
    let mut lines = Vec::new();
    let mut steps_said = false;
    for (name, d) in timings {
        if !is_step(name) {
            lines.push(format!("{name} {:.2}s", d.as_secs_f64()));
        } else if !steps_said {
            steps_said = true;
            let total: f64 = steps.iter().sum();
            lines.push(format!(
                "{} denoising steps {total:.2}s ({:.3}s each)",
                steps.len(),
                total / steps.len() as f64
            ));
        }
    }
    lines
}

/// The video being made (`832x480, 81 frames`, model and device), for an error the GPU raises halfway
/// through: it comes back from deep inside candle with no size attached.
static JOB: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn main() -> ExitCode {
    let cli = Cli::parse();
    // SAFETY: first thing in `main` after parsing the arguments: no other thread exists yet.
    unsafe { sorrel_core::threads::pin_thread_counts() };
    let result = match cli.command {
        Command::Generate(args) => generate(Some(&args.prompt), &args.opts, None),
        Command::Connect(args) => generate(
            args.prompt.as_deref(),
            &args.opts,
            Some((args.first.clone(), args.second.clone())),
        ),
        Command::Serve(args) => serve::serve(args),
        Command::Worker(args) => serve::worker(args),
        Command::Train(args) => train::train(args),
        Command::Film(args) => film::film(args),
        Command::Eval(args) => eval::eval(args),
        Command::Models(args) => hub::run(args),
        Command::Verify(args) => match provenance::verify(args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if sorrel_core::device::is_gpu_out_of_memory(&format!("{e:#}")) {
                // The check before generating estimates; this is what the GPU itself refused.
                let job = JOB.get().map(|j| format!(" for {j}")).unwrap_or_default();
                eprintln!(
                    "the GPU ran out of memory{job}: ask for a smaller size or fewer frames, use --dtype bf16 \
                     or --vae-tiling on, free the GPU (nvidia-smi lists what holds it), or use --device cpu"
                );
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::seconds_to_frames;

    #[test]
    fn seconds_round_up_to_frames_the_vae_takes() {
        // Wan's own 5 s: 81 frames at 16 fps.
        assert_eq!(seconds_to_frames(5.0, 16, 4).unwrap(), 81);
        // A minute at 24 fps lasts at least a minute: 1441 frames.
        assert_eq!(seconds_to_frames(60.0, 24, 4).unwrap(), 1441);
        // Exactly 4k + 1 stays.
        assert_eq!(seconds_to_frames(81.0 / 16.0, 16, 4).unwrap(), 81);
        // A VAE that keeps every frame takes the count as is.
        assert_eq!(seconds_to_frames(2.0, 8, 1).unwrap(), 16);
        assert!(seconds_to_frames(0.0, 8, 1).is_err());
    }
}
