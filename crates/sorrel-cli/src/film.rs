//! `sorrel film`: a story (or an edited plan) to one film, shot by shot, with each finished shot cached so a
//! crash or Ctrl-C resumes where it stopped and an edited plan re-renders only the shots that changed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use sorrel_film::{FilmEvent, FilmLayout, RenderOptions};
use sorrel_media::{Clip, EncodeOptions};
use sorrel_pipeline::film::{plan_story, Plan, PlannerOptions};
use sorrel_pipeline::{LoadOptions, WanPipeline};

use crate::output::OutputTarget;
use crate::{embedded, provenance};

/// Make a film from a story: one shot per sentence, recurring characters kept, long takes continued.
#[derive(clap::Args)]
pub struct FilmArgs {
    /// The story (plain text: one sentence a shot, paragraphs as scenes, "Ruby is a small red ball." to
    /// name a character) or a plan file written by --plan-only (JSON; format in docs/film.md).
    pub story: PathBuf,
    /// The film to write (.mp4). Shots, character pictures and the cache go to --work.
    #[arg(long, short = 'o', default_value = "film.mp4")]
    pub output: PathBuf,
    /// Write the plan here and stop, for a person to edit; `sorrel film plan.json` renders it.
    #[arg(long, value_name = "PLAN_JSON")]
    pub plan_only: Option<PathBuf>,
    /// Folder for the finished shots (one file each), the character pictures, the plan and the cache that
    /// makes a rerun resume (default: the output's name with `.film`, e.g. film.film/).
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// The storyboard sheet (PNG: one frame per shot beside its line of text). Default: the output's name
    /// with `.storyboard.png`.
    #[arg(long)]
    pub storyboard: Option<PathBuf>,
    /// Length of shots whose sentence gives none ("for 30 seconds" gives one), in seconds.
    #[arg(long, default_value_t = 2.0)]
    pub shot_seconds: f64,
    /// Frame size, WIDTHxHEIGHT (default: the model's).
    #[arg(long)]
    pub size: Option<String>,
    /// Model folder or Hugging Face id, as `sorrel generate --model` (default: the embedded toy-world model).
    #[arg(long, short = 'm', env = "SORREL_MODEL")]
    pub model: Option<PathBuf>,
    /// Denoising steps (default: the model's).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Guidance scale (default: the model's).
    #[arg(long)]
    pub guidance: Option<f64>,
    #[command(flatten)]
    pub weights: crate::weights::WeightArgs,
    #[command(flatten)]
    pub device: crate::device::DeviceArgs,
    /// Plan with a chat model at this OpenAI-compatible endpoint (e.g. http://localhost:8080/v1) instead of
    /// the built-in planner; the answer must be a plan under the schema it is sent.
    #[arg(long, value_name = "URL", requires = "planner_model")]
    pub planner_url: Option<String>,
    /// The chat model to plan with (with --planner-url).
    #[arg(long, value_name = "NAME", requires = "planner_url")]
    pub planner_model: Option<String>,
    /// API key for the planner endpoint.
    #[arg(long, env = "SORREL_PLANNER_API_KEY", hide_env_values = true)]
    pub planner_key: Option<String>,
    /// When the chat planner fails, plan with the built-in planner instead (with a warning).
    #[arg(long, requires = "planner_url")]
    pub planner_fallback: bool,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    #[command(flatten)]
    pub sign: provenance::SignArgs,
}

/// Reads STORY as a plan when it is one, else plans it with the built-in planner.
fn read_plan(args: &FilmArgs) -> Result<Plan> {
    let text = std::fs::read_to_string(&args.story)
        .with_context(|| format!("cannot read the story {}", args.story.display()))?;
    let origin = args.story.display().to_string();
    if text.trim_start().starts_with('{') {
        return Ok(Plan::from_json(&text, &origin)?);
    }
    let built_in = || -> Result<Plan> {
        Ok(plan_story(
            &text,
            &PlannerOptions {
                shot_seconds: args.shot_seconds,
            },
        )?)
    };
    let (Some(url), Some(model)) = (&args.planner_url, &args.planner_model) else {
        return built_in();
    };
    if text.trim().is_empty() {
        // The same refusal as the built-in planner's, before asking anyone.
        return built_in();
    }
    match crate::planner_chat::plan_with_chat(&text, url, model, args.planner_key.as_deref()) {
        Ok(plan) => Ok(plan),
        Err(e) if args.planner_fallback => {
            eprintln!("warning: {e:#}; planning with the built-in planner (--planner-fallback)");
            built_in()
        }
        Err(e) => Err(e.context(
            "the chat planner failed (pass --planner-fallback to use the built-in planner instead)",
        )),
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "film".into());
    path.with_file_name(format!("{stem}{suffix}"))
}

/// `sorrel film`.
pub fn film(args: FilmArgs) -> Result<()> {
    let plan = read_plan(&args)?;
    if let Some(path) = &args.plan_only {
        sorrel_media::write_file(path, plan.to_json().as_bytes())?;
        let seconds: f64 = plan.shots.iter().map(|s| s.seconds).sum();
        println!(
            "wrote {}: {} shots, {} characters, {seconds:.1} s; edit it, then `sorrel film {}`",
            path.display(),
            plan.shots.len(),
            plan.characters.len(),
            path.display()
        );
        return Ok(());
    }
    let identity = args.sign.identity()?;
    let encode = EncodeOptions::default();
    let target = OutputTarget::parse(&args.output, &encode)?;
    let board_path = args
        .storyboard
        .clone()
        .unwrap_or_else(|| with_suffix(&args.output, ".storyboard.png"));
    sorrel_media::check_writable(&board_path)?;
    let work = args
        .work
        .clone()
        .unwrap_or_else(|| with_suffix(&args.output, ".film"));
    let model = match &args.model {
        Some(m) => crate::hub::resolve_model(m, args.quiet)?,
        None => embedded::model_dir()?,
    };
    let model_name = args.weights.describe(match &args.model {
        Some(m) => m.display().to_string(),
        None => embedded::NAME.to_string(),
    });
    let info = WanPipeline::describe(&model)?;
    // What the plan needs from the model, said before any work.
    let size = args.size.as_deref().map(crate::parse_wxh).transpose()?;
    let layout = FilmLayout::new(&info, &plan, &model_name, size, args.steps, args.guidance)?;
    let (width, height, fps, steps) = (layout.width, layout.height, layout.fps, layout.steps);
    let fingerprint = sorrel_film::model_fingerprint(&model)? + &args.weights.fingerprint()?;
    let device = args.device.open(args.quiet)?;
    let pipe = WanPipeline::load(
        &model,
        &args.weights.apply(LoadOptions {
            dtype: DType::F32,
            device,
            ..LoadOptions::default()
        }),
    )?;
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(layout.total_frames() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:30}] {pos}/{len} frames  {elapsed} elapsed, ETA {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let opts = RenderOptions {
        work: work.clone(),
        fingerprint,
        memory_room: None,
    };
    let rendered = sorrel_film::render(&pipe, &plan, &layout, &opts, &mut |ev| {
        match ev {
            FilmEvent::Frames { done, label } => {
                bar.set_message(label);
                bar.set_position(done as u64);
            }
            FilmEvent::Line(line) => say(&bar, args.quiet, line),
        }
        true
    })?;
    bar.finish_and_clear();
    if !rendered.unknown_words.is_empty() {
        eprintln!(
            "warning: the tokenizer does not know: {}",
            rendered.unknown_words.join(", ")
        );
    }
    let (shots, keys, n) = (&rendered.shots, &rendered.keys, plan.shots.len());

    // Every shot as its own file, then the film, watermarked and signed like any output.
    let mark = |frames: &Tensor, seed: u64, what: &str| -> Result<(Vec<f32>, Clip, Option<u64>)> {
        let (f, h, w, _) = frames.dims4()?;
        let data = frames.flatten_all()?.to_vec1::<f32>()?;
        let mut clip = Clip::from_f32(&data, (f, h, w), fps)?;
        let wm = args
            .sign
            .watermark
            .mark(&mut clip, &format!("{seed}-{what}"));
        Ok((data, clip, wm))
    };
    let signer_for = |seed: u64, wm: Option<u64>| provenance::Signer {
        identity: identity.clone(),
        generation: sorrel_provenance::Generation {
            model: model_name.clone(),
            seed,
            steps,
            prompt: None,
            watermark: wm,
        },
    };
    let mut shot_files: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, frames) in shots.iter().enumerate() {
        let seed = plan.shot_seed(i);
        let (data, clip, wm) = mark(frames, seed, &keys[i][..16])?;
        let name = format!("{:02}.mp4", i + 1);
        let path = work.join("shots").join(&name);
        let shot_target = OutputTarget::parse(&path, &encode)?;
        shot_target.write(&data, &clip, &encode, &signer_for(seed, wm))?;
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        shot_files.push((format!("shot {name}"), bytes));
    }
    // The film's credentials list every shot, each with its own manifest, as a component.
    let ingredients = sorrel_provenance::Ingredient::all(&shot_files, "video/mp4");
    let all = Tensor::cat(shots, 0)?;
    let seed = plan.shot_seed(0);
    let (data, clip, wm) = mark(&all, seed, &rendered.film_key[..16])?;
    let (written, _) = target.write_with_ingredients(
        &data,
        &clip,
        &encode,
        &signer_for(seed, wm),
        &ingredients,
    )?;
    let board = sorrel_film::storyboard::sheet(&plan, shots, &layout.frames, fps)?;
    sorrel_media::write_file(&board_path, &board)?;
    println!(
        "wrote {}: {} shots, {} frames {width}x{height} at {fps} fps ({:.2} s) in {:.1} s",
        target.describe(&written, &encode),
        n,
        clip.len(),
        clip.len() as f64 / fps as f64,
        started.elapsed().as_secs_f64()
    );
    println!(
        "storyboard {}; each shot in {}",
        board_path.display(),
        work.join("shots").display()
    );
    Ok(())
}

/// Prints a line above the progress bar, or plainly when there is no bar to draw (not a terminal).
fn say(bar: &ProgressBar, quiet: bool, line: String) {
    if quiet {
        return;
    }
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}
