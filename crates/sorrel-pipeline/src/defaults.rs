//! A model's generation defaults and limits: Wan2.1's unless the folder has a `sorrel_defaults.json` (Sorrel's
//! own models write one), read before any weights load so a request can be checked in milliseconds.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sorrel_core::{Error, Result};

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
            max_sequence_length: 512,
            max_width: 4096,
            max_height: 4096,
            max_frames: 1001,
            modes: None,
        }
    }

    /// The defaults of the model folder `dir`.
    pub fn for_dir(dir: &Path) -> Result<Self> {
        let path = dir.join(DEFAULTS_FILE);
        if !path.is_file() {
            return Ok(Self::wan21());
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
