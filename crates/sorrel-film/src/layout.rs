//! What a plan asks of a model: the modes it needs, each shot's frame count and the generation settings,
//! worked out before any weights are loaded (so a film the model cannot make is refused at once).

use sorrel_core::{Error, Result};
use sorrel_pipeline::film::Plan;
use sorrel_pipeline::{frames_covering, Mode, ModelInfo};

/// A plan laid out on one model.
#[derive(Debug, Clone, PartialEq)]
pub struct FilmLayout {
    /// Frame width in pixels (the model's default).
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
    /// Cuts start from their lead character's picture (the model does image to video).
    pub references: bool,
}

impl FilmLayout {
    /// Lays `plan` out on the model `info` describes (named `model` in errors), with `steps` and `guidance`
    /// in place of the model's defaults when given. Refuses a plan that needs a mode the model lacks.
    pub fn new(
        info: &ModelInfo,
        plan: &Plan,
        model: &str,
        steps: Option<usize>,
        guidance: Option<f64>,
    ) -> Result<Self> {
        info.check_mode(Mode::TextToVideo)?;
        if let Some(i) = plan.shots.iter().position(|s| s.continues) {
            if !info.can(Mode::Continue) {
                return Err(Error::invalid(format!(
                    "shot {} continues shot {} without a cut, which needs a model that continues clips \
                     (the embedded model, or a SkyReels-V2 diffusion-forcing model); {model} cannot. Mark the \
                     shot \"continues\": false in the plan, or use such a model",
                    i + 1,
                    i
                )));
            }
        }
        let d = &info.defaults;
        let tc = info.compression.1;
        let forcing = info.diffusion_forcing.is_some();
        let frames = plan
            .shots
            .iter()
            .map(|s| {
                let n = frames_covering(s.seconds, d.fps, tc);
                // A shot that continues another is made of the embedded model's frame pairs, or of a
                // diffusion-forcing model's whole latent frames (tc frames each).
                match (s.continues, forcing) {
                    (false, _) => n,
                    (true, false) => n.div_ceil(2) * 2,
                    (true, true) => (n - 1).max(1).div_ceil(tc) * tc,
                }
            })
            .collect();
        Ok(Self {
            width: d.width,
            height: d.height,
            fps: d.fps,
            steps: steps.unwrap_or(d.steps),
            guidance: guidance.unwrap_or(d.guidance),
            frames,
            character_frames: d.frames,
            references: info.can(Mode::ImageToVideo),
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
}
