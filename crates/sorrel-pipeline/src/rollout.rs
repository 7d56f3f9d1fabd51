//! Rollouts: video of any length, and clips continued or joined, from a model trained with clean given
//! frames (per-token timesteps at 0 on them, as diffusion forcing trains; the embedded model is one).
//!
//! The video is made window by window, each window the model's own length: the first from the prompt (and
//! the first frame, for image-to-video), each next one from the last frames made so far, given clean, while
//! the rest of the window is denoised around them. Everything stays in latent space between windows, so no
//! frame is decoded and encoded again. Extension backward runs the same way in reverse, given frames at the
//! end of each window; connecting two clips rolls forward from the first and makes its last window between
//! the first clip's end and the second clip's start.

use candle_core::{DType, Tensor};
use sorrel_core::{Error, Result};

use crate::denoise::{stage, Denoise, Stopwatch};
use crate::loader::WanPipeline;
use crate::modes::{ModelInfo, Video};
use crate::progress::{Event, ProgressFn};
use crate::request::{Conditioning, GenerateRequest, Picture};

/// The longest rollout one request may ask for, in seconds of video. A minute is the headline; ten leave
/// room, and keep a typo (`--seconds 60000`) from starting a run of days.
pub const MAX_SECONDS: usize = 600;

/// Whether `req` runs as a rollout on the model `info` describes: a model trained with given frames, asked
/// for more than one window, for a first frame, or to continue clips.
pub fn applies(req: &GenerateRequest, info: &ModelInfo) -> bool {
    info.defaults.rolls_out()
        && match &req.conditioning {
            Conditioning::None => req.frames > info.defaults.frames,
            Conditioning::Image { last: None, .. } | Conditioning::Continue { .. } => true,
            _ => false,
        }
}

/// The shape of a model's windows, in latent frames.
#[derive(Debug, Clone, Copy)]
struct Shape {
    /// Frames in one window (the model's default clip).
    window: usize,
    /// Frames in one token slice (the transformer's time patch): given frames come in whole slices.
    slice: usize,
    /// Frames given as context when continuing: half a window.
    context: usize,
}

impl Shape {
    fn of(info: &ModelInfo) -> Result<Self> {
        let name = info.defaults.name.as_deref().unwrap_or("this model");
        if info.compression.1 != 1 {
            return Err(Error::model(format!(
                "{name} says it continues clips, but its VAE compresses time {}x: rollouts need one latent \
                 frame per video frame",
                info.compression.1
            )));
        }
        let slice = info.patch[0];
        let window = info.defaults.frames;
        if window < 2 * slice || !window.is_multiple_of(slice) {
            return Err(Error::model(format!(
                "{name}: its clip of {window} frames is not at least two whole time patches of {slice}"
            )));
        }
        Ok(Self {
            window,
            slice,
            context: (window / 2 / slice).max(1) * slice,
        })
    }
}

/// The checks for a request that [`applies`]: length, given clips, what rollouts do not take.
pub fn check(req: &GenerateRequest, info: &ModelInfo) -> Result<()> {
    let shape = Shape::of(info)?;
    let bad = |m: String| Err(Error::invalid(m));
    let fps = info.defaults.fps as usize;
    let most = MAX_SECONDS * fps;
    if req.frames > most {
        return bad(format!(
            "{} frames is {:.0} s of video at {fps} fps: one request makes at most {MAX_SECONDS} s ({most} frames); \
             ask for fewer, or extend the result with --extend",
            req.frames,
            req.frames as f64 / fps as f64
        ));
    }
    if let Conditioning::Continue { before, after } = &req.conditioning {
        for (what, clip) in [("clip to continue", before), ("clip to lead into", after)] {
            if !clip.is_empty() && clip.len() < shape.slice {
                return bad(format!(
                    "the {what} has {} frame(s): give at least {} (or use --image for a single picture)",
                    clip.len(),
                    shape.slice
                ));
            }
        }
        if !before.is_empty() && !after.is_empty() && !req.frames.is_multiple_of(shape.slice) {
            return bad(format!(
                "{} new frames cannot join two clips: the model makes frames in pairs of {}, so ask for {} or {}",
                req.frames,
                shape.slice,
                req.frames / shape.slice * shape.slice,
                (req.frames / shape.slice + 1) * shape.slice
            ));
        }
    }
    Ok(())
}

/// How many frames the first window is given before and after its new ones: a first frame, or the whole
/// slices (at most `context` frames) of the clips to continue.
fn given_counts(req: &GenerateRequest, shape: Shape) -> (usize, usize) {
    let take = |n: usize| n.min(shape.context) / shape.slice * shape.slice;
    match &req.conditioning {
        Conditioning::Image { .. } => (1, 0),
        Conditioning::Continue { before, after } => (take(before.len()), take(after.len())),
        _ => (0, 0),
    }
}

/// Latent frames of a rollout's first window, the shape `init_latents` must have (in time) to replace its
/// noise: the one window a parity test can start from given noise.
pub(crate) fn first_window_frames(req: &GenerateRequest, info: &ModelInfo) -> Result<usize> {
    let shape = Shape::of(info)?;
    let (before, after) = given_counts(req, shape);
    let t = match Plan::new(shape, req.frames, before, after) {
        Plan::Forward { given, windows } => given + windows[0],
        Plan::Backward { windows } => windows[0] + after,
        Plan::Join { windows, last } => match windows.first() {
            Some(n) => before + n,
            None => 2 * shape.slice + last,
        },
    };
    Ok(t.next_multiple_of(info.patch[0]))
}

/// One window: `front` and `back` given latent frames (1, z, 1, h, w) around `new` frames to make.
struct Window<'a> {
    front: &'a [Tensor],
    new: usize,
    back: &'a [Tensor],
}

/// How a rollout goes: the number of new frames each window makes, in order of generation.
#[derive(Debug, Clone, PartialEq)]
enum Plan {
    /// Forward from `given` frames (none: text to video; 1: a first frame that is part of the video;
    /// more: a clip to continue), windows making these many new frames each.
    Forward { given: usize, windows: Vec<usize> },
    /// Backward from a clip's first frames.
    Backward { windows: Vec<usize> },
    /// Forward windows, then one joining window of `last` new frames between the two clips.
    Join { windows: Vec<usize>, last: usize },
}

impl Plan {
    fn windows(&self) -> usize {
        match self {
            Plan::Forward { windows, .. } | Plan::Backward { windows } => windows.len(),
            Plan::Join { windows, .. } => windows.len() + 1,
        }
    }

    /// The windows for `frames` new frames, with `before` and `after` given frames on either side.
    fn new(shape: Shape, frames: usize, before: usize, after: usize) -> Self {
        let Shape {
            window,
            slice,
            context,
        } = shape;
        // Continuing windows each make `window - context` frames; the first of a text- or image-to-video run
        // makes the whole window.
        let step = window - context;
        let count = |first: usize| 1 + frames.saturating_sub(first).div_ceil(step);
        match (before, after) {
            (0, 0) => Plan::Forward {
                given: 0,
                windows: std::iter::once(window)
                    .chain(std::iter::repeat_n(step, count(window) - 1))
                    .collect(),
            },
            // Image to video: the picture is the first frame, the first window makes the rest of it.
            (1, 0) => Plan::Forward {
                given: 1,
                windows: std::iter::once(window - 1)
                    .chain(std::iter::repeat_n(step, count(window) - 1))
                    .collect(),
            },
            (b, 0) => Plan::Forward {
                given: b,
                windows: vec![step; frames.div_ceil(step)],
            },
            (0, _) => Plan::Backward {
                windows: vec![step; frames.div_ceil(step)],
            },
            _ => {
                // The joining window holds one slice of each clip around at most window - 2 slices of new
                // frames, as the model was trained to join (at least one slice, in windows too short for
                // that); forward windows make what comes before it.
                let join = (window - 2 * slice).max(slice);
                let mut rest = frames;
                let mut windows = Vec::new();
                while rest > join {
                    let n = step.min(rest - join);
                    windows.push(n);
                    rest -= n;
                }
                Plan::Join {
                    windows,
                    last: rest,
                }
            }
        }
    }
}

impl WanPipeline {
    /// Runs a request that [`applies`]; the video is the new frames alone (a continued clip's own frames
    /// are not repeated: see [`join_clips`]).
    pub(crate) fn rollout(
        &self,
        req: &GenerateRequest,
        progress: &mut ProgressFn,
    ) -> Result<Video> {
        let shape = Shape::of(&self.info)?;
        let mut clock = Stopwatch::new();
        stage(progress, "text encoder")?;
        let (emb, unknown_words) = self.encode_prompts(req)?;
        // Embedded once for every window (rollouts run one-transformer models).
        let (cond, uncond) = {
            let tr = self.transformer()?;
            let context = |i: usize| tr.embed_context(&emb.narrow(0, i, 1)?, None);
            (context(0)?, context(1)?)
        };
        clock.lap("text encoder");

        // The given frames as latents: the last frames of the clip to continue, the first of the clip to
        // lead into, or the first frame.
        let size = (req.width, req.height);
        let (before, after): (Vec<&Picture>, Vec<&Picture>) = match &req.conditioning {
            Conditioning::Image { first, .. } => (vec![first], vec![]),
            Conditioning::Continue { before, after } => {
                // Whole slices only, as the model was trained to take them.
                let (b, a) = given_counts(req, shape);
                (
                    before[before.len() - b..].iter().collect(),
                    after[..a].iter().collect(),
                )
            }
            _ => (vec![], vec![]),
        };
        let encode = |pics: &[&Picture]| -> Result<Vec<Tensor>> {
            if pics.is_empty() {
                return Ok(vec![]);
            }
            let l = self.encode_pictures(pics, size)?;
            (0..pics.len()).map(|i| Ok(l.narrow(2, i, 1)?)).collect()
        };
        if !before.is_empty() || !after.is_empty() {
            stage(progress, "vae encode")?;
        }
        let (before, after) = (encode(&before)?, encode(&after)?);
        if !before.is_empty() || !after.is_empty() {
            clock.lap("vae encode");
        }

        let plan = Plan::new(shape, req.frames, before.len(), after.len());
        let total = plan.windows() * req.steps;
        let mut done = 0;
        let mut run = |k: usize, w: Window| -> Result<Vec<Tensor>> {
            // Window 0 uses the request's seed, so a rollout starts as one window of the same seed does.
            let seed = req
                .seed
                .wrapping_add((k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut on_event = |ev: &Event| match ev {
                Event::Step {
                    index, timestep, ..
                } => progress(&Event::Step {
                    index: done + index,
                    total,
                    timestep: *timestep,
                }),
                other => progress(other),
            };
            // The request's noise, if it gives one, is the first window's.
            let noise = match (&req.init_latents, k) {
                (Some(l), 0) => l.to_device(&self.device)?.to_dtype(DType::F32)?,
                _ => {
                    let (_, h, wd) = req.latent_size(self.info.compression);
                    let t =
                        (w.front.len() + w.new + w.back.len()).next_multiple_of(self.info.patch[0]);
                    crate::noise::gaussian(
                        seed,
                        &[1, self.vae_config.z_dim, t, h, wd],
                        &self.device,
                    )?
                }
            };
            let new = self.window(req, &w, noise, (&cond, &uncond), &mut clock, &mut on_event)?;
            done += req.steps;
            Ok(new)
        };
        // Windows after the first are given the last `context` frames made so far.
        let mut forward =
            |seq: &mut Vec<Tensor>, windows: &[usize], first_front: usize| -> Result<()> {
                for (k, &n) in windows.iter().enumerate() {
                    let front = if k == 0 { first_front } else { shape.context };
                    let from = seq.len() - front;
                    let new = run(
                        k,
                        Window {
                            front: &seq[from..],
                            new: n,
                            back: &[],
                        },
                    )?;
                    seq.extend(new);
                }
                Ok(())
            };

        let out: Vec<Tensor> = match plan {
            Plan::Forward { given, windows } => {
                let mut seq = before;
                forward(&mut seq, &windows, given)?;
                // An image-to-video run's given frame is its first frame; a continued clip's are not part
                // of the new video.
                let skip = if matches!(req.conditioning, Conditioning::Image { .. }) {
                    0
                } else {
                    given
                };
                seq.into_iter().skip(skip).take(req.frames).collect()
            }
            Plan::Backward { windows } => {
                let given = after.len();
                let mut seq = after;
                for (k, n) in windows.into_iter().enumerate() {
                    let back = if k == 0 { given } else { shape.context };
                    let mut new = run(
                        k,
                        Window {
                            front: &[],
                            new: n,
                            back: &seq[..back],
                        },
                    )?;
                    new.extend(seq);
                    seq = new;
                }
                let made = seq.len() - given;
                seq.into_iter().take(made).skip(made - req.frames).collect()
            }
            Plan::Join { windows, last } => {
                let given = before.len();
                let mut seq = before;
                forward(&mut seq, &windows, given)?;
                let from = seq.len() - shape.slice;
                let new = run(
                    windows.len(),
                    Window {
                        front: &seq[from..],
                        new: last,
                        back: &after[..shape.slice],
                    },
                )?;
                seq.extend(new);
                seq.into_iter().skip(given).collect()
            }
        };
        let mut frames = self.decode_latents(&Tensor::cat(&out, 2)?, progress)?;
        // Image to video starts on the picture itself, as extension keeps a clip's own frames: its latent
        // round trip would differ from it by the VAE's error (about 31 dB on toy-world frames).
        if let Conditioning::Image { first, .. } = &req.conditioning {
            let (_, h, w, _) = frames.dims4()?;
            let picture = as_frames(std::slice::from_ref(first), (w, h), frames.device())?;
            let rest = frames.narrow(0, 1, frames.dim(0)? - 1)?;
            frames = Tensor::cat(&[&picture, &rest], 0)?;
        }
        clock.lap("vae decode");
        Ok(Video {
            frames,
            timings: clock.timings,
            unknown_words,
        })
    }

    /// Denoises one window around its given frames; returns the new latent frames, each (1, z, 1, h, w).
    fn window(
        &self,
        req: &GenerateRequest,
        w: &Window,
        noise: Tensor,
        (cond, uncond): (
            &sorrel_models::wan::transformer::Context,
            &sorrel_models::wan::transformer::Context,
        ),
        clock: &mut Stopwatch,
        progress: &mut ProgressFn,
    ) -> Result<Vec<Tensor>> {
        let (_, h, wd) = req.latent_size(self.info.compression);
        let z = self.vae_config.z_dim;
        let (nf, nb) = (w.front.len(), w.back.len());
        let t = nf + w.new + nb;
        let pt = self.info.patch[0];
        // The transformer patches `pt` frames at a time: a window that does not fill its last patch makes
        // the extra frames and drops them.
        let pad = t.next_multiple_of(pt) - t;
        let (new, t) = (w.new + pad, t + pad);
        let dev = &self.device;
        let blank = Tensor::zeros((1, z, new, h, wd), DType::F32, dev)?;
        let parts: Vec<&Tensor> = w
            .front
            .iter()
            .chain(std::iter::once(&blank))
            .chain(w.back)
            .collect();
        let clean = Tensor::cat(&parts, 2)?;
        let given: Vec<bool> = (0..t).map(|i| i < nf || i >= nf + new).collect();
        let mask: Vec<f32> = given.iter().map(|&g| f32::from(u8::from(g))).collect();
        let mask = Tensor::from_vec(mask, (1, 1, t, 1, 1), dev)?;
        // A token slice is told t = 0 when all its frames are given (as training told them); a slice with
        // one given frame (image-to-video's first) is told the level of the rest.
        let [_, ph, pw] = self.info.patch;
        let per_slice = (h / ph) * (wd / pw);
        let weights: Vec<f32> = given
            .chunks(pt)
            .flat_map(|s| {
                let w = if s.iter().all(|&g| g) { 0.0 } else { 1.0 };
                std::iter::repeat_n(w, per_slice)
            })
            .collect();
        let n = weights.len();
        let token_weights = Tensor::from_vec(weights, (1, n), dev)?;
        let mut scheduler = self.scheduler_for(req)?;
        scheduler.set_timesteps(req.steps)?;
        let latents = self.denoise(
            Denoise {
                latents: noise,
                condition: None,
                contexts: &|_| Ok((cond.clone(), uncond.clone())),
                guidance: req.guidance,
                guidance_2: req.guidance_2.unwrap_or(req.guidance),
                scheduler,
                first_step: 0,
                token_weights: Some(token_weights),
                given: Some((mask, clean)),
            },
            clock,
            progress,
            &mut |_, _| {},
        )?;
        (nf..nf + w.new)
            .map(|i| Ok(latents.narrow(2, i, 1)?))
            .collect()
    }
}

/// Pictures as frames (N, H, W, 3) in [0, 1], each fitted to `(width, height)` as the model saw it.
pub fn as_frames(
    pics: &[Picture],
    (width, height): (usize, usize),
    device: &candle_core::Device,
) -> Result<Tensor> {
    let data: Vec<f32> = pics
        .iter()
        .flat_map(|p| crate::denoise::fit(p, width, height))
        .map(|v| v as f32 / 255.0)
        .collect();
    Ok(Tensor::from_vec(
        data,
        (pics.len(), height, width, 3),
        device,
    )?)
}

/// The whole clip a continuation makes: `before`'s frames, the `new` frames (F, H, W, 3) in [0, 1], then
/// `after`'s, each given frame fitted to the new frames' size as the model saw it.
pub fn join_clips(before: &[Picture], new: &Tensor, after: &[Picture]) -> Result<Tensor> {
    let (_, h, w, _) = new.dims4()?;
    let mut parts = Vec::new();
    if !before.is_empty() {
        parts.push(as_frames(before, (w, h), new.device())?);
    }
    parts.push(new.clone());
    if !after.is_empty() {
        parts.push(as_frames(after, (w, h), new.device())?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOY: Shape = Shape {
        window: 8,
        slice: 2,
        context: 4,
    };

    fn made(p: &Plan) -> usize {
        match p {
            Plan::Forward { windows, .. } | Plan::Backward { windows } => windows.iter().sum(),
            Plan::Join { windows, last } => windows.iter().sum::<usize>() + last,
        }
    }

    #[test]
    fn plans_make_at_least_the_frames_asked_and_joins_exactly() {
        for frames in 1..100 {
            let t2v = Plan::new(TOY, frames, 0, 0);
            assert!(
                made(&t2v) >= frames && made(&t2v) < frames.max(8) + 4,
                "{t2v:?}"
            );
            let i2v = Plan::new(TOY, frames, 1, 0);
            assert!(
                1 + made(&i2v) >= frames && made(&i2v) < frames.max(8) + 4,
                "{i2v:?}"
            );
            let ext = Plan::new(TOY, frames, 4, 0);
            assert!(made(&ext) >= frames && made(&ext) < frames + 4, "{ext:?}");
            let back = Plan::new(TOY, frames, 0, 2);
            assert!(
                made(&back) >= frames && made(&back) < frames + 4,
                "{back:?}"
            );
            if frames % 2 == 0 {
                let join = Plan::new(TOY, frames, 4, 4);
                assert_eq!(made(&join), frames, "{join:?}");
                let Plan::Join { windows, last } = &join else {
                    panic!("{join:?}")
                };
                assert!(*last <= 4 && *last > 0);
                assert!(windows.iter().all(|&n| n > 0 && n <= 4 && n % 2 == 0));
            }
        }
        assert_eq!(
            Plan::new(TOY, 480, 0, 0),
            Plan::Forward {
                given: 0,
                windows: [8].into_iter().chain([4; 118]).collect()
            }
        );
    }
}
