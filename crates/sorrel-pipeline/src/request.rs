//! What to generate, and the checks every request passes before any weights load or any step runs.

use candle_core::Tensor;
use sorrel_core::{Error, Result};
use sorrel_schedulers as schedulers;

use crate::loader::WanPipeline;
use crate::modes::{Mode, ModelInfo};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
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
    /// Guidance of a two-expert model's low-noise expert (Wan2.2 A14B; diffusers' `guidance_scale_2`);
    /// `None`: `guidance`.
    pub guidance_2: Option<f64>,
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
    /// For video-to-video it is the raw noise that is mixed into the encoded video.
    pub init_latents: Option<Tensor>,
    /// What the video starts from besides the prompt.
    pub conditioning: Conditioning,
    /// Window settings of diffusion-forcing models (SkyReels-V2 DF); ignored by the others.
    pub forcing: Forcing,
}

/// How a diffusion-forcing model (SkyReels-V2 DF) makes a video window by window; `None`s take the model's
/// defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Forcing {
    /// Frames per window (diffusers' `base_num_frames`; default: the model's default length, 97 for the
    /// 540P models).
    pub window_frames: Option<usize>,
    /// Frames each window repeats from the video so far (diffusers' `overlap_history`; default 17).
    pub overlap_frames: Option<usize>,
    /// Noise mixed into the repeated frames, as a timestep (diffusers' `addnoise_condition`; default 20).
    pub addnoise: Option<f64>,
    /// Iterations each causal block trails the one before (0: synchronous; SkyReels suggests 5 for
    /// asynchronous generation).
    pub ar_step: usize,
    /// Latent frames per causal block (default: the transformer's `num_frame_per_block`).
    pub causal_block: Option<usize>,
    /// The frame rate the model is told it samples at (default: the model's rate).
    pub sample_fps: Option<u32>,
}

/// A picture given as input, RGB8.
#[derive(Debug, Clone, PartialEq)]
pub struct Picture {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `[r, g, b]` per pixel, rows top to bottom.
    pub rgb: Vec<u8>,
}

/// What a generation starts from besides the prompt; each variant is one mode (see [`crate::Mode`]).
#[derive(Debug, Clone, Default)]
pub enum Conditioning {
    /// Text to video.
    #[default]
    None,
    /// Image to video: `first` is the first frame; with `last`, first/last-frame to video.
    Image {
        /// The first frame.
        first: Picture,
        /// The last frame (first/last-frame models only).
        last: Option<Picture>,
    },
    /// A VACE composition: a control video with a mask of what to generate, and reference pictures to keep in
    /// view. Extension, connecting clips and inpainting are compositions (see [`crate::compose`]).
    Compose {
        /// The control video, at least `frames` frames (`None`: none, as zeros).
        video: Option<Vec<Picture>>,
        /// One picture per video frame whose red channel is the mask: 255 (white) to generate, 0 to keep
        /// (`None`: generate everything).
        mask: Option<Vec<Picture>>,
        /// Pictures of what should appear (a character, an object), each fitted on a white canvas.
        references: Vec<Picture>,
    },
    /// Video to video: the clip is encoded, noised to `strength` and denoised under the prompt.
    Video {
        /// At least `frames` frames; the first `frames` are used.
        frames: Vec<Picture>,
        /// How much of the noise schedule to run, in (0, 1]: 1 ignores the input, small values keep it.
        strength: f64,
    },
    /// New frames that follow `before` (the clip they continue) and lead into `after` (the clip they come
    /// before): extension forward (`after` empty), backward (`before` empty) or connecting two clips. The
    /// video is the new frames alone; models trained with given frames run it (see [`crate::rollout`]).
    Continue {
        /// The clip the new frames follow (its last frames are the context).
        before: Vec<Picture>,
        /// The clip the new frames lead into (its first frames are the context).
        after: Vec<Picture>,
    },
}

impl Default for GenerateRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            width: 832,
            height: 480,
            frames: 81,
            steps: 50,
            guidance: 5.0,
            guidance_2: None,
            seed: 0,
            max_sequence_length: None,
            scheduler: None,
            flow_shift: None,
            init_latents: None,
            conditioning: Conditioning::None,
            forcing: Forcing::default(),
        }
    }
}

impl GenerateRequest {
    /// Checks the request against the loaded model; every error says what to change.
    pub fn validate(&self, pipe: &WanPipeline) -> Result<()> {
        let t = self.validate_described(&pipe.info)?;
        let (_, h, w) = self.latent_size(pipe.info.compression);
        let z = pipe.vae_config.z_dim;
        if let Some(l) = &self.init_latents {
            let want = [1, z, t + self.reference_count(), h, w];
            if l.dims() != want {
                return Err(Error::invalid(format!(
                    "init latents have shape {:?} but {}x{} with {} frames needs {:?}{}",
                    l.dims(),
                    self.width,
                    self.height,
                    self.frames,
                    want,
                    if crate::rollout::applies(self, &pipe.info) {
                        " (the noise of the first window of this rollout)"
                    } else {
                        ""
                    }
                )));
            }
        }
        Ok(())
    }

    /// Every check [`GenerateRequest::validate`] makes that needs only the model's description (all but
    /// the shape of given init latents), for a server that has not loaded the model. Returns the latent
    /// frames of the transformer's first (or only) window.
    pub fn validate_described(&self, info: &ModelInfo) -> Result<usize> {
        self.check()?;
        self.check_for(info)?;
        let t = self.window_latent_frames(info)?;
        let (_, h, w) = self.latent_size(info.compression);
        sorrel_models::wan::config::check_latent_grid(info.patch, info.rope_max_seq_len, t, h, w)
            .map_err(Error::invalid)?;
        Ok(t)
    }

    /// Latent frames of one transformer forward: the first window of a video made window by window (a
    /// rollout or diffusion forcing), else the whole video's.
    pub fn window_latent_frames(&self, info: &ModelInfo) -> Result<usize> {
        Ok(if crate::rollout::applies(self, info) {
            crate::rollout::first_window_frames(self, info)?
        } else if info.diffusion_forcing.is_some() {
            crate::forcing::first_window_frames(self, info)?
        } else {
            self.latent_size(info.compression).0
        })
    }

    /// Reference pictures, each taking one latent frame before the video's.
    pub fn reference_count(&self) -> usize {
        match &self.conditioning {
            Conditioning::Compose { references, .. } => references.len(),
            _ => 0,
        }
    }

    /// The mode this request asks for.
    pub fn mode(&self) -> Mode {
        match &self.conditioning {
            Conditioning::None => Mode::TextToVideo,
            Conditioning::Image { last: None, .. } => Mode::ImageToVideo,
            Conditioning::Image { last: Some(_), .. } => Mode::FirstLastFrame,
            Conditioning::Video { .. } => Mode::VideoToVideo,
            Conditioning::Compose { .. } => Mode::Compose,
            Conditioning::Continue { .. } => Mode::Continue,
        }
    }

    /// The checks that need no model (sizes, counts, names), to run before loading weights.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(m));
        // Continuing or joining clips may go without a caption: the clips show the scene.
        let clips_given = matches!(self.conditioning, Conditioning::Continue { .. });
        if self.prompt.trim().is_empty() && !clips_given {
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
        self.check_conditioning()
    }

    fn check_conditioning(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(m));
        match &self.conditioning {
            Conditioning::None => {}
            Conditioning::Image { first, last } => {
                first.check("the first-frame image")?;
                if let Some(l) = last {
                    l.check("the last-frame image")?;
                    if self.frames < 2 {
                        return bad(format!(
                            "{} frame cannot hold both a first and a last frame: ask for more frames",
                            self.frames
                        ));
                    }
                }
            }
            Conditioning::Compose {
                video,
                mask,
                references,
            } => {
                for (what, frames) in [("video", video), ("mask", mask)] {
                    if let Some(frames) = frames {
                        if frames.len() < self.frames {
                            return bad(format!(
                                "the {what} has {} frames but {} are asked for: give at least {} or ask for fewer",
                                frames.len(),
                                self.frames,
                                self.frames
                            ));
                        }
                        for f in frames {
                            f.check(&format!("a frame of the {what}"))?;
                        }
                    }
                }
                if let (Some(v), Some(m)) = (video, mask) {
                    if let Some((i, (a, b))) = v
                        .iter()
                        .zip(m)
                        .enumerate()
                        .find(|(_, (a, b))| (a.width, a.height) != (b.width, b.height))
                    {
                        return bad(format!(
                            "mask frame {i} is {}x{} but video frame {i} is {}x{}: the mask must match the video",
                            b.width, b.height, a.width, a.height
                        ));
                    }
                }
                if mask.is_some() && video.is_none() {
                    return bad("a mask needs a video to apply to (--mask with --video)".into());
                }
                for r in references {
                    r.check("a reference picture")?;
                }
            }
            Conditioning::Video { frames, strength } => {
                if !(strength.is_finite() && *strength > 0.0 && *strength <= 1.0) {
                    return bad(format!(
                        "strength {strength} is outside (0, 1]: use a small value such as 0.3 to keep the video \
                         close to its source, 1 to ignore it"
                    ));
                }
                if frames.len() < self.frames {
                    return bad(format!(
                        "the input video has {} frames but {} are asked for: pass --frames {} or fewer, or a \
                         longer video",
                        frames.len(),
                        self.frames,
                        frames.len()
                    ));
                }
                for f in frames {
                    f.check("a frame of the input video")?;
                }
                let run = strength_steps(self.steps, *strength);
                if run == 0 {
                    return bad(format!(
                        "strength {strength} with {} steps runs no denoising step ({} x {strength} < 1): raise \
                         --strength or --steps",
                        self.steps, self.steps
                    ));
                }
            }
            Conditioning::Continue { before, after } => {
                if before.is_empty() && after.is_empty() {
                    return bad(
                        "nothing to continue: give a clip to extend or two clips to connect".into(),
                    );
                }
                for f in before.iter().chain(after) {
                    f.check("a frame of a given clip")?;
                }
            }
        }
        Ok(())
    }

    /// The checks that need the model's description (its defaults, VAE compression, transformer patch and
    /// modes), which is known before its weights load: the mode, sizes the VAE and patch grid divide, frame
    /// counts the VAE's time compression and the patch divide, and the model's limits.
    pub fn check_for(&self, info: &ModelInfo) -> Result<()> {
        let (defaults, (s, tc), [pt, ph, pw]) = (&info.defaults, info.compression, info.patch);
        info.check_mode(self.mode())?;
        let bad = |m: String| Err(Error::invalid(m));
        let name = defaults.name.as_deref().unwrap_or("this model");
        let (mw, mh) = (s * pw, s * ph);
        if !self.width.is_multiple_of(mw) || !self.height.is_multiple_of(mh) {
            return bad(format!(
                "size {}x{} is not supported: for {name} width must be a multiple of {mw} and height of {mh} (the VAE downsamples {s}x and the transformer patches {pw}x{ph}), e.g. {}x{}",
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
        // A diffusion-forcing extension adds whole latent frames after the clip: tc new frames each.
        let forcing_extension = info.diffusion_forcing.is_some()
            && matches!(self.conditioning, Conditioning::Continue { .. });
        if forcing_extension && !self.frames.is_multiple_of(tc) {
            let lo = (self.frames / tc * tc).max(tc);
            return bad(format!(
                "{} new frames is not supported: {name} extends a clip {tc} frames at a time, so ask for a multiple \
                 of {tc} (e.g. {lo} or {})",
                self.frames,
                lo + tc
            ));
        }
        if !forcing_extension && !(self.frames - 1).is_multiple_of(tc) {
            let lo = (self.frames - 1) / tc * tc + 1;
            return bad(format!(
                "{} frames is not supported: the VAE compresses time {tc}x, so frames must be {tc}k+1 (e.g. 17, 33, 81); nearest: {lo} or {}",
                self.frames,
                lo + tc
            ));
        }
        if crate::rollout::applies(self, info) {
            // Any length: windows of the model's own length, one after another.
            return crate::rollout::check(self, info);
        }
        if info.diffusion_forcing.is_some() {
            return crate::forcing::check(self, info);
        }
        let latent_frames = (self.frames - 1) / tc + 1;
        if !latent_frames.is_multiple_of(pt) {
            return bad(format!(
                "{} frames is not supported by {name}: its transformer patches {pt} frames, so the frame count must be a multiple of {pt} (e.g. {})",
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

    /// (T, H/s, W/s) of the latent video, for the VAE's (spatial, temporal) compression.
    pub fn latent_size(&self, (s, tc): (usize, usize)) -> (usize, usize, usize) {
        ((self.frames - 1) / tc + 1, self.height / s, self.width / s)
    }
}

/// How many of `steps` a video-to-video run at `strength` takes, from the end of the schedule: diffusers'
/// `int(steps * strength)`.
pub fn strength_steps(steps: usize, strength: f64) -> usize {
    ((steps as f64 * strength) as usize).min(steps)
}

impl Picture {
    /// Checks that the pixels fill the stated size; `what` names the input in the error.
    pub fn check(&self, what: &str) -> Result<()> {
        if self.width == 0 || self.height == 0 || self.rgb.len() != self.width * self.height * 3 {
            return Err(Error::invalid(format!(
                "{what} is not a {}x{} RGB picture ({} bytes)",
                self.width,
                self.height,
                self.rgb.len()
            )));
        }
        Ok(())
    }
}
