//! Model families built on candle. One folder per family; `wan` is Wan2.1 (UMT5 text encoder, diffusion
//! transformer, causal 3D VAE).

pub mod clip;
pub mod wan;
