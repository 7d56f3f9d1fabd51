//! A model's generation defaults and limits: Wan2.1's or Wan2.2's (from `model_index.json`) unless the folder
//! has a `sorrel_defaults.json` (Sorrel's own models write one), read before any weights load so a request can
//! be checked in milliseconds.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sorrel_core::{Error, Result};

use crate::loader::PipelineIndex;

/// The file name in a model folder.
pub const DEFAULTS_FILE: &str = "sorrel_defaults.json";

/// What a model generates when a request does not say, and the most it may be asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelDefaults {
    /// A short name for logs and credentials (`None`: the folder name).
    #[serde(default)]
    pub name: Option<String>,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Frames.
    pub frames: usize,
    /// Frame rate the motion was trained at.
    pub fps: u32,
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale.
    pub guidance: f64,
    /// Guidance of a two-expert model's low-noise expert (`None`: `guidance`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_2: Option<f64>,
    /// Text tokens per prompt the model was trained with.
    #[serde(default = "wan_text_len")]
    pub max_sequence_length: usize,
    /// Largest width this model is meant for.
    pub max_width: usize,
    /// Largest height this model is meant for.
    pub max_height: usize,
    /// Most frames this model is meant for in one window.
    pub max_frames: usize,
    /// The modes a Sorrel-trained model was trained for (`"extend"` and `"connect"` mean it continues clips
    /// window by window from clean given frames: see [`crate::rollout`]); `None`: read from the configs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modes: Option<Vec<String>>,
}

fn wan_text_len() -> usize {
    512
}

impl ModelDefaults {
    /// Wan2.1 T2V: 832x480, 81 frames at 16 fps, 50 steps, guidance 5, 512 text tokens.
    pub fn wan21() -> Self {
        Self {
            name: None,
            width: 832,
            height: 480,
            frames: 81,
            fps: crate::loader::WAN21_FPS,
            steps: 50,
            guidance: 5.0,
            guidance_2: None,
            max_sequence_length: 512,
            max_width: 4096,
            max_height: 4096,
            max_frames: 1001,
            modes: None,
        }
    }

    /// Wan2.2 TI2V-5B: 1280x704, 121 frames at 24 fps, 50 steps, guidance 5 (Wan-AI's own example).
    pub fn wan22_ti2v() -> Self {
        Self {
            width: 1280,
            height: 704,
            frames: 121,
            fps: 24,
            ..Self::wan21()
        }
    }

    /// Wan2.2 A14B (T2V and I2V): 1280x720, 81 frames at 16 fps, 40 steps, guidance 4 then 3 for the
    /// low-noise expert (Wan-AI's own examples; the I2V one uses 3.5 for both).
    pub fn wan22_a14b(image_to_video: bool) -> Self {
        Self {
            width: 1280,
            height: 720,
            steps: 40,
            guidance: if image_to_video { 3.5 } else { 4.0 },
            guidance_2: (!image_to_video).then_some(3.0),
            ..Self::wan21()
        }
    }

    /// SkyReels-V2 DF 540P: 960x544, windows of 97 frames at 24 fps, 30 steps, guidance 6 (Skywork's
    /// examples); any length up to ten minutes, made window by window.
    pub fn skyreels_df() -> Self {
        Self {
            width: 960,
            height: 544,
            frames: 97,
            fps: 24,
            steps: 30,
            guidance: 6.0,
            max_frames: 24 * 600 + 1,
            ..Self::wan21()
        }
    }

    /// Defaults for a folder without `sorrel_defaults.json`, from what its `model_index.json` says
    /// (`index`): Wan2.2 TI2V's for `expand_timesteps`, SkyReels-V2 DF's for its pipeline, Wan2.2 A14B's for
    /// `boundary_ratio`, else Wan2.1's.
    fn for_pipeline(index: &PipelineIndex) -> Self {
        if index.expand_timesteps {
            Self::wan22_ti2v()
        } else if index.class == crate::loader::FORCING_CLASS {
            Self::skyreels_df()
        } else if index.boundary_ratio.is_some() {
            Self::wan22_a14b(index.class == "WanImageToVideoPipeline")
        } else {
            Self::wan21()
        }
    }

    /// The defaults of the model folder `dir`, whose `model_index.json` says `index`.
    pub(crate) fn for_dir(dir: &Path, index: &PipelineIndex) -> Result<Self> {
        let path = dir.join(DEFAULTS_FILE);
        if !path.is_file() {
            return Ok(Self::for_pipeline(index));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::model(format!("cannot read {}: {e}", path.display())))?;
        let d: Self = serde_json::from_str(&text).map_err(|e| {
            Error::model(format!(
                "{} is not a valid defaults file ({e}); delete it to use Wan2.1's defaults",
                path.display()
            ))
        })?;
        if d.width == 0 || d.height == 0 || d.frames == 0 || d.fps == 0 || d.steps == 0 {
            return Err(Error::model(format!(
                "{}: width, height, frames, fps and steps must be positive",
                path.display()
            )));
        }
        Ok(d)
    }

    /// Whether the model was trained to continue clips from given frames (rollouts of any length).
    pub fn rolls_out(&self) -> bool {
        self.modes
            .as_ref()
            .is_some_and(|m| m.iter().any(|m| m == "extend"))
    }
}

/// The frames that cover `seconds` (positive, finite) at `fps`, rounded up to what a VAE compressing time
/// `tc`x takes (1 + k tc), so a video lasts at least as long as asked (5 s at 16 fps: Wan's own 81 frames).
pub fn frames_covering(seconds: f64, fps: u32, tc: usize) -> usize {
    let frames = (seconds * fps as f64).round().max(1.0) as usize;
    if tc > 1 {
        frames.saturating_sub(1).div_ceil(tc) * tc + 1
    } else {
        frames
    }
}
