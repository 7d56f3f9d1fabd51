//! `sorrel eval`: generates a clip for each of a set of toy-world prompts whose scenes no training clip
//! used (scene seeds from [`EVAL_SEEDS`](super::data::EVAL_SEEDS)), and scores it against the scene by
//! segmenting objects from the known palette. Seen combinations and held-out ones (yellow boxes, three
//! shrinking objects) are reported apart, next to the scores of the rendered ground truth, which show what
//! the scorer itself allows at the model's size and frame count.
//!
//! A model trained with given frames (one that rolls out) is also scored on what people ask of it:
//! held-out paraphrases (sentence forms training never saw, [`eval_paraphrase`]), image-to-video from the
//! scene's rendered first frame, joining two clips of the scene's ongoing world, and minute-long rollouts
//! scored window by window ([`sorrel_toyworld::score_long`]).

use std::time::Instant;

use rand::{rngs::StdRng, SeedableRng};
use serde::Serialize;
use sorrel_pipeline::{decoded_to_frames, Conditioning, GenerateRequest, Picture, WanPipeline};
use sorrel_toyworld::{
    caption, held_out_paraphrase, render, render_span, score_clip, score_join, score_long,
    ClipScore, JoinScore, LongScore, Scene, Split, Summary, WorldSize, HELD_OUT_FORMS,
};

use super::data::EVAL_SEEDS;
use crate::{Result, TrainError};

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Prompts per split.
    pub clips: usize,
    /// Also evaluate the held-out combinations.
    pub held_out: bool,
    /// Denoising steps (default: the model's).
    pub steps: Option<usize>,
    /// Guidance (default: the model's).
    pub guidance: Option<f64>,
    /// Offset of the prompts' scene seeds (0: the standard set).
    pub offset: u64,
    /// For a model that rolls out: also score held-out paraphrases, image-to-video and joining clips
    /// (`clips` prompts each).
    pub modes: bool,
    /// For a model that rolls out: rollouts to score (each a different scene).
    pub rollouts: usize,
    /// Length of each rollout, in seconds at the model's frame rate.
    pub rollout_seconds: usize,
}

/// One evaluated clip.
#[derive(Debug, Clone, Serialize)]
pub struct EvalClip {
    /// "seen" or "held-out".
    pub split: &'static str,
    /// The prompt.
    pub prompt: String,
    /// Its scores.
    pub score: ClipScore,
    /// Generated RGB8 frames (not serialised).
    #[serde(skip)]
    pub frames: Vec<Vec<u8>>,
}

/// The results.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Seen combinations.
    pub seen: Summary,
    /// Held-out combinations (`None` unless asked for).
    pub held_out: Option<Summary>,
    /// The rendered ground truth of the seen prompts, scored the same way.
    pub ground_truth: Summary,
    /// The same ground truth after a round trip through the model's VAE (each frame encoded alone, as
    /// training encodes them, and the posterior mean decoded): what the latents can hold at best.
    pub autoencoded: Summary,
    /// Mean generation time per clip, seconds.
    pub seconds_per_clip: f64,
    /// Every clip.
    pub clips: Vec<EvalClip>,
    /// Held-out paraphrases of seen scenes (colour, count and direction are the measures).
    pub paraphrase: Option<Summary>,
    /// Image to video from each scene's rendered first frame.
    pub image: Option<ImageSummary>,
    /// Frames joining two clips of each scene.
    pub join: Option<JoinSummary>,
    /// Minute-long rollouts.
    pub rollout: Option<RolloutSummary>,
    /// Rollouts' frames, one every [`SHEET_SECONDS`] seconds, for a contact sheet; not serialised.
    #[serde(skip)]
    pub rollout_frames: Vec<(String, Vec<Vec<u8>>)>,
}

/// Image-to-video scores.
#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    /// The clip scores, as for text to video.
    pub scores: Summary,
    /// Percent of clips that keep the given frame's objects: colour, shape and count all right.
    pub kept: f64,
    /// The same for a perfect model through this VAE: each scene's rendered clip, its first frame as given
    /// and the rest through the VAE's round trip (as a generated clip's frames after the first are
    /// decoded). What the decoder lets generation reach.
    pub kept_through_vae: f64,
}

/// Joining-clip scores, in percent of joins.
#[derive(Debug, Clone, Serialize)]
pub struct JoinSummary {
    /// Joins scored.
    pub joins: usize,
    /// The joining frames match both clips' objects (every measure below).
    pub matches: f64,
    /// Right count.
    pub count: f64,
    /// Right colour.
    pub colour: f64,
    /// Right size (within 20 %).
    pub size: f64,
    /// Both seams carry on.
    pub seams: f64,
    /// Percent of the world's own joining frames, through the VAE's round trip, that match both clips:
    /// what the decoder lets a perfect model reach.
    pub matches_through_vae: f64,
}

/// Rollout scores.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutSummary {
    /// Rollouts scored.
    pub rollouts: usize,
    /// Their length in seconds.
    pub seconds: usize,
    /// Percent of rollouts whose objects keep their count, colour and size (within 20 %) in every window.
    pub kept: f64,
    /// Percent of all windows with the right count, colour and size.
    pub count_windows: f64,
    pub colour_windows: f64,
    pub size_windows: f64,
    /// Percent of bounce windows physically plausible (NaN without bounce rollouts).
    pub plausible_windows: f64,
    /// Percent of windows of travelling scenes where the objects travel as the world's do (NaN without
    /// such rollouts): a rollout must not buy the other rows by freezing.
    pub moving_windows: f64,
    /// Percent of generation-window boundaries where the objects carry on.
    pub continuous: f64,
    /// Seconds of generation per second of video.
    pub seconds_per_second: f64,
    /// The same rows for the world's own clips of those scenes through the VAE (frame by frame, as training
    /// saw them): what a model that drew the world exactly could score at best, since the scorer reads
    /// decoded pixels. `kept`, `plausible_windows`, then `moving_windows`.
    pub through_vae: (f64, f64, f64),
    /// Every rollout's scores.
    pub each: Vec<(String, LongScore)>,
}

/// Seconds between the frames of a rollout's row in the contact sheet (15 frames for a minute).
pub const SHEET_SECONDS: usize = 4;

/// The scene of evaluation prompt `i` of `split`.
pub fn eval_scene(i: u64, split: Split) -> Scene {
    Scene::sample(EVAL_SEEDS + i, split)
}

/// Held-out paraphrase prompt `i`: a seen-combination scene (its own seeds) described in one of the
/// sentence forms training never sees, the forms taken in turn. `docs/models/toyworld-held-out-prompts.txt`
/// lists the first 100.
pub fn eval_paraphrase(i: u64) -> (Scene, String) {
    let scene = Scene::sample(EVAL_SEEDS + 100_000 + i, Split::Train);
    let mut rng = StdRng::seed_from_u64(EVAL_SEEDS + 100_000 + i);
    let form = HELD_OUT_FORMS[i as usize % HELD_OUT_FORMS.len()];
    let prompt = held_out_paraphrase(&scene, form, &mut rng);
    (scene, prompt)
}

/// The scene of rollout `i`.
pub fn rollout_scene(i: u64) -> Scene {
    Scene::sample(EVAL_SEEDS + 200_000 + i, Split::Train)
}

/// The scene of image-to-video prompt `i`.
fn image_scene(i: u64) -> Scene {
    Scene::sample(EVAL_SEEDS + 300_000 + i, Split::Train)
}

/// The scene of joining prompt `i`.
fn join_scene(i: u64) -> Scene {
    Scene::sample(EVAL_SEEDS + 400_000 + i, Split::Train)
}

fn picture(rgb: &[u8], size: usize) -> Picture {
    Picture {
        width: size,
        height: size,
        rgb: rgb.to_vec(),
    }
}

/// Runs the evaluation; `progress(done, total)` after each clip.
pub fn evaluate(
    pipe: &WanPipeline,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport> {
    let d = &pipe.info.defaults;
    if d.width != d.height {
        return Err(TrainError::Invalid(format!(
            "{} is not a toy-world model (its default size {}x{} is not square): sorrel eval scores models \
             trained by `sorrel train`",
            pipe.dir.display(),
            d.width,
            d.height
        )));
    }
    let splits: Vec<(Split, &'static str)> = if opts.held_out {
        vec![(Split::Train, "seen"), (Split::HeldOut, "held-out")]
    } else {
        vec![(Split::Train, "seen")]
    };
    let total = opts.clips * splits.len();
    let world = WorldSize {
        size: d.width,
        frames: d.frames,
    };
    let mut clips = Vec::with_capacity(total);
    let mut truth = Vec::new();
    let mut autoencoded = Vec::new();
    let mut generating = std::time::Duration::ZERO;
    for (split, name) in &splits {
        for i in 0..opts.clips as u64 {
            let scene = eval_scene(opts.offset + i, *split);
            let prompt = caption(&scene);
            let req = GenerateRequest {
                prompt: prompt.clone(),
                width: d.width,
                height: d.height,
                frames: d.frames,
                steps: opts.steps.unwrap_or(d.steps),
                guidance: opts.guidance.unwrap_or(d.guidance),
                seed: opts.offset + i,
                ..GenerateRequest::default()
            };
            let t0 = Instant::now();
            let video = pipe
                .generate(&req, &mut |_| true)
                .map_err(|e| TrainError::Invalid(e.to_string()))?;
            generating += t0.elapsed();
            let frames = to_rgb8(&video.frames)?;
            let score = score_clip(&frames, d.width, &scene);
            if *split == Split::Train {
                let rendered = render(&scene, world).frames;
                truth.push(score_clip(&rendered, d.width, &scene));
                let round_trip = to_rgb8(&autoencode(pipe, &rendered, d.width)?)?;
                autoencoded.push(score_clip(&round_trip, d.width, &scene));
            }
            clips.push(EvalClip {
                split: name,
                prompt,
                score,
                frames,
            });
            progress(clips.len(), total);
        }
    }
    let of = |name: &str| {
        Summary::of(
            &clips
                .iter()
                .filter(|c| c.split == name)
                .map(|c| c.score)
                .collect::<Vec<_>>(),
        )
    };
    let seconds_per_clip = generating.as_secs_f64() / total.max(1) as f64;
    let modes = opts.modes && d.rolls_out();
    let rows = if modes { 3 * opts.clips } else { 0 } + opts.rollouts;
    let mut done = 0;
    let mut tick = |progress: &mut dyn FnMut(usize, usize)| {
        done += 1;
        progress(total + done, total + rows);
    };
    let mut report = EvalReport {
        seen: of("seen"),
        held_out: opts.held_out.then(|| of("held-out")),
        ground_truth: Summary::of(&truth),
        autoencoded: Summary::of(&autoencoded),
        seconds_per_clip,
        clips,
        paraphrase: None,
        image: None,
        join: None,
        rollout: None,
        rollout_frames: Vec::new(),
    };
    if !modes {
        return Ok(report);
    }
    let run = |prompt: String, frames: usize, seed: u64, conditioning: Conditioning| {
        let req = GenerateRequest {
            prompt,
            width: d.width,
            height: d.height,
            frames,
            steps: opts.steps.unwrap_or(d.steps),
            guidance: opts.guidance.unwrap_or(d.guidance),
            seed,
            conditioning,
            ..GenerateRequest::default()
        };
        let video = pipe
            .generate(&req, &mut |_| true)
            .map_err(|e| TrainError::Invalid(e.to_string()))?;
        to_rgb8(&video.frames)
    };
    let n = d.width;
    let mut para = Vec::new();
    for i in 0..opts.clips as u64 {
        let (scene, prompt) = eval_paraphrase(opts.offset + i);
        let frames = run(prompt, d.frames, opts.offset + i, Conditioning::None)?;
        para.push(score_clip(&frames, n, &scene));
        tick(progress);
    }
    report.paraphrase = Some(Summary::of(&para));
    let mut image = Vec::new();
    let mut image_ceiling = Vec::new();
    for i in 0..opts.clips as u64 {
        let scene = image_scene(opts.offset + i);
        let rendered = render(&scene, world).frames;
        let mut perfect = to_rgb8(&autoencode(pipe, &rendered, n)?)?;
        perfect[0] = rendered[0].clone();
        image_ceiling.push(score_clip(&perfect, n, &scene));
        let first = rendered[0].clone();
        let conditioning = Conditioning::Image {
            first: picture(&first, n),
            last: None,
        };
        let frames = run(caption(&scene), d.frames, opts.offset + i, conditioning)?;
        image.push(score_clip(&frames, n, &scene));
        tick(progress);
    }
    let kept = |clips: &[ClipScore]| {
        let k = clips
            .iter()
            .filter(|s| s.colour && s.shape && s.count)
            .count();
        100.0 * k as f64 / clips.len().max(1) as f64
    };
    report.image = Some(ImageSummary {
        scores: Summary::of(&image),
        kept: kept(&image),
        kept_through_vae: kept(&image_ceiling),
    });
    // Joins: the scene's frames 0..8 and 12..20, four new frames between (where the world's 8..12 are).
    let (gap, w) = (d.frames / 2, d.frames);
    let mut joins: Vec<JoinScore> = Vec::new();
    let mut perfect_joins = 0;
    for i in 0..opts.clips as u64 {
        let scene = join_scene(opts.offset + i);
        let truth = render_span(&scene, world, 0, 2 * w + gap).frames;
        // A perfect model's join: the world's own joining frames, through the VAE as generated ones are.
        let mut perfect = truth.clone();
        let through = to_rgb8(&autoencode(pipe, &truth[w..w + gap], n)?)?;
        perfect.splice(w..w + gap, through);
        perfect_joins += usize::from(score_join(&perfect, world, &scene, w, gap).matches());
        let before: Vec<Picture> = truth[..w].iter().map(|f| picture(f, n)).collect();
        let after: Vec<Picture> = truth[w + gap..].iter().map(|f| picture(f, n)).collect();
        let new = run(
            caption(&scene),
            gap,
            opts.offset + i,
            Conditioning::Continue { before, after },
        )?;
        let mut clip = truth[..w].to_vec();
        clip.extend(new);
        clip.extend_from_slice(&truth[w + gap..]);
        joins.push(score_join(&clip, world, &scene, w, gap));
        tick(progress);
    }
    let pct = |f: &dyn Fn(&JoinScore) -> bool| {
        100.0 * joins.iter().filter(|j| f(j)).count() as f64 / joins.len().max(1) as f64
    };
    report.join = Some(JoinSummary {
        joins: joins.len(),
        matches: pct(&|j| j.matches()),
        count: pct(&|j| j.count),
        colour: pct(&|j| j.colour),
        size: pct(&|j| j.size),
        seams: pct(&|j| j.seams),
        matches_through_vae: 100.0 * perfect_joins as f64 / joins.len().max(1) as f64,
    });
    if opts.rollouts > 0 {
        let frames = opts.rollout_seconds * d.fps as usize;
        // The first window makes `w` frames, each next one `w / 2`.
        let boundaries: Vec<usize> = (w..frames).step_by((w / 2).max(1)).collect();
        let mut each = Vec::new();
        let mut ceiling = Vec::new();
        let mut secs = 0.0;
        for i in 0..opts.rollouts as u64 {
            let scene = rollout_scene(opts.offset + i);
            let truth = render_span(&scene, world, 0, frames).frames;
            let perfect = to_rgb8(&autoencode(pipe, &truth, n)?)?;
            ceiling.push(score_long(&perfect, world, &scene, &boundaries));
            let prompt = caption(&scene);
            let t0 = Instant::now();
            let clip = run(prompt.clone(), frames, opts.offset + i, Conditioning::None)?;
            secs += t0.elapsed().as_secs_f64();
            each.push((
                prompt.clone(),
                score_long(&clip, world, &scene, &boundaries),
            ));
            report.rollout_frames.push((
                prompt,
                clip.into_iter()
                    .step_by(SHEET_SECONDS * d.fps as usize)
                    .collect(),
            ));
            tick(progress);
        }
        let sum = |f: &dyn Fn(&LongScore) -> (usize, usize)| percent(each.iter().map(|e| f(&e.1)));
        let kept_all = |s: &LongScore| (usize::from(s.kept()), 1);
        let plausible = |s: &LongScore| s.plausible_windows.unwrap_or((0, 0));
        let moving = |s: &LongScore| s.moving_windows.unwrap_or((0, 0));
        let through_vae = (
            percent(ceiling.iter().map(kept_all)),
            percent(ceiling.iter().map(plausible)),
            percent(ceiling.iter().map(moving)),
        );
        report.rollout = Some(RolloutSummary {
            rollouts: each.len(),
            seconds: opts.rollout_seconds,
            kept: sum(&kept_all),
            count_windows: sum(&|s| (s.count_windows, s.windows)),
            colour_windows: sum(&|s| (s.colour_windows, s.windows)),
            size_windows: sum(&|s| (s.size_windows, s.windows)),
            plausible_windows: sum(&plausible),
            moving_windows: sum(&moving),
            continuous: sum(&|s| s.continuous),
            seconds_per_second: secs / (each.len() * opts.rollout_seconds).max(1) as f64,
            through_vae,
            each,
        });
    }
    Ok(report)
}

/// (met, scored) pairs summed, as a percentage; NaN when nothing was scored.
fn percent(pairs: impl Iterator<Item = (usize, usize)>) -> f64 {
    let (a, b) = pairs.fold((0, 0), |x, y| (x.0 + y.0, x.1 + y.1));
    if b == 0 {
        f64::NAN
    } else {
        100.0 * a as f64 / b as f64
    }
}

/// RGB8 frames through the VAE and back: (F, H, W, 3) in [0, 1], as a generated video comes out.
fn autoencode(pipe: &WanPipeline, frames: &[Vec<u8>], size: usize) -> Result<candle_core::Tensor> {
    let x = super::data::frames_to_tensor(frames, size, pipe.device())?; // (3, F, H, W)
    let (c, f, h, w) = x.dims4()?;
    // (F, 3, 1, H, W): one frame per batch item, so the per-frame VAE sees what training fed it.
    let imgs = x
        .permute((1, 0, 2, 3))?
        .reshape((f, c, 1, h, w))?
        .contiguous()?;
    let vae = pipe.vae();
    let (mean, _) = vae.encode(&imgs)?;
    let (_, z, _, lh, lw) = mean.dims5()?;
    let lat = mean
        .reshape((f, z, lh, lw))?
        .permute((1, 0, 2, 3))?
        .unsqueeze(0)?; // (1, z, F, h, w)
    Ok(decoded_to_frames(&vae.decode(&lat.contiguous()?)?)?)
}

/// (F, H, W, 3) f32 in [0, 1] to one RGB8 buffer per frame, converted as `sorrel generate` writes them.
fn to_rgb8(frames: &candle_core::Tensor) -> Result<Vec<Vec<u8>>> {
    let (f, h, w, _) = frames.dims4()?;
    let v = frames.flatten_all()?.to_vec1::<f32>()?;
    let clip = sorrel_media::Clip::from_f32(&v, (f, h, w), 1)
        .map_err(|e| TrainError::Invalid(e.to_string()))?;
    Ok(clip.frames().iter().map(|fr| fr.rgb.clone()).collect())
}

/// The table of a report, as Markdown.
pub fn markdown_table(r: &EvalReport) -> String {
    let row = |name: &str, s: &Summary| {
        format!(
            "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.0} |\n",
            s.clips,
            s.colour,
            s.shape,
            s.count,
            s.direction,
            s.permanence,
            if s.bounce.is_nan() {
                "-".to_string()
            } else {
                format!("{:.0}", s.bounce)
            },
            s.all
        )
    };
    let mut t = String::from(
        "| prompts | clips | colour % | shape % | count % | direction % | permanence % | bounce % | all % |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    t += &row("seen combinations", &r.seen);
    if let Some(h) = &r.held_out {
        t += &row("held-out combinations", h);
    }
    if let Some(p) = &r.paraphrase {
        t += &row("held-out paraphrases", p);
    }
    if let Some(i) = &r.image {
        t += &row("image to video (rendered first frame)", &i.scores);
    }
    t += &row("ground truth (seen)", &r.ground_truth);
    t += &row("ground truth through the VAE (seen)", &r.autoencoded);
    let pct = |v: f64| {
        if v.is_nan() {
            "-".to_string()
        } else {
            format!("{v:.0}")
        }
    };
    if let Some(i) = &r.image {
        t += &format!(
            "\nImage to video keeps the given frame's objects (colour, shape and count) in {}% of clips \
             (the ground truth through the VAE, first frame as given: {}%).\n",
            pct(i.kept),
            pct(i.kept_through_vae)
        );
    }
    if let Some(j) = &r.join {
        t += &format!(
            "\n| joining two clips | joins | match both clips % | count % | colour % | size % | both seams carry on % |\n\
             |---|---|---|---|---|---|---|\n\
             | 4 new frames | {} | {} | {} | {} | {} | {} |\n\
             \nThe world's own joining frames through the VAE match both clips in {}% of joins.\n",
            j.joins,
            pct(j.matches),
            pct(j.count),
            pct(j.colour),
            pct(j.size),
            pct(j.seams),
            pct(j.matches_through_vae)
        );
    }
    if let Some(o) = &r.rollout {
        t += &format!(
            "\n| rollouts | rollouts | kept count, colour and size all along % | count windows % | colour windows % | \
             size windows % | bounce windows plausible % | travelling windows move % | boundaries carry on % | \
             s per s of video |\n\
             |---|---|---|---|---|---|---|---|---|---|\n\
             | {} s | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |\n\
             \nThe world's own clips of these scenes through the VAE keep their objects all along in {}%, have \
             {}% of bounce windows plausible and move in {}% of travelling windows.\n",
            o.seconds,
            o.rollouts,
            pct(o.kept),
            pct(o.count_windows),
            pct(o.colour_windows),
            pct(o.size_windows),
            pct(o.plausible_windows),
            pct(o.moving_windows),
            pct(o.continuous),
            o.seconds_per_second,
            pct(o.through_vae.0),
            pct(o.through_vae.1),
            pct(o.through_vae.2)
        );
    }
    t
}

/// A contact sheet of the first `rows` clips: one row per clip, its frames left to right, each pixel
/// drawn `scale`x`scale`, 2-pixel white gaps. Returns (RGB8, width, height).
pub fn contact_sheet(
    clips: &[EvalClip],
    size: usize,
    rows: usize,
    scale: usize,
) -> (Vec<u8>, usize, usize) {
    let rows = rows.min(clips.len());
    let cols = clips.first().map_or(0, |c| c.frames.len());
    let gap = 2;
    let cell = size * scale;
    let (w, h) = (cols * (cell + gap) + gap, rows * (cell + gap) + gap);
    let mut img = vec![255u8; w * h * 3];
    for (r, clip) in clips.iter().take(rows).enumerate() {
        for (c, frame) in clip.frames.iter().enumerate() {
            let (x0, y0) = (gap + c * (cell + gap), gap + r * (cell + gap));
            for y in 0..cell {
                for x in 0..cell {
                    let s = ((y / scale) * size + x / scale) * 3;
                    let d = ((y0 + y) * w + x0 + x) * 3;
                    img[d..d + 3].copy_from_slice(&frame[s..s + 3]);
                }
            }
        }
    }
    (img, w, h)
}
