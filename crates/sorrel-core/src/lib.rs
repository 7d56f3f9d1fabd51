//! Numerics and weight loading that candle lacks, shared by every model family.
//!
//! Lower layer of the workspace: nothing here knows about pipelines, schedulers or the CLI.

pub mod adaln;
pub mod attention;
pub mod bf16_attention;
pub mod bf16_conv;
pub mod bf16_matmul;
pub mod channel_norm;
pub mod config;
pub mod conv2d;
pub mod conv3d;
pub mod device;
pub mod error;
pub mod f32_attention;
pub mod gguf;
pub mod lora;
pub mod ops;
pub mod shifted_conv;
pub mod simd;
pub mod threads;
pub mod weights;

pub use config::read_config;
pub use error::{Error, Result};
pub use lora::{LoraSet, LoraSpec};
pub use weights::TensorSource;
