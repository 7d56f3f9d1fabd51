//! Text-to-video: prompt -> UMT5 embeddings -> denoising loop with classifier-free guidance -> VAE decode.
//!
//! The loop is written out as diffusers' `WanPipeline.__call__` is, so the two can be read side by side.

use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use sorrel_core::{Error, Result};
use sorrel_schedulers::{self as schedulers, Scheduler};

use crate::loader::WanPipeline;
use crate::noise;
use crate::progress::{Event, ProgressFn};

/// What to generate.
#[derive(Debug, Clone)]
pub struct Text2VideoRequest {
    /// The prompt.
    pub prompt: String,
    /// What to steer away from (empty: the unconditional embedding of "").
    pub negative_prompt: String,
    /// Output width in pixels (for Wan2.1 a multiple of 16: the VAE's 8x times the 2x patch).
    pub width: usize,
    /// Output height in pixels (as `width`).
    pub height: usize,
    /// Output frames: 1 + a multiple of the VAE's temporal compression (4k+1 for Wan2.1).
    pub frames: usize,
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale; at 1.0 or below the negative pass is skipped.
    pub guidance: f64,
    /// Noise seed (ignored when `init_latents` is given).
    pub seed: u64,
    /// Text tokens per prompt (padding or truncating); `None`: what the model was trained with (512 for
    /// the released Wan models).
    pub max_sequence_length: Option<usize>,
    /// `unipc` or `euler`; `None` uses the model folder's scheduler config.
    pub scheduler: Option<String>,
    /// Overrides the scheduler's flow shift.
    pub flow_shift: Option<f64>,
    /// Starting noise (1, z, T, h, w) (for Wan2.1: (1, 16, T, H/8, W/8)), instead of noise from `seed`.
    pub init_latents: Option<Tensor>,
}

impl Default for Text2VideoRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            width: 832,
            height: 480,
            frames: 81,
            steps: 50,
            guidance: 5.0,
            seed: 0,
            max_sequence_length: None,
            scheduler: None,
            flow_shift: None,
            init_latents: None,
        }
    }
}

/// A generated clip.
pub struct Video {
    /// (F, H, W, 3) f32 in [0, 1].
    pub frames: Tensor,
    /// Where time went, in order: ("text encoder", ..), ("step 1", ..), .., ("vae decode", ..).
    pub timings: Vec<(String, Duration)>,
    /// Words the tokenizer did not know (mapped to its unknown token).
    pub unknown_words: Vec<String>,
}

impl Text2VideoRequest {
    /// Checks the request against the model; every error says what to change.
    pub fn validate(&self, pipe: &WanPipeline) -> Result<()> {
        self.check()?;
        self.check_for(
            &pipe.defaults,
            pipe.compression(),
            pipe.transformer.config().patch_size,
        )?;
        let bad = |m: String| Err(Error::invalid(m));
        let (t, h, w) = self.latent_size(pipe);
        let z = pipe.transformer.config().in_channels;
        if let Some(l) = &self.init_latents {
            let want = [1, z, t, h, w];
            if l.dims() != want {
                return bad(format!(
                    "init latents have shape {:?} but {}x{} with {} frames needs {:?}",
                    l.dims(),
                    self.width,
                    self.height,
                    self.frames,
                    want
                ));
            }
        }
        pipe.transformer
            .check_latent_size(t, h, w)
            .map_err(Error::invalid)?;
        Ok(())
    }

    /// The checks that need no model (sizes, counts, names), to run before loading weights.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(m));
        if self.prompt.trim().is_empty() {
            return bad("the prompt is empty: say what the video should show".into());
        }
        if self.width == 0 || self.height == 0 {
            return bad(format!(
                "size {}x{} is not supported: width and height must be positive",
                self.width, self.height
            ));
        }
        if self.frames == 0 {
            return bad("0 frames is not supported: ask for at least one frame".into());
        }
        if self.steps == 0 || self.steps > 1000 {
            return bad(format!(
                "{} steps is not supported: use 1 to 1000 (50 is typical)",
                self.steps
            ));
        }
        if !self.guidance.is_finite() || self.guidance < 0.0 {
            return bad(format!(
                "guidance {} is not supported: use a finite value >= 0 (5.0 is typical)",
                self.guidance
            ));
        }
        if let Some(n) = self.max_sequence_length {
            if n == 0 || n > 4096 {
                return bad(format!(
                    "max_sequence_length {n} must be between 1 and 4096"
                ));
            }
        }
        if let Some(name) = &self.scheduler {
            if !schedulers::NAMES.contains(&name.as_str()) {
                return bad(format!(
                    "unknown scheduler `{name}`: choose one of {}",
                    schedulers::NAMES.join(", ")
                ));
            }
        }
        if let Some(s) = self.flow_shift {
            if !s.is_finite() || s <= 0.0 {
                return bad(format!("flow shift {s} must be a positive number"));
            }
        }
        Ok(())
    }

    /// The checks that need the model's defaults, VAE compression (spatial, temporal) and transformer
    /// patch, which are known before its weights load: sizes the VAE and patch grid divide, frame counts the
    /// VAE's time compression and the patch divide, and the model's limits.
    pub fn check_for(
        &self,
        defaults: &crate::ModelDefaults,
        (s, tc): (usize, usize),
        [pt, ph, pw]: [usize; 3],
    ) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(m));
        let name = defaults.name.as_deref().unwrap_or("this model");
        let (mw, mh) = (s * pw, s * ph);
        if !self.width.is_multiple_of(mw) || !self.height.is_multiple_of(mh) {
            return bad(format!(
                "size {}x{} is not supported: for {name} width must be a multiple of {mw} and height of {mh}                  (the VAE downsamples {s}x and the transformer patches {pw}x{ph}), e.g. {}x{}",
                self.width, self.height, defaults.width, defaults.height
            ));
        }
        if self.width > defaults.max_width || self.height > defaults.max_height {
            return bad(format!(
                "size {}x{} is too large for {name}: it was made for {}x{} and allows at most {}x{}",
                self.width,
                self.height,
                defaults.width,
                defaults.height,
                defaults.max_width,
                defaults.max_height
            ));
        }
        if !(self.frames - 1).is_multiple_of(tc) {
            let lo = (self.frames - 1) / tc * tc + 1;
            return bad(format!(
                "{} frames is not supported: the VAE compresses time {tc}x, so frames must be {tc}k+1                  (e.g. 17, 33, 81); nearest: {lo} or {}",
                self.frames,
                lo + tc
            ));
        }
        let latent_frames = (self.frames - 1) / tc + 1;
        if !latent_frames.is_multiple_of(pt) {
            return bad(format!(
                "{} frames is not supported by {name}: its transformer patches {pt} frames, so the frame count                  must be a multiple of {pt} (e.g. {})",
                self.frames, defaults.frames
            ));
        }
        if self.frames > defaults.max_frames {
            return bad(format!(
                "{} frames is too many for {name}: it was made for {} and allows at most {}",
                self.frames, defaults.frames, defaults.max_frames
            ));
        }
        Ok(())
    }

    /// (T, H/s, W/s) of the latent video, for the model's VAE compression.
    pub fn latent_size(&self, pipe: &WanPipeline) -> (usize, usize, usize) {
        let (s, tc) = pipe.compression();
        ((self.frames - 1) / tc + 1, self.height / s, self.width / s)
    }
}

impl WanPipeline {
    fn scheduler_for(&self, req: &Text2VideoRequest) -> Result<Box<dyn Scheduler>> {
        match (&req.scheduler, &self.scheduler_config, req.flow_shift) {
            (None, Some(path), None) => schedulers::from_config_file(path),
            (name, _, shift) => {
                let name = name.clone().unwrap_or_else(|| "unipc".into());
                schedulers::from_name(&name, shift.unwrap_or_else(|| self.default_flow_shift()))
            }
        }
    }

    /// Prompt embeddings for `[prompt, negative]`, zeroed past each prompt's length (as diffusers does).
    /// Returns (2, L, text_dim).
    fn encode_prompts(&self, req: &Text2VideoRequest) -> Result<(Tensor, Vec<String>)> {
        let tokens = self.tokenizer.encode(
            &[&req.prompt, &req.negative_prompt],
            req.max_sequence_length
                .unwrap_or(self.defaults.max_sequence_length),
        )?;
        let (ids, mask) = tokens.to_tensors(&self.device)?;
        let emb = self.text_encoder.prompt_embeds(&ids, &mask)?;
        let mut unknown: Vec<String> = tokens.unknown.iter().flatten().cloned().collect();
        unknown.dedup();
        Ok((emb, unknown))
    }

    /// Runs text-to-video. `progress` sees each stage and step; returning `false` from it cancels.
    pub fn text_to_video(
        &self,
        req: &Text2VideoRequest,
        progress: &mut ProgressFn,
    ) -> Result<Video> {
        req.validate(self)?;
        let mut timings = Vec::new();
        let mut tick = Instant::now();
        let mut lap = |name: String, timings: &mut Vec<(String, Duration)>| {
            timings.push((name, tick.elapsed()));
            tick = Instant::now();
        };

        if !progress(&Event::Stage("text encoder")) {
            return Err(Error::Cancelled);
        }
        let (emb, unknown_words) = self.encode_prompts(req)?;
        let cond = self.transformer.embed_text(&emb.narrow(0, 0, 1)?)?;
        let uncond = self.transformer.embed_text(&emb.narrow(0, 1, 1)?)?;
        lap("text encoder".into(), &mut timings);

        let (t, h, w) = req.latent_size(self);
        let z = self.transformer.config().in_channels;
        let mut latents = match &req.init_latents {
            Some(l) => l.to_device(&self.device)?.to_dtype(DType::F32)?,
            None => noise::gaussian(req.seed, &[1, z, t, h, w], &self.device)?,
        };
        let mut scheduler = self.scheduler_for(req)?;
        scheduler.set_timesteps(req.steps)?;
        let timesteps = scheduler.timesteps().to_vec();
        if !progress(&Event::Stage("denoising")) {
            return Err(Error::Cancelled);
        }
        let dt = self.transformer.dtype();
        for (i, &ts) in timesteps.iter().enumerate() {
            let x = latents.to_dtype(dt)?;
            let tt = Tensor::new(&[ts], &self.device)?;
            let cond_pred = self
                .transformer
                .forward_with_text(&x, &tt, &cond)?
                .to_dtype(DType::F32)?;
            let pred = if req.guidance > 1.0 {
                let uncond_pred = self
                    .transformer
                    .forward_with_text(&x, &tt, &uncond)?
                    .to_dtype(DType::F32)?;
                (&uncond_pred + ((cond_pred - &uncond_pred)? * req.guidance)?)?
            } else {
                cond_pred
            };
            latents = scheduler.step(&pred, &latents)?;
            lap(format!("step {}", i + 1), &mut timings);
            if !progress(&Event::Step {
                index: i + 1,
                total: timesteps.len(),
                timestep: ts,
            }) {
                return Err(Error::Cancelled);
            }
        }

        if !progress(&Event::Stage("vae decode")) {
            return Err(Error::Cancelled);
        }
        let zc = self.vae_config.z_dim;
        let as_f32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let mean = Tensor::new(as_f32(&self.vae_config.latents_mean), &self.device)?
            .reshape((1, zc, 1, 1, 1))?;
        let std = Tensor::new(as_f32(&self.vae_config.latents_std), &self.device)?
            .reshape((1, zc, 1, 1, 1))?;
        // diffusers computes latents / (1/std) + mean; z*std + mean differs by an ulp.
        let inv_std = std.recip()?;
        let z = latents.broadcast_div(&inv_std)?.broadcast_add(&mean)?;
        let frames = decoded_to_frames(&self.vae.decode(&z)?)?;
        lap("vae decode".into(), &mut timings);
        Ok(Video {
            frames,
            timings,
            unknown_words,
        })
    }
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
