//! `sorrel eval`: scores a toy-world model (the embedded one by default) on prompts no training clip used.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::DType;
use indicatif::{ProgressBar, ProgressStyle};
use sorrel_pipeline::{LoadOptions, WanPipeline};
use sorrel_train::toyworld::eval::{self, EvalOptions};

/// Generate clips for held-out-seed toy-world prompts and score colour, shape, count, direction, object
/// permanence and bounce physics.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// Model folder trained by `sorrel train` (default: the embedded model).
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// Prompts per split.
    #[arg(long, default_value_t = 100)]
    pub clips: usize,
    #[command(flatten)]
    pub device: crate::device::DeviceArgs,
    /// Also score the combinations kept out of training (yellow boxes; three objects shrinking).
    #[arg(long)]
    pub held_out: bool,
    /// Denoising steps (default: the model's).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Guidance scale (default: the model's).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Write the full report (every clip's scores) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// For a model that rolls out (the embedded one): minute-long rollouts to score, each a different
    /// scene (0: none).
    #[arg(long, default_value_t = 20)]
    pub rollouts: usize,
    /// Length of each rollout in seconds.
    #[arg(long, default_value_t = 60)]
    pub rollout_seconds: usize,
    /// Skip the held-out paraphrase, image-to-video and joining rows (text to video only).
    #[arg(long)]
    pub text_only: bool,
    /// Write a PNG contact sheet of the rollouts here: one row per rollout, one frame every 4 seconds.
    #[arg(long)]
    pub rollout_sheet: Option<PathBuf>,
    /// Write a PNG contact sheet of the first clips here (one row per clip).
    #[arg(long)]
    pub contact_sheet: Option<PathBuf>,
    /// Rows of the contact sheet.
    #[arg(long, default_value_t = 8)]
    pub rows: usize,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Runs `sorrel eval`.
pub fn eval(args: EvalArgs) -> Result<()> {
    if args.clips == 0 || args.clips > 100_000 {
        anyhow::bail!("--clips {} is not supported: use 1 to 100000", args.clips);
    }
    if args.rollout_seconds == 0 || args.rollout_seconds > sorrel_pipeline::rollout::MAX_SECONDS {
        anyhow::bail!(
            "--rollout-seconds {} is not supported: use 1 to {}",
            args.rollout_seconds,
            sorrel_pipeline::rollout::MAX_SECONDS
        );
    }
    let model = match &args.model {
        Some(m) => m.clone(),
        None => crate::embedded::model_dir()?,
    };
    let device = args.device.open(args.quiet)?;
    let pipe = WanPipeline::load(
        &model,
        &LoadOptions {
            dtype: DType::F32,
            device,
            ..LoadOptions::default()
        },
    )?;
    let total = args.clips * if args.held_out { 2 } else { 1 };
    if !args.quiet && pipe.info.defaults.rolls_out() && !args.text_only {
        eprintln!(
            "scoring text to video, held-out paraphrases, image to video, joins ({} each) and {} rollouts of {} s (--text-only or --rollouts 0 for less)",
            args.clips, args.rollouts, args.rollout_seconds
        );
    }
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("scoring [{bar:30}] {pos}/{len} clips  {elapsed}, ETA {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let report = eval::evaluate(
        &pipe,
        &EvalOptions {
            clips: args.clips,
            held_out: args.held_out,
            steps: args.steps,
            guidance: args.guidance,
            offset: 0,
            modes: !args.text_only,
            rollouts: if args.text_only { 0 } else { args.rollouts },
            rollout_seconds: args.rollout_seconds,
        },
        &mut |done, all| {
            bar.set_length(all as u64);
            bar.set_position(done as u64)
        },
    )?;
    bar.finish_and_clear();
    print!("{}", eval::markdown_table(&report));
    println!("{:.2} s per clip", report.seconds_per_clip);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        sorrel_media::write_file(path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.contact_sheet {
        let size = pipe.info.defaults.width;
        let (img, w, h) = eval::contact_sheet(&report.clips, size, args.rows, 4);
        sorrel_train::toyworld::export::write_png(path, &img, w, h)?;
    }
    if let Some(path) = &args.rollout_sheet {
        let rows: Vec<eval::EvalClip> = report
            .rollout_frames
            .iter()
            .map(|(prompt, frames)| eval::EvalClip {
                split: "rollout",
                prompt: prompt.clone(),
                score: Default::default(),
                frames: frames.clone(),
            })
            .collect();
        if rows.is_empty() {
            anyhow::bail!("--rollout-sheet: this model made no rollouts (it does not roll out, or --rollouts 0)");
        }
        let size = pipe.info.defaults.width;
        let (img, w, h) = eval::contact_sheet(&rows, size, args.rows, 2);
        sorrel_train::toyworld::export::write_png(path, &img, w, h)?;
    }
    Ok(())
}
