//! `sorrel eval`: generates a clip for each of a set of toy-world prompts whose scenes no training clip
//! used (scene seeds from [`EVAL_SEEDS`](super::data::EVAL_SEEDS)), and scores it against the scene by
//! segmenting objects from the known palette. Seen combinations and held-out ones (yellow boxes, three
//! shrinking objects) are reported apart, next to the scores of the rendered ground truth, which show what
//! the scorer itself allows at the model's size and frame count.

use std::time::Instant;

use serde::Serialize;
use sorrel_pipeline::{decoded_to_frames, GenerateRequest, WanPipeline};
use sorrel_toyworld::{caption, render, score_clip, ClipScore, Scene, Split, Summary, WorldSize};

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
}

/// The scene of evaluation prompt `i` of `split`.
pub fn eval_scene(i: u64, split: Split) -> Scene {
    Scene::sample(EVAL_SEEDS + i, split)
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
    Ok(EvalReport {
        seen: of("seen"),
        held_out: opts.held_out.then(|| of("held-out")),
        ground_truth: Summary::of(&truth),
        autoencoded: Summary::of(&autoencoded),
        seconds_per_clip: generating.as_secs_f64() / total.max(1) as f64,
        clips,
    })
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
    t += &row("ground truth (seen)", &r.ground_truth);
    t += &row("ground truth through the VAE (seen)", &r.autoencoded);
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
