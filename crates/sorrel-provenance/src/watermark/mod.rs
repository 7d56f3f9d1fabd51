//! Sorrel's invisible watermark: a 64-bit payload in the luma of every frame, found again after
//! re-encoding, resizing, cropping, trimming and frame-rate changes, where metadata is long gone.
//!
//! The payload is Reed–Solomon coded (`code`), spread over a keyed tile of ±1 cells that repeats across
//! the frame (`pattern`), and added to each frame with a texture mask (`embed`). The detector (`detect`)
//! averages frames, folds the picture's fine detail onto one tile at each candidate scale, finds the tile's
//! offset from its pilot cells, and decodes the data cells.

mod code;
mod detect;
mod embed;
mod filter;
mod pattern;

pub use code::false_positive_bound;
pub use detect::{hex_payload, Detection, Detector};
pub use embed::{Embedder, DEFAULT_STRENGTH};
pub use pattern::WatermarkKey;

/// The smallest short side (pixels) at which the watermark is tested to survive; below it a missing
/// watermark says little (at 32x32 a cell is under half a pixel).
pub const MIN_SHORT_SIDE: u32 = 256;

/// The C2PA soft-binding algorithm name that links a manifest to this watermark's payload.
pub const SOFT_BINDING_ALG: &str = "org.sorrel.watermark.1";

/// The payload for a file: the first 64 bits of SHA-256 over `identifier` (a job id, or a fresh random
/// nonce on the command line), so the payload names one generation without revealing anything about it.
pub fn payload_for(identifier: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("sorrel watermark payload\0{identifier}").as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("32-byte digest"))
}
