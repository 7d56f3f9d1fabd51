//! What a plan asks of a model: the modes it needs, how the model keeps characters and continues shots, each
//! shot's frame count and the generation settings, worked out before any weights are loaded (so a film the
//! model cannot make is refused at once).

use sorrel_core::{Error, Result};
use sorrel_pipeline::film::Plan;
use sorrel_pipeline::{frames_covering, Mode, ModelInfo};

/// How a model keeps a character's look from shot to shot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum References {
    /// A cut starts from its lead character's picture (image to video).
    FirstFrame,
    /// A cut shows every character's picture as a VACE reference.
    Vace,
    /// The same look words and seed in every shot, nothing more (text to video only).
    None,
}

/// How a model continues a shot without a cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuation {
    /// The previous shot's frames are the context of a rollout (the embedded model).
    Rollout,
    /// Diffusion forcing: an extension whose first window starts from the previous shot's last frames.
    Forcing,
    /// VACE extension windows: the previous frames kept (mask black), the rest generated.
    VaceExtension,
    /// It cannot: continuous shots are refused.
    None,
}

/// A plan laid out on one model.
#[derive(Debug, Clone, PartialEq)]
pub struct FilmLayout {
    /// Frame width in pixels.
    pub width: usize,
    /// Frame height in pixels.
    pub height: usize,
    /// Frames per second of the film.
    pub fps: u32,
    /// Denoising steps per shot.
    pub steps: usize,
    /// Guidance scale.
    pub guidance: f64,
    /// Each shot's frame count, in plan order.
    pub frames: Vec<usize>,
    /// Frames generated for a character's reference picture (its first frame is kept).
    pub character_frames: usize,
    /// How characters are kept.
    pub references: References,
    /// How continuous shots go on.
    pub continuation: Continuation,
    /// The VAE's time compression (a window is 1 + a multiple of it).
    pub time_compression: usize,
    /// The most frames one generation makes on models whose shots are made window by window by the film
    /// (VACE extension); the model's default length.
    pub window: usize,
}

impl FilmLayout {
    /// Lays `plan` out on the model `info` describes (named `model` in errors), with `size`, `steps` and
    /// `guidance` in place of the model's defaults when given. Refuses a plan that needs a mode the model
    /// lacks.
    pub fn new(
        info: &ModelInfo,
        plan: &Plan,
        model: &str,
        size: Option<(usize, usize)>,
        steps: Option<usize>,
        guidance: Option<f64>,
    ) -> Result<Self> {
        info.check_mode(Mode::TextToVideo)?;
        let continuation = if info.diffusion_forcing.is_some() {
            Continuation::Forcing
        } else if info.can(Mode::Continue) {
            Continuation::Rollout
        } else if info.can(Mode::Compose) {
            Continuation::VaceExtension
        } else {
            Continuation::None
        };
        if let Some(i) = plan.shots.iter().position(|s| s.continues) {
            if continuation == Continuation::None {
                return Err(Error::invalid(format!(
                    "shot {} continues shot {} without a cut, which needs a model that continues clips \
                     (the embedded model, a SkyReels-V2 diffusion-forcing model or a Wan VACE model); {model} \
                     cannot. Mark the shot \"continues\": false in the plan, or use such a model",
                    i + 1,
                    i
                )));
            }
        }
        // VACE models also start from a first frame, but references keep every character of a shot.
        let references = if info.can(Mode::Compose) {
            References::Vace
        } else if info.can(Mode::ImageToVideo) {
            References::FirstFrame
        } else {
            References::None
        };
        let d = &info.defaults;
        let tc = info.compression.1;
        let frames = plan
            .shots
            .iter()
            .map(|s| {
                let n = frames_covering(s.seconds, d.fps, tc);
                // A shot that continues another adds only new frames: the embedded model's frame pairs, or
                // whole latent frames (tc frames each) on the others.
                match (s.continues, continuation) {
                    (false, _) => n,
                    (true, Continuation::Rollout) => n.div_ceil(2) * 2,
                    (true, _) => (n - 1).max(1).div_ceil(tc) * tc,
                }
            })
            .collect();
        let (width, height) = size.unwrap_or((d.width, d.height));
        Ok(Self {
            width,
            height,
            fps: d.fps,
            steps: steps.unwrap_or(d.steps),
            guidance: guidance.unwrap_or(d.guidance),
            frames,
            character_frames: d.frames,
            references,
            continuation,
            time_compression: tc,
            window: d.frames,
        })
    }

    /// Frames in the whole film.
    pub fn total_frames(&self) -> usize {
        self.frames.iter().sum()
    }

    /// The film's length in seconds.
    pub fn seconds(&self) -> f64 {
        self.total_frames() as f64 / self.fps as f64
    }

    /// The settings every shot's cache key carries.
    pub fn settings(&self) -> String {
        format!(
            "{}x{} {} steps, guidance {}",
            self.width, self.height, self.steps, self.guidance
        )
    }

    /// Frames of one generation for a shot of `frames` frames: the whole shot, except on models the film
    /// makes window by window (VACE), where a long shot's first window is at most [`FilmLayout::window`].
    pub fn first_window(&self, frames: usize) -> usize {
        match self.references {
            References::Vace if frames > self.window => self.window,
            _ => frames,
        }
    }
}
