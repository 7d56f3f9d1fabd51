//! `sorrel film`: a story (or an edited plan) to one film, shot by shot, with each finished shot cached so a
//! crash or Ctrl-C resumes where it stopped and an edited plan re-renders only the shots that changed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::weights::hex;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use sorrel_media::{Clip, EncodeOptions};
use sorrel_pipeline::film::{plan_story, Plan, PlannerOptions};
use sorrel_pipeline::{
    Conditioning, Event, GenerateRequest, LoadOptions, Mode, Picture, WanPipeline,
};

use crate::output::OutputTarget;
use crate::{embedded, provenance, storyboard};

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

/// A stable identity of a model folder's weights and settings for the shot cache: every JSON config, and
/// each weights file's length with its first and last MiB (hashing 28 GB of a 14B model for every film
/// would cost more than a shot; a retrained model of the same shapes differs in those bytes).
fn model_fingerprint(dir: &Path) -> Result<String> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut h = Sha256::new();
    for p in files {
        let rel = p
            .strip_prefix(dir)
            .unwrap_or(&p)
            .to_string_lossy()
            .into_owned();
        h.update(rel.as_bytes());
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "json" {
            h.update(std::fs::read(&p)?);
        } else if ["safetensors", "pth", "gguf", "bin"].contains(&ext) {
            crate::weights::hash_ends(&mut h, &p)?;
        }
    }
    Ok(hex(&h.finalize()))
}

/// Frames (F, H, W, 3) f32 in [0, 1] as pictures.
fn pictures(frames: &Tensor) -> Result<Vec<Picture>> {
    let (f, h, w, _) = frames.dims4()?;
    let data = frames.flatten_all()?.to_vec1::<f32>()?;
    Ok((0..f)
        .map(|i| Picture {
            width: w,
            height: h,
            rgb: data[i * h * w * 3..(i + 1) * h * w * 3]
                .iter()
                .map(|&v| sorrel_media::to_u8(v))
                .collect(),
        })
        .collect())
}

fn picture_hash(p: &Picture) -> String {
    let mut h = Sha256::new();
    h.update((p.width as u64).to_le_bytes());
    h.update((p.height as u64).to_le_bytes());
    h.update(&p.rgb);
    hex(&h.finalize())
}

/// Reads a cached shot's frames, or `None` when the cache has none (or a damaged one, which is redone).
fn read_cached(path: &Path) -> Option<Tensor> {
    let mut t = candle_core::safetensors::load(path, &Device::Cpu).ok()?;
    t.remove("frames")
}

/// Writes frames to the cache atomically: a reader (or a resumed run) sees the whole shot or none of it.
fn write_cached(path: &Path, frames: &Tensor) -> Result<()> {
    let tmp = path.with_extension("partial");
    candle_core::safetensors::save(
        &[("frames".to_string(), frames.clone())]
            .into_iter()
            .collect(),
        &tmp,
    )?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
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
    let defaults = &info.defaults;
    // What the plan needs from the model, said before any work.
    info.check_mode(Mode::TextToVideo)?;
    if let Some(i) = plan.shots.iter().position(|s| s.continues) {
        if !info.can(Mode::Continue) {
            bail!(
                "shot {} continues shot {} without a cut, which needs a model that continues clips \
                 (the embedded model, or a SkyReels-V2 diffusion-forcing model); {} cannot. Mark the shot \
                 \"continues\": false in a plan (--plan-only), or use such a model",
                i + 1,
                i,
                model_name
            );
        }
    }
    let references = info.can(Mode::ImageToVideo);
    let (width, height) = (defaults.width, defaults.height);
    let fps = defaults.fps;
    let tc = info.compression.1;
    let steps = args.steps.unwrap_or(defaults.steps);
    let guidance = args.guidance.unwrap_or(defaults.guidance);
    let frames_of = |i: usize| -> Result<usize> {
        let s = &plan.shots[i];
        let n = crate::seconds_to_frames(s.seconds, fps, tc)?;
        // A shot that continues another is made of the embedded model's frame pairs, or of a diffusion-forcing
        // model's whole latent frames (tc frames each).
        Ok(match (s.continues, info.diffusion_forcing.is_some()) {
            (false, _) => n,
            (true, false) => n.div_ceil(2) * 2,
            (true, true) => (n - 1).max(1).div_ceil(tc) * tc,
        })
    };
    let counts: Vec<usize> = (0..plan.shots.len())
        .map(frames_of)
        .collect::<Result<_>>()?;

    for sub in ["shots", "characters"] {
        let d = work.join(sub);
        std::fs::create_dir_all(&d)
            .with_context(|| format!("cannot create the film's work folder {}", d.display()))?;
    }
    sorrel_media::write_file(&work.join("plan.json"), plan.to_json().as_bytes())?;
    let fingerprint = model_fingerprint(&model)? + &args.weights.fingerprint()?;

    let pipe = WanPipeline::load(
        &model,
        &args.weights.apply(LoadOptions {
            dtype: DType::F32,
            device: Device::Cpu,
            ..LoadOptions::default()
        }),
    )?;
    let total: usize = counts.iter().sum();
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:30}] {pos}/{len} frames  {elapsed} elapsed, ETA {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );

    let request =
        |prompt: String, frames: usize, seed: u64, conditioning: Conditioning| GenerateRequest {
            prompt,
            negative_prompt: String::new(),
            width,
            height,
            frames,
            steps,
            guidance,
            guidance_2: None,
            seed,
            max_sequence_length: None,
            scheduler: None,
            flow_shift: None,
            init_latents: None,
            conditioning,
            forcing: sorrel_pipeline::Forcing::default(),
        };
    let key = |parts: &[&str]| {
        let mut h = Sha256::new();
        h.update(b"sorrel-film-shot-v1");
        h.update(fingerprint.as_bytes());
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p.as_bytes());
        }
        hex(&h.finalize())
    };
    let settings = format!("{width}x{height} {steps} steps, guidance {guidance}");
    let mut unknown: Vec<String> = Vec::new();
    let mut run = |req: &GenerateRequest, done: usize, label: String| -> Result<Tensor> {
        req.validate(&pipe)?;
        pipe.check_memory(req, None)?;
        bar.set_message(label);
        let shot_frames = req.frames as u64;
        let mut on_event = |ev: &Event| {
            if let Event::Step { index, total, .. } = ev {
                let part = shot_frames * (*index as u64) / (*total).max(1) as u64;
                bar.set_position(done as u64 + part);
            }
            true
        };
        let video = pipe.generate(req, &mut on_event)?;
        for w in video.unknown_words {
            if !unknown.contains(&w) {
                unknown.push(w);
            }
        }
        Ok(video.frames)
    };

    // Each character's reference picture: the first frame of its first shot as lead, made once.
    let mut refs: Vec<(String, Picture)> = Vec::new();
    if references {
        for c in &plan.characters {
            let Some(first) = (0..plan.shots.len()).find(|&i| {
                !plan.shots[i].continues && plan.shots[i].characters.first() == Some(&c.name)
            }) else {
                continue;
            };
            let seed = Plan::character_seed(c);
            let prompt = plan.prompt_of(first);
            let k = key(&["character", &prompt, &seed.to_string(), &settings]);
            let path =
                work.join("characters")
                    .join(format!("{}-{}.safetensors", slug(&c.name), &k[..16]));
            let frames = match read_cached(&path) {
                Some(f) => f,
                None => {
                    let req = request(prompt, defaults.frames, seed, Conditioning::None);
                    let f = run(&req, 0, c.name.clone())?.narrow(0, 0, 1)?;
                    write_cached(&path, &f)?;
                    f
                }
            };
            let pic = pictures(&frames)?.remove(0);
            let png = sorrel_media::encode_png(&sorrel_media::Frame::new(
                pic.width as u32,
                pic.height as u32,
                pic.rgb.clone(),
            )?)?;
            sorrel_media::write_file(
                &work
                    .join("characters")
                    .join(format!("{}.png", slug(&c.name))),
                &png,
            )?;
            refs.push((c.name.clone(), pic));
        }
    }

    let started = Instant::now();
    let mut shots: Vec<Tensor> = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    let mut done = 0usize;
    let n = plan.shots.len();
    for i in 0..n {
        let s = &plan.shots[i];
        let seed = plan.shot_seed(i);
        let prompt = plan.prompt_of(i);
        let lead_ref = s
            .characters
            .first()
            .and_then(|name| refs.iter().find(|(r, _)| r == name))
            .map(|(_, p)| p);
        let (conditioning, given) = if s.continues {
            let before = pictures(&shots[i - 1])?;
            (
                Conditioning::Continue {
                    before,
                    after: vec![],
                },
                format!("continues {}", keys[i - 1]),
            )
        } else if let Some(p) = lead_ref {
            (
                Conditioning::Image {
                    first: p.clone(),
                    last: None,
                },
                format!("from {}", picture_hash(p)),
            )
        } else {
            (Conditioning::None, "text".to_string())
        };
        let k = key(&[
            "shot",
            &prompt,
            &counts[i].to_string(),
            &seed.to_string(),
            &settings,
            &given,
        ]);
        let path = work
            .join("shots")
            .join(format!("{:02}-{}.safetensors", i + 1, &k[..16]));
        let frames = match read_cached(&path) {
            Some(f) => {
                say(
                    &bar,
                    args.quiet,
                    format!("shot {}/{n}: cached ({})", i + 1, path.display()),
                );
                f
            }
            None => {
                let t = Instant::now();
                let req = request(prompt, counts[i], seed, conditioning);
                let f = run(&req, done, format!("shot {}/{n}", i + 1))?;
                write_cached(&path, &f)?;
                say(
                    &bar,
                    args.quiet,
                    format!(
                        "shot {}/{n}: {} frames in {:.1} s: {}",
                        i + 1,
                        f.dim(0)?,
                        t.elapsed().as_secs_f64(),
                        s.text
                    ),
                );
                f
            }
        };
        done += counts[i];
        bar.set_position(done as u64);
        shots.push(frames);
        keys.push(k);
    }
    bar.finish_and_clear();
    if !unknown.is_empty() {
        eprintln!(
            "warning: the tokenizer does not know: {}",
            unknown.join(", ")
        );
    }

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
    let ingredients: Vec<sorrel_provenance::Ingredient> = shot_files
        .iter()
        .map(|(title, bytes)| sorrel_provenance::Ingredient {
            title: title.clone(),
            mime: "video/mp4",
            bytes,
        })
        .collect();
    let all = Tensor::cat(&shots, 0)?;
    let film_key = key(&keys.iter().map(String::as_str).collect::<Vec<_>>());
    let seed = plan.shot_seed(0);
    let (data, clip, wm) = mark(&all, seed, &film_key[..16])?;
    let (written, _) = target.write_with_ingredients(
        &data,
        &clip,
        &encode,
        &signer_for(seed, wm),
        &ingredients,
    )?;
    let board = storyboard::sheet(&plan, &shots, &counts, fps)?;
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

/// A name as a file name: letters and digits, the rest as `-`.
fn slug(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_alphanumeric() { c } else { '-' })
        .collect()
}
