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

impl ThumbnailFrame {
    /// The index of this frame in a clip of `len` frames.
    fn index(self, len: usize) -> usize {
        match self {
            ThumbnailFrame::First => 0,
            ThumbnailFrame::Middle => len / 2,
        }
    }
}

/// The frame of `clip` that `which` names.
pub fn thumbnail(clip: &Clip, which: ThumbnailFrame) -> &Frame {
    &clip.frames()[which.index(clip.len())]
}

/// The frames a sprite sheet of `len` frames shows: `min(len, max_tiles)` of them, evenly from first to
/// last.
fn sprite_picks(len: usize, max_tiles: usize) -> Vec<usize> {
    let n = len.min(max_tiles);
    if n <= 1 {
        return vec![0];
    }
    (0..n)
        .map(|k| (k * (len - 1) + (n - 1) / 2) / (n - 1))
        .collect()
}

/// Keeps, out of a stream of `len` frames, only those a thumbnail and a sprite sheet need, so the stills
/// of a long video come out the same as from the whole clip without holding it.
pub struct StillFrames {
    len: usize,
    thumb: (usize, Option<Frame>),
    picks: Vec<usize>,
    sheet: Vec<Frame>,
    seen: usize,
}

impl StillFrames {
    /// For a stream of `len` frames, the thumbnail `which` and a sprite sheet laid out by `layout`.
    pub fn new(len: usize, which: ThumbnailFrame, layout: SpriteSheet) -> Self {
        StillFrames {
            len,
            thumb: (which.index(len), None),
            picks: sprite_picks(len, layout.max_tiles as usize),
            sheet: Vec::new(),
            seen: 0,
        }
    }

    /// Looks at the next frame of the stream, keeping a copy if a still needs it.
    pub fn offer(&mut self, frame: &Frame) {
        let i = self.seen;
        self.seen += 1;
        if i == self.thumb.0 {
            self.thumb.1 = Some(frame.clone());
        }
        if self.picks.get(self.sheet.len()) == Some(&i) {
            self.sheet.push(frame.clone());
        }
    }

    /// The thumbnail frame and the sprite sheet, once the whole stream has been offered.
    pub fn finish(self, layout: SpriteSheet) -> Result<(Frame, Frame)> {
        if self.seen != self.len {
            return Err(MediaError::Invalid(format!(
                "the stills were planned for {} frames but the video has {}",
                self.len, self.seen
            )));
        }
        let thumb = self.thumb.1.ok_or_else(|| {
            MediaError::Invalid("there are no frames to make a thumbnail from".into())
        })?;
        // A clip of exactly the picked frames: the sheet picks all of them, in order.
        let fps = 1;
        let sheet = sprite_sheet(&Clip::new(self.sheet, fps)?, layout)?;
        Ok((thumb, sheet))
    }
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
    let picks = sprite_picks(clip.len(), layout.max_tiles as usize);
    let n = picks.len();
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

/// Float frames arriving a few at a time on their way to a writer: each batch is quantised ([`Frame::from_f32`]),
/// changed by the caller (the watermark) and offered to the stills: the middle frame as thumbnail and the default
/// sprite sheet, planned from the video's length on the first batch. `sorrel generate` and the server's workers
/// both feed their writers through it.
#[derive(Default)]
pub struct FrameFeed {
    stills: Option<StillFrames>,
}

impl FrameFeed {
    /// Quantises `data`, floats `(F, H, W, 3)` in [0, 1], of a video that will have `total` frames; `touch` sees
    /// each 8-bit frame before the stills do. Returns the frames, in order, for the writer.
    pub fn feed(
        &mut self,
        data: &[f32],
        shape: (usize, usize, usize),
        total: usize,
        mut touch: impl FnMut(&mut Frame),
    ) -> Result<Vec<Frame>> {
        let stills = self.stills.get_or_insert_with(|| {
            StillFrames::new(total, ThumbnailFrame::Middle, SpriteSheet::default())
        });
        let mut frames = Frame::from_f32(data, shape)?;
        for frame in &mut frames {
            touch(frame);
            stills.offer(frame);
        }
        Ok(frames)
    }

    /// The thumbnail frame and the sprite sheet, once every frame has been fed.
    pub fn stills(self) -> Result<(Frame, Frame)> {
        self.stills
            .ok_or_else(|| MediaError::Invalid("no frames were made: there are no stills".into()))?
            .finish(SpriteSheet::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(len: usize) -> Clip {
        let frames = (0..len)
            .map(|i| Frame::new(40, 24, vec![(i * 5 % 256) as u8; 40 * 24 * 3]).unwrap())
            .collect();
        Clip::new(frames, 24).unwrap()
    }

    /// Kept frames give the stills the whole clip gives, for lengths below, at and above the tile count.
    #[test]
    fn kept_frames_make_the_same_stills_as_the_whole_clip() {
        let layout = SpriteSheet {
            tile_width: 20,
            ..SpriteSheet::default()
        };
        for len in [1, 2, 15, 16, 17, 81, 601] {
            let c = clip(len);
            let mut keep = StillFrames::new(len, ThumbnailFrame::Middle, layout);
            for f in c.frames() {
                keep.offer(f);
            }
            let (thumb, sheet) = keep.finish(layout).unwrap();
            assert_eq!(&thumb, thumbnail(&c, ThumbnailFrame::Middle), "{len}");
            assert_eq!(sheet, sprite_sheet(&c, layout).unwrap(), "{len}");
        }
        // The feed: float frames in two batches, each touched once, give the default stills of the touched clip.
        let floats: Vec<f32> = clip(17)
            .frames()
            .iter()
            .flat_map(|f| f.rgb.iter().map(|&v| v as f32 / 255.0))
            .collect();
        let mut feed = FrameFeed::default();
        let per = 40 * 24 * 3;
        let mut fed = Vec::new();
        for (from, n) in [(0, 9), (9, 8)] {
            let batch = &floats[from * per..(from + n) * per];
            fed.extend(
                feed.feed(batch, (n, 24, 40), 17, |f| f.rgb[0] = 255)
                    .unwrap(),
            );
        }
        assert!(fed.iter().all(|f| f.rgb[0] == 255));
        let touched = Clip::new(fed, 24).unwrap();
        let (thumb, sheet) = feed.stills().unwrap();
        assert_eq!(&thumb, thumbnail(&touched, ThumbnailFrame::Middle));
        assert_eq!(
            sheet,
            sprite_sheet(&touched, SpriteSheet::default()).unwrap()
        );
        let e = FrameFeed::default().stills().unwrap_err().to_string();
        assert!(e.contains("no frames"), "{e}");
        let mut short = StillFrames::new(5, ThumbnailFrame::Middle, layout);
        short.offer(&clip(1).frames()[0]);
        let e = short.finish(layout).unwrap_err().to_string();
        assert!(
            e.contains("planned for 5 frames but the video has 1"),
            "{e}"
        );
    }
}
