//! Generation modes on top of the models: load a model folder's components, run the one denoising loop,
//! report progress. Knows nothing of HTTP or the command line.

pub mod compose;
pub mod defaults;
pub mod denoise;
mod experts;
pub mod film;
pub mod forcing;
pub mod hub;
pub mod loader;
pub mod memory;
pub mod modes;
pub mod noise;
pub mod progress;
pub mod request;
pub mod rollout;
pub mod vace;

pub use compose::Splice;
pub use defaults::{frames_covering, ModelDefaults};
pub use denoise::{decoded_to_frames, fit, StepFn};
pub use loader::{Layout, LoadOptions, VaeTiling, WanPipeline, WAN21_FPS};
pub use modes::{FrameSink, Mode, ModelInfo, Streamed, Video};
pub use progress::Event;
pub use request::{strength_steps, Conditioning, Forcing, GenerateRequest, Picture};
pub use rollout::join_clips;
pub use sorrel_core::LoraSpec;
