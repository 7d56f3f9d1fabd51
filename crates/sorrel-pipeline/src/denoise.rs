//! The one denoising loop every mode runs, and the steps around it that modes share: prompt encoding, the
//! sampler, pixels to normalised latents (VAE encode) and back (VAE decode).
//!
//! The loop is written out as diffusers' Wan pipelines write theirs, so the two can be read side by side.

use std::time::{Duration, Instant};

#[cfg(test)]
use candle_core::Device;
use candle_core::{DType, Tensor};
use sorrel_core::{Error, Result};
use sorrel_models::wan::transformer::{Context, WanTransformer3DModel};
use sorrel_schedulers::{self as schedulers, Scheduler};

use crate::loader::{VaeTiling, WanPipeline};
use crate::progress::{Event, ProgressFn};
use crate::request::{GenerateRequest, Picture};
use sorrel_models::wan::vae::Tiling;

/// Where time went, in order: ("text encoder", ..), ("step 1", ..), .., ("vae decode", ..).
pub type Timings = Vec<(String, Duration)>;

/// The prompt's and the negative prompt's cross-attention contexts as a transformer embeds them; called
/// again when a two-expert model switches experts, since each embeds the text with its own weights.
pub(crate) type ContextsFn<'a> = dyn Fn(&WanTransformer3DModel) -> Result<(Context, Context)> + 'a;

/// Sees the latents after each step run (counting from 0), for checks and previews.
pub type StepFn<'a> = dyn FnMut(usize, &Tensor) + 'a;

/// Videos of at most this many transformer tokens run guidance's two predictions as one batch of 2. At
/// a few hundred tokens each operation's fixed cost dominates, so one batched forward costs little more
/// than one alone; larger videos keep two forwards, which hold half the activations at a time.
pub const BATCHED_GUIDANCE_TOKENS: usize = 4096;

/// Records laps into a [`Timings`].
pub(crate) struct Stopwatch {
    tick: Instant,
    /// The laps so far.
    pub timings: Timings,
}

impl Stopwatch {
    pub(crate) fn new() -> Self {
        Self {
            tick: Instant::now(),
            timings: Vec::new(),
        }
    }

    /// Ends the current lap under `name`.
    pub(crate) fn lap(&mut self, name: impl Into<String>) {
        self.timings.push((name.into(), self.tick.elapsed()));
        self.tick = Instant::now();
    }

    /// Folds every lap called `name` into one at the end, for stages that recur (a long video's decode,
    /// window by window).
    pub(crate) fn merge(&mut self, name: &str) {
        let total: Duration = self
            .timings
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, d)| *d)
            .sum();
        let before = self.timings.len();
        self.timings.retain(|(n, _)| n != name);
        if self.timings.len() < before {
            self.timings.push((name.to_string(), total));
        }
    }
}

/// Tells `progress` about a stage; `Err(Cancelled)` if it asks to stop.
pub(crate) fn stage(progress: &mut ProgressFn, name: &'static str) -> Result<()> {
    if progress(&Event::Stage(name)) {
        Ok(())
    } else {
        Err(Error::Cancelled)
    }
}

/// One run of the loop: what the modes prepare and [`WanPipeline::denoise`] consumes.
pub(crate) struct Denoise<'a> {
    /// (1, z, T, h, w) f32 at the noise level of `first_step`.
    pub latents: Tensor,
    /// (1, c, T, h, w) appended to the latents' channels in every model input (image-to-video: the mask and
    /// the encoded conditioning video).
    pub condition: Option<Tensor>,
    /// The prompt's context, and the negative prompt's (used when `guidance > 1`), for a transformer.
    pub contexts: &'a ContextsFn<'a>,
    pub guidance: f64,
    /// Guidance of the low-noise expert of a two-expert model (diffusers' `guidance_scale_2`).
    pub guidance_2: f64,
    /// Prepared with `set_timesteps`.
    pub scheduler: Box<dyn Scheduler>,
    /// The first step to run (video-to-video starts part-way down the schedule).
    pub first_step: usize,
    /// Per-token timestep weights (1, N), N the size of the transformer's patch grid: each token sees
    /// `t * weight` (Wan2.2's image-to-video holds its first latent frame at t = 0 this way); `None`: every
    /// token sees `t`.
    pub token_weights: Option<Tensor>,
    /// Latent frames given clean (models trained with clean context frames, such as the embedded model):
    /// a mask (1, 1, T, 1, 1), 1 on given frames, and the clean latents (1, z, T, h, w). The given frames
    /// are put back after every step, so they stay exactly as given while the rest is denoised around them.
    pub given: Option<(Tensor, Tensor)>,
}

/// The transformer the loop is running and the contexts it embedded.
struct Running {
    /// Which expert (0 for a one-transformer model).
    expert: usize,
    model: std::sync::Arc<WanTransformer3DModel>,
    cond: Context,
    uncond: Context,
    /// Both contexts as one batch of 2, when guidance runs batched.
    both: Option<Context>,
}

/// One value per token (1, N) from one per latent frame (a timestep, or a weight on the step's timestep): each
/// temporal patch of `pt` frames takes its first frame's value, over its `h/ph x w/pw` tokens.
pub(crate) fn per_token(
    per_frame: &[f32],
    [pt, ph, pw]: [usize; 3],
    (h, w): (usize, usize),
    device: &candle_core::Device,
) -> Result<Tensor> {
    let tokens = (h / ph) * (w / pw);
    let v: Vec<f32> = per_frame
        .chunks(pt)
        .flat_map(|c| std::iter::repeat_n(c[0], tokens))
        .collect();
    let n = v.len();
    Ok(Tensor::from_vec(v, (1, n), device)?)
}

/// The model's prediction for x at timesteps tt with classifier-free guidance: uncond + g (cond - uncond),
/// or cond alone at g <= 1. `both` (the two contexts as one batch) runs the two as one forward.
pub(crate) fn guided(
    model: &WanTransformer3DModel,
    x: &Tensor,
    tt: &Tensor,
    (cond, uncond): (&Context, &Context),
    both: Option<&Context>,
    guidance: f64,
) -> Result<Tensor> {
    let predict = |x: &Tensor, tt: &Tensor, ctx: &Context| -> Result<Tensor> {
        Ok(model
            .forward_with_context(x, tt, ctx)?
            .to_dtype(DType::F32)?)
    };
    Ok(match both {
        Some(ctx) if guidance > 1.0 => {
            let xx = Tensor::cat(&[x, x], 0)?;
            let tt2 = Tensor::cat(&[tt, tt], 0)?;
            let p = predict(&xx, &tt2, ctx)?;
            let (c, u) = (p.narrow(0, 0, 1)?, p.narrow(0, 1, 1)?);
            (&u + ((c - &u)? * guidance)?)?
        }
        _ if guidance > 1.0 => {
            let c = predict(x, tt, cond)?;
            let u = predict(x, tt, uncond)?;
            (&u + ((c - &u)? * guidance)?)?
        }
        _ => predict(x, tt, cond)?,
    })
}

impl WanPipeline {
    /// The sampler a request asks for: the folder's config unless the request names one or a shift.
    pub(crate) fn scheduler_for(&self, req: &GenerateRequest) -> Result<Box<dyn Scheduler>> {
        match (&req.scheduler, &self.scheduler_config, req.flow_shift) {
            (None, Some(path), None) => schedulers::from_config_file(path),
            (name, _, shift) => {
                let name = name.clone().unwrap_or_else(|| "unipc".into());
                schedulers::from_name(&name, shift.unwrap_or_else(|| self.default_flow_shift()))
            }
        }
    }

    /// Prompt embeddings for `[prompt, negative]`, zeroed past each prompt's length (as diffusers does).
    /// Returns (2, L, text_dim) and the words the tokenizer did not know.
    pub(crate) fn encode_prompts(&self, req: &GenerateRequest) -> Result<(Tensor, Vec<String>)> {
        let tokens = self.tokenizer.encode(
            &[&req.prompt, &req.negative_prompt],
            req.max_sequence_length
                .unwrap_or(self.info.defaults.max_sequence_length),
        )?;
        let (ids, mask) = tokens.to_tensors(&self.device)?;
        let emb = self.text_encoder.prompt_embeds(&ids, &mask)?;
        let mut unknown: Vec<String> = tokens.unknown.iter().flatten().cloned().collect();
        unknown.dedup();
        Ok((emb, unknown))
    }

    /// Starting noise (1, z, T, h, w): the request's `init_latents`, or Gaussian noise from its seed.
    pub(crate) fn noise(&self, req: &GenerateRequest) -> Result<Tensor> {
        let (t, h, w) = req.latent_size(self.info.compression);
        let t = t + req.reference_count();
        Ok(match &req.init_latents {
            Some(l) => l.to_device(&self.device)?.to_dtype(DType::F32)?,
            None => crate::noise::gaussian(
                req.seed,
                &[1, self.vae_config.z_dim, t, h, w],
                &self.device,
            )?,
        })
    }

    /// The loop: for each step from `first_step`, the model's prediction for the prompt (and, with guidance,
    /// for the negative prompt, combined as uncond + g * (cond - uncond)), then the sampler's step. Returns
    /// the final latents, normalised as the model sees them.
    pub(crate) fn denoise(
        &self,
        job: Denoise,
        clock: &mut Stopwatch,
        progress: &mut ProgressFn,
        on_step: &mut StepFn,
    ) -> Result<Tensor> {
        let Denoise {
            mut latents,
            condition,
            contexts,
            guidance,
            guidance_2,
            mut scheduler,
            first_step,
            token_weights,
            given,
        } = job;
        let keep_given = |x: Tensor| -> Result<Tensor> {
            Ok(match &given {
                Some((mask, clean)) => {
                    (x.broadcast_mul(&(1.0 - mask)?)? + clean.broadcast_mul(mask)?)?
                }
                None => x,
            })
        };
        latents = keep_given(latents)?;
        if first_step > 0 {
            scheduler.begin_at(first_step)?;
        }
        let timesteps = scheduler.timesteps()[first_step..].to_vec();
        stage(progress, "denoising")?;
        let tokens = {
            let (_, _, t, h, w) = latents.dims5()?;
            let [pt, ph, pw] = self.info.patch;
            t.div_ceil(pt) * (h / ph) * (w / pw)
        };
        let batched = guidance.max(guidance_2) > 1.0 && tokens <= BATCHED_GUIDANCE_TOKENS;
        // The running transformer and its contexts.
        let mut current: Option<Running> = None;
        let mut condition = condition;
        for (i, &ts) in timesteps.iter().enumerate() {
            let k = self.transformer.index_for(f64::from(ts));
            let run = match current.take() {
                Some(r) if r.expert == k => current.insert(r),
                // None yet, or the other expert: it is let go (taken above) before this one loads.
                other => {
                    if other.is_some() {
                        stage(progress, "switching to the low-noise expert")?;
                    }
                    // The other expert (and its contexts) goes before this one loads, so the two are never
                    // resident together.
                    drop(other);
                    let model = self.transformer.get(k)?;
                    let (cond, uncond) = contexts(&model)?;
                    let both = batched
                        .then(|| Context::batch(&cond, &uncond))
                        .transpose()?;
                    condition = condition.map(|c| c.to_dtype(model.dtype())).transpose()?;
                    current.insert(Running {
                        expert: k,
                        model,
                        cond,
                        uncond,
                        both,
                    })
                }
            };
            let (model, cond, uncond) = (&run.model, &run.cond, &run.uncond);
            let guidance = if k == 1 { guidance_2 } else { guidance };
            let dt = model.dtype();
            let x = latents.to_dtype(dt)?;
            let x = match &condition {
                Some(c) => Tensor::cat(&[&x, c], 1)?,
                None => x,
            };
            let tt = match &token_weights {
                Some(w) => (w * ts as f64)?,
                None => Tensor::new(&[ts], &self.device)?,
            };
            let pred = guided(model, &x, &tt, (cond, uncond), run.both.as_ref(), guidance)?;
            latents = keep_given(scheduler.step(&pred, &latents)?)?;
            on_step(i, &latents);
            clock.lap(format!("step {}", i + 1));
            if !progress(&Event::Step {
                index: i + 1,
                total: timesteps.len(),
                timestep: ts,
            }) {
                return Err(Error::Cancelled);
            }
        }
        Ok(latents)
    }

    /// Normalised latents (1, z, T, h, w) -> frames (F, H, W, 3) in [0, 1], announced to `progress` as the
    /// stage "vae decode", or "vae decode in tiles" when it is tiled ([`Self::decode_tiling`]).
    pub(crate) fn decode_latents(
        &self,
        latents: &Tensor,
        progress: &mut ProgressFn,
    ) -> Result<Tensor> {
        let (mean, std) = (self.vae.latents_mean()?, self.vae.latents_std()?);
        // diffusers computes latents / (1/std) + mean; z*std + mean differs by an ulp.
        let z = latents.broadcast_div(&std.recip()?)?.broadcast_add(&mean)?;
        let (_, _, t, h, w) = z.dims5()?;
        let s = self.vae_config.spatial_compression();
        let frames = (t.max(1) - 1) * self.info.compression.1 + 1;
        let tiling = self.decode_tiling(w * s, h * s, frames)?;
        stage(
            progress,
            if tiling.is_some() {
                "vae decode in tiles"
            } else {
                "vae decode"
            },
        )?;
        let video = match tiling {
            Some(tiling) => self.vae.decode_tiled(&z, &tiling)?,
            None => self.vae.decode(&z)?,
        };
        Ok(decoded_to_frames(&video)?)
    }

    /// The tiles a decode of `frames` frames of `width` x `height` takes, if any: always with `--vae-tiling
    /// on` (for frames larger than a tile), never with `off`, and with `auto` only when the whole-frame decode
    /// would not fit in the memory available now.
    pub(crate) fn decode_tiling(
        &self,
        width: usize,
        height: usize,
        frames: usize,
    ) -> Result<Option<Tiling>> {
        let tiling = Tiling::default();
        if !tiling.cuts(width, height) {
            return Ok(None);
        }
        Ok(match self.vae_tiling {
            VaeTiling::Off => None,
            VaeTiling::On => Some(tiling),
            VaeTiling::Auto => {
                let whole =
                    crate::memory::vae_piece(&self.vae_config, self.vae.dtype(), width, height);
                // The decoded frames and their copy as pictures, as the memory check counts them.
                let frames = 2 * (width * height * 3 * 4 * frames) as u64;
                match crate::memory::available_on(&self.device)? {
                    Some(room) if whole + frames > room => Some(tiling),
                    _ => None,
                }
            }
        })
    }

    /// A video (1, 3, F, H, W) in [-1, 1] -> normalised latents (1, z, T, h, w): the posterior mean, as the
    /// diffusers pipelines take it (`sample_mode="argmax"`), then (x - mean) / std.
    pub(crate) fn encode_video(&self, video: &Tensor) -> Result<Tensor> {
        let (mean, std) = (self.vae.latents_mean()?, self.vae.latents_std()?);
        let z = if self.info.compression.1 == 1 {
            // A VAE that keeps every frame (Sorrel's own) encodes each frame alone, as it was trained;
            // diffusers' chunks of 1 + 4k frames would drop the frames past the last whole chunk.
            let (_, c, f, h, w) = video.dims5()?;
            let frames = video
                .permute((0, 2, 1, 3, 4))?
                .reshape((f, c, 1, h, w))?
                .contiguous()?;
            let (m, _) = self.vae.encode(&frames)?;
            let (_, zc, _, lh, lw) = m.dims5()?;
            m.reshape((f, zc, lh, lw))?
                .permute((1, 0, 2, 3))?
                .unsqueeze(0)?
                .contiguous()?
        } else {
            self.vae.encode(video)?.0
        };
        // diffusers multiplies by 1/std; dividing by std differs by an ulp.
        Ok(z.broadcast_sub(&mean)?.broadcast_mul(&std.recip()?)?)
    }

    /// Pictures -> (1, 3, F, height, width) in [-1, 1] on the model's device, each resized to the size if it
    /// has another (see [`fit`]).
    pub(crate) fn pictures_to_video(
        &self,
        pictures: &[&Picture],
        (width, height): (usize, usize),
    ) -> Result<Tensor> {
        let mut planes = vec![0f32; 3 * pictures.len() * height * width];
        let (f, hw) = (pictures.len(), height * width);
        for (fi, p) in pictures.iter().enumerate() {
            let rgb = fit(p, width, height);
            for (i, px) in rgb.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    // VaeImageProcessor: u8 / 255, then 2x - 1, in f32.
                    planes[(c * f + fi) * hw + i] = px[c] as f32 / 255.0 * 2.0 - 1.0;
                }
            }
        }
        Ok(Tensor::from_vec(
            planes,
            (1, 3, f, height, width),
            &self.device,
        )?)
    }
}

/// A picture's pixels at `width` x `height`: as is when it has that size; otherwise scaled to cover the size
/// and cropped at the centre (Lanczos3), so the picture keeps its proportions. diffusers' default stretches
/// instead; a stretched face is never what a user wants, and cropping is diffusers' `resize_mode="crop"`.
pub fn fit(p: &Picture, width: usize, height: usize) -> Vec<u8> {
    if (p.width, p.height) == (width, height) {
        return p.rgb.clone();
    }
    let img = image::RgbImage::from_raw(p.width as u32, p.height as u32, p.rgb.clone())
        .expect("picture checked by GenerateRequest::check");
    let scale = (width as f64 / p.width as f64).max(height as f64 / p.height as f64);
    let (sw, sh) = (
        ((p.width as f64 * scale).round() as u32).max(width as u32),
        ((p.height as f64 * scale).round() as u32).max(height as u32),
    );
    let scaled = image::imageops::resize(&img, sw, sh, image::imageops::FilterType::Lanczos3);
    let (left, top) = ((sw - width as u32) / 2, (sh - height as u32) / 2);
    image::imageops::crop_imm(&scaled, left, top, width as u32, height as u32)
        .to_image()
        .into_raw()
}

/// A VAE's decoded video, (1, 3, F, H, W) in [-1, 1], as frames (F, H, W, 3) in [0, 1]: the conversion
/// every caller that writes or scores decoded frames must share, so they round alike.
pub fn decoded_to_frames(video: &Tensor) -> candle_core::Result<Tensor> {
    ((video / 2.0)? + 0.5)?
        .clamp(0f32, 1f32)?
        .squeeze(0)?
        .permute([1, 2, 3, 0])?
        .contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::LoadOptions;

    /// Runs the loop on wan-tiny-alt's prompt and noise for 3 steps.
    fn run(pipe: &WanPipeline, token_weights: Option<Tensor>) -> Tensor {
        let r = sorrel_testkit::reference("wan-tiny-alt");
        let contexts = |m: &WanTransformer3DModel| -> Result<(Context, Context)> {
            Ok((
                m.embed_context(&r["prompt_embeds"], None)?,
                m.embed_context(&r["negative_prompt_embeds"], None)?,
            ))
        };
        let mut scheduler = schedulers::from_name("unipc", 5.0).unwrap();
        scheduler.set_timesteps(3).unwrap();
        pipe.denoise(
            Denoise {
                latents: r["latents_init"].clone(),
                condition: None,
                contexts: &contexts,
                guidance: 5.0,
                guidance_2: 5.0,
                scheduler,
                first_step: 0,
                token_weights,
                given: None,
            },
            &mut Stopwatch::new(),
            &mut |_| true,
            &mut |_, _| {},
        )
        .unwrap()
    }

    #[test]
    fn token_weights_reach_the_transformer() {
        let dir = sorrel_testkit::fixture("wan-tiny-alt").join("pipeline");
        let pipe = WanPipeline::load(&dir, &LoadOptions::default()).unwrap();
        // 13 frames of 48x32: 4 latent frames of 4x6, patches 2x2 -> 4 x 2 x 3 = 24 tokens.
        let base = run(&pipe, None);
        let ones = Tensor::ones((1, 24), DType::F32, &Device::Cpu).unwrap();
        let same = run(&pipe, Some(ones));
        // Equal but for the time MLP multiplying 24 rows instead of 1.
        assert!(sorrel_testkit::max_abs_diff(&base, &same) <= 1e-4);
        // The first latent frame's 6 tokens held at t = 0 change the result.
        let mut w = vec![1f32; 24];
        w[..6].fill(0.0);
        let held = run(
            &pipe,
            Some(Tensor::from_vec(w, (1, 24), &Device::Cpu).unwrap()),
        );
        assert!(sorrel_testkit::max_abs_diff(&base, &held) > 1e-2);
    }
}
