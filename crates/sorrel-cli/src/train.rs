//! `sorrel train`: trains the embedded toy-world model from scratch (or continues a run), with a progress
//! bar per stage and a loss log in the work folder.

use std::path::PathBuf;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use sorrel_train::toyworld::{self, Recipe, StageProgress};

/// Train the embedded toy-world model from scratch (VAE, then text encoder + transformer, then the VAE's
/// decoder alone).
#[derive(clap::Args)]
pub struct TrainArgs {
    /// Where to write the trained model folder (replaced atomically when training ends).
    #[arg(long, short = 'o', default_value = "sorrel-toyworld")]
    pub out: PathBuf,
    /// Folder for checkpoints, cached latents and the loss log.
    #[arg(long, default_value = "sorrel-train-run")]
    pub work: PathBuf,
    /// Continue the run in --work from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// VAE optimiser steps (default: the recipe's).
    #[arg(long)]
    pub vae_steps: Option<u64>,
    /// Transformer optimiser steps (default: the recipe's).
    #[arg(long)]
    pub dit_steps: Option<u64>,
    /// Final transformer steps over which the learning rate falls to zero (default: the recipe's; 0 keeps
    /// it constant).
    #[arg(long)]
    pub dit_lr_decay_steps: Option<u64>,
    /// Decoder-stage optimiser steps (default: the recipe's; 0 skips the stage).
    #[arg(long)]
    pub decoder_steps: Option<u64>,
    /// Run only the decoder stage, on this model folder (one `sorrel train` wrote without it), and write
    /// the result to --out: the same model a run from scratch gives, without retraining the transformer.
    #[arg(long, value_name = "MODEL_DIR")]
    pub refine: Option<PathBuf>,
    /// Train only the text encoder and transformer, starting from this model folder's (one `sorrel train`
    /// wrote, same sizes), and write them with its VAE to --out: the latents and transformer stages alone.
    #[arg(long, value_name = "MODEL_DIR", conflicts_with = "refine")]
    pub from: Option<PathBuf>,
    /// Transformer learning rate (default: the recipe's).
    #[arg(long)]
    pub dit_lr: Option<f64>,
    /// Share of transformer clips trained with clean frames given, in [0, 1] (default: the recipe's).
    #[arg(long)]
    pub context_share: Option<f64>,
    /// Relative weights of the four ways frames are given, "IMAGE,FORWARD,BACKWARD,JOIN" (e.g. 1,2,1,1; default: the recipe's).
    #[arg(long, value_name = "I,F,B,J", value_delimiter = ',')]
    pub context_kinds: Option<Vec<f64>>,
    /// Share of paraphrased captions that name no floor, in [0, 1] (default: the recipe's).
    #[arg(long)]
    pub floorless_share: Option<f64>,
    /// Share of transformer clips whose slices to generate get independent noise levels (diffusion forcing
    /// proper), in [0, 1] (default: the recipe's).
    #[arg(long)]
    pub slice_noise_share: Option<f64>,
    /// Shift of the transformer's training noise levels towards pure noise, as the sampler's flow shift
    /// moves its own (1: none; default: the recipe's).
    #[arg(long)]
    pub noise_shift: Option<f64>,
    #[command(flatten)]
    pub device: crate::device::DeviceArgs,
    /// Use the tiny smoke-test recipe (seconds; for checking the machinery, not a usable model).
    #[arg(long)]
    pub smoke: bool,
    /// No progress bars.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Runs `sorrel train`.
pub fn train(args: TrainArgs) -> Result<()> {
    let mut recipe = if args.smoke {
        Recipe::smoke()
    } else {
        Recipe::default()
    };
    if let Some(s) = args.vae_steps {
        recipe.vae_steps = s;
    }
    if let Some(s) = args.dit_steps {
        recipe.dit_steps = s;
    }
    if let Some(s) = args.dit_lr_decay_steps {
        recipe.dit_lr_decay_steps = s;
    }
    if let Some(lr) = args.dit_lr {
        recipe.dit_lr = lr;
    }
    if let Some(s) = args.decoder_steps {
        recipe.decoder_steps = s;
    }
    if let Some(s) = args.context_share {
        recipe.context_share = s;
    }
    if let Some(s) = args.floorless_share {
        recipe.floorless_share = s;
    }
    if let Some(s) = args.slice_noise_share {
        recipe.slice_noise_share = s;
    }
    if let Some(s) = args.noise_shift {
        recipe.noise_shift = s;
    }
    if let Some(k) = args.context_kinds {
        recipe.context_kinds = k.try_into().map_err(|k: Vec<f64>| {
            anyhow::anyhow!(
                "--context-kinds takes four weights (image, forward, backward, join), e.g. 1,2,1,1; got {}",
                k.len()
            )
        })?;
    }
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(1)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>28} [{bar:30}] {pos}/{len}  {elapsed} elapsed, ETA {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let mut stage = "";
    let mut on_progress = |p: &StageProgress| {
        if p.stage != stage {
            stage = p.stage;
            bar.reset();
            bar.set_length(p.total);
        }
        bar.set_position(p.done);
        if p.stage == "latents" {
            bar.set_message("encoding latents");
        } else {
            bar.set_message(format!("{} loss {:.4}", p.stage, p.loss));
        }
    };
    let device = args.device.open(args.quiet)?;
    let t0 = std::time::Instant::now();
    match (&args.refine, &args.from) {
        (_, Some(model)) => toyworld::continue_from(
            &recipe,
            model,
            &args.work,
            &args.out,
            args.resume,
            &device,
            &mut on_progress,
        )?,
        (Some(model), None) => toyworld::refine(
            &recipe,
            model,
            &args.work,
            &args.out,
            args.resume,
            &device,
            &mut on_progress,
        )?,
        (None, None) => toyworld::train(
            &recipe,
            &args.work,
            &args.out,
            args.resume,
            &device,
            &mut on_progress,
        )?,
    }
    bar.finish_and_clear();
    eprintln!(
        "trained in {:.1} min; model written to {} (loss log: {})",
        t0.elapsed().as_secs_f64() / 60.0,
        args.out.display(),
        args.work.join("loss.csv").display()
    );
    Ok(())
}
