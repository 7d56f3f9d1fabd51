//! CLIP's vision tower (transformers' `CLIPVisionModel`) and its image processor, as image-to-video models use
//! them: the penultimate layer's hidden states of a centre-cropped, normalised picture. Shared by every family
//! that conditions on CLIP image features (Wan2.1 I2V and FLF2V today).

pub mod config;
pub mod processor;
pub mod vision;

pub use config::{ClipImageProcessorConfig, ClipVisionConfig};
pub use processor::preprocess;
pub use vision::ClipVisionModel;
