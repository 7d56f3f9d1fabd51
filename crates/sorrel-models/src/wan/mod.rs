//! Wan2.1: the UMT5 text encoder, `WanTransformer3DModel` and `AutoencoderKLWan`, loaded from a diffusers
//! folder or from the original Wan2.1 release layout.

pub mod config;
pub mod convert;
mod skyreels;
pub mod text_encoder;
pub mod tokenizer;
pub mod transformer;
pub mod vace;
pub mod vae;
