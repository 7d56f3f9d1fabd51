//! SkyReels-V2 diffusion forcing: every latent frame has its own noise level and its own sampler, so a video
//! is made window by window to any length, each window starting from the last frames of the one before
//! (given clean, lightly re-noised with `addnoise`), and frames are decoded as their window finishes.
//!
//! Each window runs the rows of its step matrix ([`schedule::step_matrix`]): one transformer prediction on
//! the frames in view, each at its own timestep, then a sampler step for the frames the row updates. The
//! prediction and guidance are the shared loop's ([`crate::denoise`]).

pub mod schedule;

use candle_core::{DType, Tensor};
use sorrel_core::{Error, Result};
use sorrel_models::wan::transformer::Context;
use sorrel_schedulers::Scheduler;

use crate::denoise::{guided, per_token, stage, StepFn, Stopwatch};
use crate::loader::WanPipeline;
use crate::modes::{FrameSink, ModelInfo, Streamed, Video};
use crate::progress::{Event, ProgressFn};
use crate::request::{Conditioning, GenerateRequest, Picture};
use schedule::{step_matrix, Windows};

/// Where diffusion forcing's random numbers come from: each window's starting noise and each re-noising of
/// the repeated frames. [`SeededNoise`] by default; a test replays another program's draws.
pub trait ForcingNoise {
    /// Window `k`'s starting noise of `shape`.
    fn window(&mut self, k: usize, shape: &[usize]) -> Result<Tensor>;
    /// The next draw of noise mixed into repeated frames, of `shape`.
    fn condition(&mut self, shape: &[usize]) -> Result<Tensor>;
}

/// Noise from the request's seed: window 0 as any other mode's starting noise (or the request's
/// `init_latents`), the rest from derived seeds.
pub struct SeededNoise {
    seed: u64,
    first: Option<Tensor>,
    draws: u64,
    device: candle_core::Device,
}

impl SeededNoise {
    /// Noise for a request with `seed`, starting from `first` when given.
    pub fn new(seed: u64, first: Option<Tensor>, device: &candle_core::Device) -> Self {
        Self {
            seed,
            first,
            draws: 0,
            device: device.clone(),
        }
    }

    fn derived(&self, stream: u64, k: u64) -> u64 {
        // Distinct streams for windows and re-noising; a large odd multiplier keeps neighbours apart.
        self.seed
            .wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .wrapping_add(k.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }
}

impl ForcingNoise for SeededNoise {
    fn window(&mut self, k: usize, shape: &[usize]) -> Result<Tensor> {
        if k == 0 {
            if let Some(t) = self.first.take() {
                return Ok(t.to_device(&self.device)?.to_dtype(DType::F32)?);
            }
        }
        let seed = if k == 0 {
            self.seed
        } else {
            self.derived(1, k as u64)
        };
        Ok(crate::noise::gaussian(seed, shape, &self.device)?)
    }

    fn condition(&mut self, shape: &[usize]) -> Result<Tensor> {
        self.draws += 1;
        Ok(crate::noise::gaussian(
            self.derived(2, self.draws),
            shape,
            &self.device,
        )?)
    }
}

/// The diffusion-forcing settings a request resolved against its model.
struct Plan {
    windows: Windows,
    /// Frames each window repeats from the video so far (what `overlap` counts in latent frames).
    overlap_frames: usize,
    addnoise: f64,
    ar_step: usize,
    block: usize,
    sample_fps: u32,
}

impl WanPipeline {
    fn forcing_plan(&self, req: &GenerateRequest) -> Result<Plan> {
        let (windows, block) = windows_for(req, &self.info)?;
        Ok(Plan {
            windows,
            overlap_frames: overlap_frames(req),
            addnoise: req.forcing.addnoise.unwrap_or(DEFAULT_ADDNOISE),
            ar_step: req.forcing.ar_step,
            block,
            sample_fps: req.forcing.sample_fps.unwrap_or(self.info.defaults.fps),
        })
    }

    /// Runs a text-to-video or image-to-video request on a diffusion-forcing model with noise from `noise`;
    /// `on_row` sees the window's latents after each iteration (counted across windows from 0).
    pub fn generate_forcing(
        &self,
        req: &GenerateRequest,
        progress: &mut ProgressFn,
        noise: &mut dyn ForcingNoise,
        on_row: &mut StepFn,
    ) -> Result<Video> {
        let mut frames = Vec::new();
        let made =
            self.generate_forcing_into(req, progress, noise, on_row, &mut |f: &Tensor, _| {
                frames.push(f.clone());
                Ok(())
            })?;
        Ok(Video {
            frames: Tensor::cat(&frames, 0)?,
            timings: made.timings,
            unknown_words: made.unknown_words,
        })
    }

    /// [`Self::generate_forcing`], handing each window's new frames to `sink` as soon as they are decoded
    /// instead of keeping them: memory is set by one window, whatever the video's length.
    pub fn generate_forcing_into(
        &self,
        req: &GenerateRequest,
        progress: &mut ProgressFn,
        noise: &mut dyn ForcingNoise,
        on_row: &mut StepFn,
        sink: &mut FrameSink,
    ) -> Result<Streamed> {
        req.validate(self)?;
        let plan = self.forcing_plan(req)?;
        let mut clock = Stopwatch::new();
        stage(progress, "text encoder")?;
        let (emb, unknown_words) = self.encode_prompts(req)?;
        let model = self.transformer()?;
        let context = |i: usize| -> Result<Context> {
            let mut c = model.embed_context(&emb.narrow(0, i, 1)?, None)?;
            c.sample_fps = Some(plan.sample_fps);
            c.causal_block = Some(plan.block);
            Ok(c)
        };
        let (cond, uncond) = (context(0)?, context(1)?);
        clock.lap("text encoder");

        let (s_c, tc) = self.info.compression;
        let (h, w) = (req.height / s_c, req.width / s_c);
        let z = self.vae_config.z_dim;
        // Latent frames given clean at the start of the first window, and how many decoded frames they make that
        // are not part of the output.
        let (given, hidden) = match &req.conditioning {
            Conditioning::None => (None, 0),
            // Image to video: the picture's latent frame is the first window's given frame (diffusers'
            // `SkyReelsV2DiffusionForcingImageToVideoPipeline`); it stays in the video.
            Conditioning::Image { first, last: None } => {
                stage(progress, "vae encode")?;
                let f = self.encode_pictures(&[first], (req.width, req.height))?;
                clock.lap("vae encode");
                (Some(f), 0)
            }
            // Extension (diffusers' `SkyReelsV2DiffusionForcingVideoToVideoPipeline`): the clip's last
            // `overlap` frames, encoded on their own, start the first window. Their decoded copies are left out:
            // the caller has the clip itself.
            Conditioning::Continue { before, after } if after.is_empty() => {
                stage(progress, "vae encode")?;
                let tail: Vec<&Picture> = before[before.len() - plan.overlap_frames..].iter().collect();
                let f = self.encode_pictures(&tail, (req.width, req.height))?;
                clock.lap("vae encode");
                let hidden = tc * (f.dim(2)? - 1) + 1;
                (Some(f), hidden)
            }
            _ => {
                return Err(Error::invalid(
                    "diffusion forcing makes videos from a prompt, from a prompt and a first frame (--image), or \
                     continues a clip forward (--extend)"
                        .to_string(),
                ))
            }
        };
        let extends = hidden > 0;
        let (mean, std) = (self.vae.latents_mean()?, self.vae.latents_std()?);
        let mut decoder = self.vae.decode_stream();
        let mut made = 0;
        let mut history: Option<Tensor> = None;
        let windows = plan.windows;
        let timesteps = {
            let mut s = self.scheduler_for(req)?;
            s.set_timesteps(req.steps)?;
            s.timesteps().to_vec()
        };
        // Every window's schedule up front, so progress counts iterations over the whole video.
        let keep = windows.overlap - windows.overlap % plan.block;
        let matrices = (0..windows.count())
            .map(|k| {
                let n = windows.frames_of(k);
                // diffusers' image-to-video pipeline keeps the full window as the base; its text-to-video and
                // video-to-video ones use each window's own length.
                let base = if extends || (windows.is_long() && given.is_none()) {
                    n
                } else {
                    windows.window
                };
                let prefix = match (k, &given) {
                    (0, Some(g)) => g.dim(2)?,
                    (0, None) => 0,
                    _ => keep,
                };
                step_matrix(n, &timesteps, base, plan.ar_step, prefix, plan.block)
            })
            .collect::<Result<Vec<_>>>()?;
        let total: usize = matrices.iter().map(|m| m.timesteps.len()).sum();
        let mut done = 0;
        for (k, matrix) in matrices.iter().enumerate() {
            let window = Event::Window {
                index: k + 1,
                total: matrices.len(),
            };
            if !progress(&window) {
                return Err(Error::Cancelled);
            }
            stage(progress, "denoising")?;
            let n = windows.frames_of(k);
            let mut latents = noise.window(k, &[1, z, n, h, w])?;
            // The last frames so far, given clean, in whole causal blocks.
            let prefix = match &history {
                Some(hist) => {
                    let t = hist.dim(2)?;
                    let p = hist.narrow(2, t - windows.overlap, keep)?;
                    latents = Tensor::cat(&[&p, &latents.narrow(2, keep, n - keep)?], 2)?;
                    keep
                }
                None => match &given {
                    Some(g) => {
                        let p = g.dim(2)?;
                        latents = Tensor::cat(&[g, &latents.narrow(2, p, n - p)?], 2)?;
                        p
                    }
                    None => 0,
                },
            };
            let mut samplers: Vec<Box<dyn Scheduler>> = (0..n)
                .map(|_| {
                    let mut s = self.scheduler_for(req)?;
                    s.set_timesteps(req.steps)?;
                    Ok(s)
                })
                .collect::<Result<_>>()?;
            for (i, row) in matrix.timesteps.iter().enumerate() {
                // A window shorter than the base has fewer frames than the interval reaches.
                let (s, e) = (matrix.intervals[i].0, matrix.intervals[i].1.min(n));
                let mut input = latents.narrow(2, s, e - s)?;
                let mut ts: Vec<f32> = row[s..e].to_vec();
                if plan.addnoise > 0.0 && s < prefix {
                    // The given frames in view, lightly re-noised so the model does not copy them exactly.
                    let g = prefix.min(e) - s;
                    let f = 0.001 * plan.addnoise;
                    let given = input.narrow(2, 0, g)?;
                    let draw = noise.condition(given.dims())?;
                    let noised = ((given * (1.0 - f))? + (draw * f)?)?;
                    input = Tensor::cat(&[&noised, &input.narrow(2, g, e - s - g)?], 2)?;
                    ts[..g].fill(plan.addnoise as f32);
                }
                let tokens = per_token(&ts, self.info.patch, (h, w), &self.device)?;
                let x = input.to_dtype(model.dtype())?;
                let pred = guided(&model, &x, &tokens, (&cond, &uncond), None, req.guidance)?;
                let mut cols = Vec::with_capacity(n);
                for (idx, sampler) in samplers.iter_mut().enumerate() {
                    let frame = latents.narrow(2, idx, 1)?;
                    cols.push(if (s..e).contains(&idx) && matrix.update[i][idx] {
                        // In place, as diffusers and SkyReels-V2's code step each frame (see
                        // `Scheduler::step_in_place`): the model was released with that behaviour.
                        sampler.step_in_place(&pred.narrow(2, idx - s, 1)?, &frame)?
                    } else {
                        frame
                    });
                }
                latents = Tensor::cat(&cols, 2)?;
                on_row(done, &latents);
                done += 1;
                clock.lap(format!("step {done}"));
                if !progress(&Event::Step {
                    index: done,
                    total,
                    timestep: ts.last().copied().unwrap_or(0.0),
                }) {
                    return Err(Error::Cancelled);
                }
            }
            // Frames this window adds, decoded now: the decoder's cache carries on from the last window.
            let new = if k == 0 {
                latents.clone()
            } else {
                latents.narrow(2, windows.overlap, n - windows.overlap)?
            };
            stage(progress, "vae decode")?;
            let zr = new.broadcast_div(&std.recip()?)?.broadcast_add(&mean)?;
            let mut frames = crate::denoise::decoded_to_frames(&decoder.push(&zr)?)?;
            if k == 0 && hidden > 0 {
                frames = frames.narrow(0, hidden, frames.dim(0)? - hidden)?;
            }
            clock.lap("vae decode");
            made += frames.dim(0)?;
            // The windows cover every latent frame once: 1 + tc * (latents - 1) frames in all.
            sink(&frames, req.frames)?;
            history = Some(match history {
                // Only the frames the next window repeats are kept.
                Some(hist) => {
                    let all = Tensor::cat(&[&hist, &new], 2)?;
                    let t = all.dim(2)?;
                    all.narrow(2, t - windows.overlap.min(t), windows.overlap.min(t))?
                }
                None => latents,
            });
        }
        clock.merge("vae decode");
        if made != req.frames {
            return Err(Error::Output(format!(
                "diffusion forcing made {made} frames where its windows planned {}",
                req.frames
            )));
        }
        Ok(Streamed {
            frames: made,
            timings: clock.timings,
            unknown_words,
        })
    }
}

/// Frames each window repeats from the video so far: the request's, or SkyReels' default.
fn overlap_frames(req: &GenerateRequest) -> usize {
    req.forcing.overlap_frames.unwrap_or(DEFAULT_OVERLAP)
}

/// The windows a request takes on a diffusion-forcing model.
fn windows_for(req: &GenerateRequest, info: &ModelInfo) -> Result<(Windows, usize)> {
    let (_, tc) = info.compression;
    let latent = |frames: usize| (frames - 1) / tc + 1;
    let f = &req.forcing;
    let window = f.window_frames.unwrap_or(info.defaults.frames);
    let overlap = overlap_frames(req);
    for (what, v) in [("--window-frames", window), ("--overlap-frames", overlap)] {
        if v == 0 || !(v - 1).is_multiple_of(tc) {
            return Err(Error::invalid(format!(
                "{what} {v} is not a frame count the VAE makes: it must be {tc}k+1 (e.g. 17, 97)"
            )));
        }
    }
    let block = f.causal_block.or(info.diffusion_forcing).unwrap_or(1);
    // An extension's frames are new frames only; its windows also cover the repeated end of the clip.
    let total = match &req.conditioning {
        Conditioning::Continue { .. } => latent(overlap) + req.frames / tc,
        _ => latent(req.frames),
    };
    Ok((
        Windows::plan(total, latent(window), latent(overlap))?,
        block,
    ))
}

/// Checks a request for a diffusion-forcing model: lengths, windows, causal blocks.
pub(crate) fn check(req: &GenerateRequest, info: &ModelInfo) -> Result<()> {
    let name = info.defaults.name.as_deref().unwrap_or("this model");
    if req.frames > info.defaults.max_frames {
        return Err(Error::invalid(format!(
            "{} frames is longer than {name} allows ({} frames, {:.0} s at {} fps)",
            req.frames,
            info.defaults.max_frames,
            info.defaults.max_frames as f64 / info.defaults.fps as f64,
            info.defaults.fps
        )));
    }
    if let Conditioning::Continue { before, after } = &req.conditioning {
        let overlap = overlap_frames(req);
        if !after.is_empty() {
            return Err(Error::invalid(format!(
                "{name} continues a clip forward only: it cannot extend backward or connect two clips (use the \
                 embedded model or a VACE model for those)"
            )));
        }
        if before.len() < overlap {
            let fits = (before.len().max(1) - 1) / info.compression.1 * info.compression.1 + 1;
            return Err(Error::invalid(format!(
                "the clip to extend has {} frames, fewer than the {overlap} the next window repeats \
                 (--overlap-frames): give a longer clip or --overlap-frames {fits}",
                before.len()
            )));
        }
    }
    let (windows, block) = windows_for(req, info)?;
    if block == 0 {
        return Err(Error::invalid(
            "--causal-block must be at least 1".to_string(),
        ));
    }
    if let Some(a) = req.forcing.addnoise {
        if !(0.0..=1000.0).contains(&a) {
            return Err(Error::invalid(format!(
                "--addnoise {a} must be between 0 and 1000 (a timestep; SkyReels suggests 20)"
            )));
        }
    }
    if matches!(req.conditioning, Conditioning::Continue { .. }) {
        let given = (overlap_frames(req) - 1) / info.compression.1 + 1;
        if !given.is_multiple_of(block) {
            return Err(Error::invalid(format!(
                "--overlap-frames repeats {given} latent frames of the clip, not whole causal blocks of {block}: \
                 choose an overlap of a multiple of {block} latent frames (or --causal-block 1)"
            )));
        }
    }
    if windows.overlap > 0 && block > 1 && windows.overlap < block {
        return Err(Error::invalid(format!(
            "--overlap-frames repeats {} latent frames, less than one causal block of {block}: nothing would \
             carry over between windows; overlap more or use a smaller --causal-block",
            windows.overlap
        )));
    }
    for k in 0..windows.count() {
        let n = windows.frames_of(k);
        if !n.is_multiple_of(block) {
            return Err(Error::invalid(format!(
                "window {} has {n} latent frames, not whole causal blocks of {block}: choose --frames, \
                 --window-frames and --overlap-frames so every window's latent frames are a multiple of {block} \
                 (or --causal-block 1)",
                k + 1
            )));
        }
    }
    Ok(())
}

/// Latent frames of the first window (what `init_latents` must hold).
pub(crate) fn first_window_frames(req: &GenerateRequest, info: &ModelInfo) -> Result<usize> {
    Ok(windows_for(req, info)?.0.frames_of(0))
}

/// diffusers' default `overlap_history` in SkyReels-V2's examples, in frames.
pub const DEFAULT_OVERLAP: usize = 17;
/// SkyReels-V2's recommended `addnoise_condition` for long videos.
pub const DEFAULT_ADDNOISE: f64 = 20.0;
