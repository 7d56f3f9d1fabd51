//! Generation modes on top of the models: load a model folder's components, run the denoising loop, report
//! progress. Knows nothing of HTTP or the command line.

pub mod defaults;
pub mod loader;
pub mod noise;
pub mod progress;
pub mod t2v;

pub use defaults::ModelDefaults;
pub use loader::{Layout, LoadOptions, WanPipeline, WAN21_FPS};
pub use progress::Event;
pub use t2v::{decoded_to_frames, Text2VideoRequest, Video};
