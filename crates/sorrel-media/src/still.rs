//! Still images made from a clip: a thumbnail (one frame) and a sprite sheet (a grid of frames), the
//! two download variants of OpenAI's video API, as PNG, JPEG or WebP.

use std::path::Path;

use image::imageops::{self, FilterType};
use image::{ImageBuffer, Rgb, RgbImage};

use crate::atomic;
use crate::clip::{Clip, Frame};
use crate::error::{MediaError, Result};

/// Which frame stands for the clip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ThumbnailFrame {
    /// The first frame.
    First,
    /// The middle frame (index `len / 2`): usually more telling than the first.
    #[default]
    Middle,
}

/// The frame of `clip` that `which` names.
pub fn thumbnail(clip: &Clip, which: ThumbnailFrame) -> &Frame {
    let i = match which {
        ThumbnailFrame::First => 0,
        ThumbnailFrame::Middle => clip.len() / 2,
    };
    &clip.frames()[i]
}

/// Layout of a sprite sheet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpriteSheet {
    /// Tiles per row.
    pub columns: u32,
    /// Most tiles in all; frames are picked evenly from first to last.
    pub max_tiles: u32,
    /// Width of one tile in pixels; height keeps the frame's aspect ratio. Frames are only shrunk.
    pub tile_width: u32,
}

impl Default for SpriteSheet {
    fn default() -> Self {
        SpriteSheet {
            columns: 4,
            max_tiles: 16,
            tile_width: 256,
        }
    }
}

/// Lays out evenly spaced frames of `clip` in a grid, left to right, top to bottom.
pub fn sprite_sheet(clip: &Clip, layout: SpriteSheet) -> Result<Frame> {
    if layout.columns == 0 || layout.max_tiles == 0 || layout.tile_width == 0 {
        return Err(MediaError::Invalid(
            "a sprite sheet needs at least one column, one tile and a tile width of 1 pixel".into(),
        ));
    }
    let n = clip.len().min(layout.max_tiles as usize);
    let picks: Vec<usize> = if n == 1 {
        vec![0]
    } else {
        (0..n)
            .map(|k| (k * (clip.len() - 1) + (n - 1) / 2) / (n - 1))
            .collect()
    };
    let tw = layout.tile_width.min(clip.width());
    let th = ((clip.height() as u64 * tw as u64 + clip.width() as u64 / 2) / clip.width() as u64)
        .max(1) as u32;
    let cols = layout.columns.min(n as u32);
    let rows = (n as u32).div_ceil(cols);
    let mut sheet: RgbImage = ImageBuffer::from_pixel(cols * tw, rows * th, Rgb([0, 0, 0]));
    for (k, &i) in picks.iter().enumerate() {
        let img = to_image(&clip.frames()[i]);
        let tile = if tw == clip.width() {
            img
        } else {
            imageops::resize(&img, tw, th, FilterType::Triangle)
        };
        let (x, y) = ((k as u32 % cols) * tw, (k as u32 / cols) * th);
        imageops::replace(&mut sheet, &tile, x as i64, y as i64);
    }
    Frame::new(sheet.width(), sheet.height(), sheet.into_raw())
}

/// Still image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StillFormat {
    /// Lossless PNG.
    Png,
    /// JPEG at a quality from 1 to 100.
    Jpeg(u8),
    /// Lossless WebP.
    WebP,
}

impl StillFormat {
    /// The format a file name asks for: `.png`, `.jpg`/`.jpeg` (quality 90) or `.webp`.
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            Some("png") => Ok(StillFormat::Png),
            Some("jpg" | "jpeg") => Ok(StillFormat::Jpeg(90)),
            Some("webp") => Ok(StillFormat::WebP),
            other => Err(MediaError::Unsupported(format!(
                "cannot write a still image to {}: {} is not an image type I write; use .png, .jpg \
                 or .webp",
                path.display(),
                other.map_or("a name without extension".into(), |e| format!(".{e}"))
            ))),
        }
    }
}

/// Encodes one frame.
pub fn encode_still(frame: &Frame, format: StillFormat) -> Result<Vec<u8>> {
    let img = to_image(frame);
    let mut out = std::io::Cursor::new(Vec::new());
    let res = match format {
        StillFormat::Png => return crate::apng::encode_png(frame),
        StillFormat::Jpeg(q) => img.write_with_encoder(
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, q.clamp(1, 100)),
        ),
        StillFormat::WebP => {
            img.write_with_encoder(image::codecs::webp::WebPEncoder::new_lossless(&mut out))
        }
    };
    res.map_err(|e| MediaError::codec("image encoder", e))?;
    Ok(out.into_inner())
}

/// Writes one frame to `path`, in the format its extension names, atomically.
pub fn write_still(path: &Path, frame: &Frame) -> Result<()> {
    let bytes = encode_still(frame, StillFormat::from_path(path)?)?;
    atomic::write_file(path, &bytes)
}

fn to_image(frame: &Frame) -> RgbImage {
    ImageBuffer::from_raw(frame.width, frame.height, frame.rgb.clone())
        .expect("Frame::new checked the buffer length")
}
