//! Sorrel's media layer: frames in, files people can play out, and the way back for inputs.
//!
//! Writers (all atomic: temp file, then rename):
//! - MP4 with H.264 (OpenH264, default) or AV1 (rav1e), fast-start, muxed by muxide at a 90 kHz
//!   timescale, so frame times are exact for every frame rate that divides 90000;
//! - WebM with AV1 (libwebm; millisecond timestamps);
//! - GIF (centisecond delays, drift-free), animated PNG (exact), animated WebP (milliseconds);
//! - [`VideoStream`]: the same files from frames that arrive a few at a time (MP4 and WebM encode as they
//!   come);
//! - PNG sequences, and stills: thumbnail and sprite sheet as PNG, JPEG or WebP.
//!
//! Readers: still images (PNG, JPEG, WebP, GIF), H.264 MP4, animated GIF/PNG/WebP, and anything else
//! through a system ffmpeg when one is installed.

mod apng;
mod atomic;
mod av1;
mod clip;
mod error;
pub mod ffmpeg;
mod gif;
mod h264;
mod mp4;
mod npy;
mod options;
mod output;
mod png_sequence;
mod read;
mod still;
mod stream;
mod timing;
mod webm;
mod webp;
mod yuv;

pub use apng::encode_png;
pub use atomic::{check_writable, write_file};
pub use clip::{to_u8, Clip, Frame, MAX_FPS};
pub use error::{MediaError, Result};
pub use gif::gif_delays;
pub use npy::npy_header;
pub use options::{EncodeOptions, VideoCodec, MAX_BITRATE_KBPS};
pub use output::{encode, write_video, Format};
pub use png_sequence::PngSequence;
pub use read::{native_video_extension, read_image, read_video, read_video_bytes};
pub use still::{
    encode_still, sprite_sheet, thumbnail, write_still, FrameFeed, SpriteSheet, StillFormat,
    StillFrames, ThumbnailFrame,
};
pub use stream::VideoStream;
