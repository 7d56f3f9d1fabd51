//! The model-family seam: what a loaded (or only described) model can do, and `generate`, which turns a
//! request into the inputs of the one denoising loop for its mode.

use candle_core::Tensor;
use sorrel_core::{Error, Result};

use crate::defaults::ModelDefaults;
use crate::denoise::{per_token, stage, Denoise, StepFn, Stopwatch, Timings};
use crate::loader::WanPipeline;
use crate::progress::ProgressFn;
use crate::request::{strength_steps, Conditioning, GenerateRequest, Picture};
use sorrel_models::wan::transformer::{Context, Control, WanTransformer3DModel};

/// A way to start a video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A prompt alone.
    TextToVideo,
    /// A prompt and a first frame.
    ImageToVideo,
    /// A prompt, a first and a last frame.
    FirstLastFrame,
    /// A prompt and a clip to restyle (noised to a strength, then denoised).
    VideoToVideo,
    /// A VACE composition: reference pictures, a video with a mask of what to generate (inpainting,
    /// outpainting), extending a clip forward or backward, connecting two clips.
    Compose,
    /// Continuing a clip forward or backward, or joining two clips, from clean given frames, window by
    /// window (models trained with given frames, such as the embedded model: see [`crate::rollout`]).
    Continue,
}

impl Mode {
    /// What users call it, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Mode::TextToVideo => "text-to-video",
            Mode::ImageToVideo => "image-to-video (--image)",
            Mode::FirstLastFrame => "first/last-frame (--image with --last-image)",
            Mode::VideoToVideo => "video-to-video (--video)",
            Mode::Compose => {
                "references, masks, extension and connecting clips (--reference, --mask, --extend, connect)"
            }
            Mode::Continue => "extension and connecting clips (--extend, --extend-backward, connect)",
        }
    }

    /// The model kinds that can run this mode, for the error when the loaded one cannot.
    fn models_that_can(self) -> &'static str {
        match self {
            Mode::TextToVideo | Mode::VideoToVideo => {
                "a text-to-video model such as Wan-AI/Wan2.1-T2V-1.3B-Diffusers, Wan-AI/Wan2.2-TI2V-5B-Diffusers \
                 or the embedded model"
            }
            Mode::ImageToVideo => {
                "an image-to-video model such as Wan-AI/Wan2.2-TI2V-5B-Diffusers, Wan-AI/Wan2.1-I2V-14B-480P-Diffusers \
                 or a VACE model"
            }
            Mode::FirstLastFrame => {
                "a first/last-frame model such as Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers or a VACE model"
            }
            Mode::Compose => "a VACE model such as Wan-AI/Wan2.1-VACE-1.3B-diffusers",
            Mode::Continue => {
                "the embedded model (trained with given frames), a SkyReels-V2 diffusion-forcing model \
                 (forward only) or a VACE model"
            }
        }
    }
}

/// What a model folder holds, read from its config files alone (no weights), so a request can be checked in
/// milliseconds before a minutes-long load. Serializable: a worker publishes it so an API node that loads no
/// weights checks requests for that model the same way.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelInfo {
    /// Defaults and limits of generation.
    pub defaults: ModelDefaults,
    /// The VAE's (spatial, temporal) compression.
    pub compression: (usize, usize),
    /// The transformer's (t, h, w) patch.
    pub patch: [usize; 3],
    /// Positions per axis of the transformer's RoPE table: the largest latent patch grid it takes.
    pub rope_max_seq_len: usize,
    /// The modes it runs.
    pub modes: Vec<Mode>,
    /// The diffusers pipeline class it was published for (`WanPipeline`, `WanImageToVideoPipeline`, ...).
    pub pipeline_class: String,
    /// Wan2.2 TI2V (diffusers' `expand_timesteps`): one timestep per token, and image-to-video by holding the
    /// first latent frame clean at t = 0 instead of extra input channels.
    pub expand_timesteps: bool,
    /// Wan2.2 A14B (diffusers' `boundary_ratio`): steps whose timestep is at least this fraction of the
    /// training timesteps run the high-noise expert (`transformer/`), the rest the low-noise one
    /// (`transformer_2/`).
    pub boundary_ratio: Option<f64>,
    /// SkyReels-V2 diffusion forcing: a timestep per latent frame, videos of any length made window by
    /// window (see [`crate::forcing`]); the value is the transformer's causal block size in latent frames.
    pub diffusion_forcing: Option<usize>,
}

impl ModelInfo {
    /// Whether the model runs `mode`.
    pub fn can(&self, mode: Mode) -> bool {
        self.modes.contains(&mode)
    }

    /// An error naming the model kinds that can run `mode`, if this one cannot.
    pub fn check_mode(&self, mode: Mode) -> Result<()> {
        if self.can(mode) {
            return Ok(());
        }
        let name = self.defaults.name.as_deref().unwrap_or("this model");
        let has: Vec<&str> = self.modes.iter().map(|m| m.describe()).collect();
        Err(Error::invalid(format!(
            "{name} ({}) cannot do {}: it does {}. Use {}",
            self.pipeline_class,
            mode.describe(),
            has.join(", "),
            mode.models_that_can()
        )))
    }
}

/// A generated clip.
pub struct Video {
    /// (F, H, W, 3) f32 in [0, 1].
    pub frames: Tensor,
    /// Where time went, in order: ("text encoder", ..), ("step 1", ..), .., ("vae decode", ..).
    pub timings: Timings,
    /// Words the tokenizer did not know (mapped to its unknown token).
    pub unknown_words: Vec<String>,
}

/// Receives decoded frames, (n, H, W, 3) f32 in [0, 1], in order, as they are made, with the number of
/// frames the whole video will have (the same on every call); an error stops the generation.
pub type FrameSink<'a> = dyn FnMut(&Tensor, usize) -> Result<()> + 'a;

/// What a generation reports once every frame has gone to its [`FrameSink`].
#[derive(Debug)]
pub struct Streamed {
    /// Frames handed to the sink.
    pub frames: usize,
    /// Where time went, as in [`Video::timings`].
    pub timings: Timings,
    /// Words the tokenizer did not know.
    pub unknown_words: Vec<String>,
}

/// A first frame held clean through the loop (Wan2.2 TI2V's image-to-video).
struct HeldFrame {
    /// The mask (1, 1, T, 1, 1), 1 on the first latent frame, and its clean latents (1, z, 1, h, w).
    given: (Tensor, Tensor),
    /// (1, N): 0 on the first frame's tokens, 1 elsewhere.
    token_weights: Tensor,
}

impl WanPipeline {
    /// Runs the request's mode. `progress` sees each stage and step; returning `false` from it cancels.
    pub fn generate(&self, req: &GenerateRequest, progress: &mut ProgressFn) -> Result<Video> {
        self.generate_observed(req, progress, &mut |_, _| {})
    }

    /// As [`Self::generate`], handing the frames to `sink` instead of returning them. A diffusion-forcing
    /// model hands over each window's frames as it finishes, so a long video never sits in memory whole;
    /// every other mode hands over the whole clip at the end.
    pub fn generate_streamed(
        &self,
        req: &GenerateRequest,
        progress: &mut ProgressFn,
        sink: &mut FrameSink,
    ) -> Result<Streamed> {
        if self.info.diffusion_forcing.is_some() {
            req.validate(self)?;
            let mut noise =
                crate::forcing::SeededNoise::new(req.seed, req.init_latents.clone(), &self.device);
            return self.generate_forcing_into(req, progress, &mut noise, &mut |_, _| {}, sink);
        }
        let video = self.generate(req, progress)?;
        sink(&video.frames, video.frames.dim(0)?)?;
        Ok(Streamed {
            frames: video.frames.dim(0)?,
            timings: video.timings,
            unknown_words: video.unknown_words,
        })
    }

    /// As [`Self::generate`], with `on_step` seeing the latents (normalised, reference frames included)
    /// after each step run.
    pub fn generate_observed(
        &self,
        req: &GenerateRequest,
        progress: &mut ProgressFn,
        on_step: &mut StepFn,
    ) -> Result<Video> {
        req.validate(self)?;
        if self.info.diffusion_forcing.is_some() {
            let mut noise =
                crate::forcing::SeededNoise::new(req.seed, req.init_latents.clone(), &self.device);
            return self.generate_forcing(req, progress, &mut noise, on_step);
        }
        if crate::rollout::applies(req, &self.info) {
            return self.rollout(req, progress);
        }
        let mut clock = Stopwatch::new();
        stage(progress, "text encoder")?;
        let (emb, unknown_words) = self.encode_prompts(req)?;
        let (vace, takes_image) = {
            let tr = self.transformer()?;
            (tr.vace_layer_count(), tr.takes_image())
        };
        let image_features = match &req.conditioning {
            Conditioning::Image { first, last } if takes_image => {
                let pics: Vec<&Picture> = std::iter::once(first).chain(last.as_ref()).collect();
                Some(self.image_features(&pics)?)
            }
            _ => None,
        };
        clock.lap("text encoder");
        let control = match vace {
            Some(layers) => {
                stage(progress, "vae encode")?;
                let control = Control {
                    latents: self.vace_control(req)?,
                    scales: vec![1.0; layers],
                };
                clock.lap("vae encode");
                Some(control)
            }
            None => None,
        };
        let contexts = |tr: &WanTransformer3DModel| -> Result<(Context, Context)> {
            let context = |i: usize| -> Result<Context> {
                let mut c = tr.embed_context(&emb.narrow(0, i, 1)?, image_features.as_ref())?;
                c.control = control.clone();
                Ok(c)
            };
            Ok((context(0)?, context(1)?))
        };

        let mut scheduler = self.scheduler_for(req)?;
        scheduler.set_timesteps(req.steps)?;
        let noise = self.noise(req)?;
        let size = (req.width, req.height);
        let mut held = None;
        let (latents, condition, first_step) = match &req.conditioning {
            // VACE models take every composition through their control input.
            _ if vace.is_some() => (noise, None, 0),
            Conditioning::Image { first, .. } if self.info.expand_timesteps => {
                stage(progress, "vae encode")?;
                held = Some(self.first_frame_held(first, req)?);
                clock.lap("vae encode");
                (noise, None, 0)
            }
            Conditioning::None | Conditioning::Compose { .. } | Conditioning::Continue { .. } => {
                (noise, None, 0)
            }
            Conditioning::Image { first, last } => {
                stage(progress, "vae encode")?;
                let condition = self.image_condition(first, last.as_ref(), req)?;
                clock.lap("vae encode");
                (noise, Some(condition), 0)
            }
            Conditioning::Video { frames, strength } => {
                stage(progress, "vae encode")?;
                let pics: Vec<&Picture> = frames.iter().take(req.frames).collect();
                let video = self.encode_pictures(&pics, size)?;
                clock.lap("vae encode");
                let first = req.steps - strength_steps(req.steps, *strength);
                (scheduler.add_noise(&video, &noise, first)?, None, first)
            }
        };
        let latents = self.denoise(
            Denoise {
                latents,
                condition,
                contexts: &contexts,
                guidance: req.guidance,
                guidance_2: req.guidance_2.unwrap_or(req.guidance),
                scheduler,
                first_step,
                token_weights: held.as_ref().map(|h| h.token_weights.clone()),
                given: held.map(|h| h.given),
            },
            &mut clock,
            progress,
            on_step,
        )?;

        // Reference pictures' latent frames come first; they are not part of the video.
        let refs = req.reference_count();
        let latents = latents.narrow(2, refs, latents.dim(2)? - refs)?;
        let frames = self.decode_latents(&latents, progress)?;
        clock.lap("vae decode");
        Ok(Video {
            frames,
            timings: clock.timings,
            unknown_words,
        })
    }

    /// Wan2.2 TI2V's image-to-video (diffusers' `expand_timesteps`): the first latent frame is the encoded
    /// picture, given clean, and its tokens see timestep 0 while the rest see the step's.
    fn first_frame_held(&self, first: &Picture, req: &GenerateRequest) -> Result<HeldFrame> {
        let clean = self.encode_pictures(&[first], (req.width, req.height))?;
        let (t, h, w) = req.latent_size(self.info.compression);
        let mut mask = vec![0f32; t];
        mask[0] = 1.0;
        // The held frame's tokens see t * 0, the others t * 1.
        let weights: Vec<f32> = mask.iter().map(|m| 1.0 - m).collect();
        let token_weights = per_token(&weights, self.info.patch, (h, w), &self.device)?;
        let mask = Tensor::from_vec(mask, (1, 1, t, 1, 1), &self.device)?;
        Ok(HeldFrame {
            given: (mask, clean),
            token_weights,
        })
    }

    /// Pictures as normalised latents (1, z, T, h, w), each fitted to `(width, height)` first.
    pub fn encode_pictures(&self, pictures: &[&Picture], size: (usize, usize)) -> Result<Tensor> {
        self.encode_video(&self.pictures_to_video(pictures, size)?)
    }

    /// CLIP features of the conditioning pictures, (N, tokens, image_dim): the penultimate layer of the
    /// image encoder, each picture prepared by the folder's image processor.
    pub fn image_features(&self, pictures: &[&Picture]) -> Result<Tensor> {
        let enc = self.image_encoder.as_ref().ok_or_else(|| {
            Error::model(format!(
                "{}: this image-to-video model has no image_encoder/ folder",
                self.dir.display()
            ))
        })?;
        let pixels = pictures
            .iter()
            .map(|p| {
                sorrel_models::clip::preprocess(
                    &enc.processor,
                    &p.rgb,
                    p.width,
                    p.height,
                    &self.device,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(enc
            .model
            .penultimate_hidden_states(&Tensor::cat(&pixels, 0)?)?)
    }

    /// The image-to-video condition (1, 4 + z, T, h, w): a mask that is 1 on the given frames, repeated 4x on
    /// the first latent frame as Wan packs it, then the encoded video that holds the first picture (and the
    /// last) with black between (diffusers' `WanImageToVideoPipeline.prepare_latents`).
    pub fn image_condition(
        &self,
        first: &Picture,
        last: Option<&Picture>,
        req: &GenerateRequest,
    ) -> Result<Tensor> {
        let size = (req.width, req.height);
        let f = req.frames;
        let mut parts = vec![self.pictures_to_video(&[first], size)?];
        let gap = f - 1 - usize::from(last.is_some());
        if gap > 0 {
            parts.push(Tensor::zeros(
                (1, 3, gap, req.height, req.width),
                candle_core::DType::F32,
                &self.device,
            )?);
        }
        if let Some(l) = last {
            parts.push(self.pictures_to_video(&[l], size)?);
        }
        let encoded = self.encode_video(&Tensor::cat(&parts, 2)?)?;
        let (t, h, w) = req.latent_size(self.info.compression);
        let (_, tc) = self.info.compression;
        // Pixel frame i is known (1) or to generate (0); latent frame 0 stands for frame 0 repeated tc times,
        // latent frame j > 0 for frames 1 + tc(j-1) .. tc j, one per mask channel.
        let known = |i: usize| i == 0 || (last.is_some() && i == f - 1);
        let mut mask = vec![0f32; tc * t * h * w];
        for j in 0..t {
            for k in 0..tc {
                let frame = if j == 0 { 0 } else { 1 + tc * (j - 1) + k };
                if known(frame) {
                    mask[(k * t + j) * h * w..(k * t + j + 1) * h * w].fill(1.0);
                }
            }
        }
        let mask = Tensor::from_vec(mask, (1, tc, t, h, w), &self.device)?;
        Ok(Tensor::cat(&[&mask, &encoded], 1)?)
    }
}
