//! Reading inputs for the modes that start from pictures or video: still images (PNG, JPEG, WebP,
//! GIF) with the `image` crate, and videos: H.264 MP4 natively, animated GIF and PNG through `image`,
//! animated WebP through libwebp, and anything else through a system ffmpeg when one is installed.

use std::fs;
use std::io::Cursor;
use std::path::Path;

use image::{AnimationDecoder, ImageReader};

use crate::clip::{Clip, Frame, MAX_FPS};
use crate::error::{MediaError, Result};
use crate::{ffmpeg, mp4};

/// Reads a still image (PNG, JPEG, WebP, or the first frame of a GIF) as RGB8; transparency is
/// dropped.
pub fn read_image(path: &Path) -> Result<Frame> {
    let img = ImageReader::open(path)
        .map_err(|e| MediaError::io("cannot open", path, e))?
        .with_guessed_format()
        .map_err(|e| MediaError::io("cannot read", path, e))?
        .decode()
        .map_err(|e| {
            MediaError::Unsupported(format!(
                "cannot read {} as an image ({e}): use a PNG, JPEG, WebP or GIF file",
                path.display()
            ))
        })?
        .into_rgb8();
    Frame::new(img.width(), img.height(), img.into_raw())
}

/// The container a file's first bytes announce.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Mp4,
    Gif,
    Png,
    WebP,
    Other,
}

fn sniff(bytes: &[u8]) -> Kind {
    match bytes {
        [_, _, _, _, b'f', b't', b'y', b'p', ..] => Kind::Mp4,
        [b'G', b'I', b'F', b'8', ..] => Kind::Gif,
        [0x89, b'P', b'N', b'G', ..] => Kind::Png,
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Kind::WebP,
        _ => Kind::Other,
    }
}

/// Reads every frame of a video file. MP4 with H.264 (what `sorrel` writes) and animated GIF, PNG and
/// WebP are decoded here; other codecs and containers go through `ffmpeg` when it is installed, and
/// give an error naming the fix when it is not.
pub fn read_video(path: &Path) -> Result<Clip> {
    let bytes = fs::read(path).map_err(|e| MediaError::io("cannot read", path, e))?;
    let other = match decode_native(&bytes, path)? {
        Ok(clip) => return Ok(clip),
        Err(other) => other,
    };
    if ffmpeg::available() {
        return ffmpeg::read(path);
    }
    Err(not_native(
        path,
        &other,
        "install ffmpeg (Sorrel then uses it for everything else) or convert",
    ))
}

/// Decodes a video held in memory (an upload), in the formats Sorrel decodes itself: H.264 MP4, GIF, APNG
/// and WebP. `name` names it in messages. Other formats are refused with the command that converts them
/// (ffmpeg reads files, not memory).
pub fn read_video_bytes(bytes: &[u8], name: &Path) -> Result<Clip> {
    match decode_native(bytes, name)? {
        Ok(clip) => Ok(clip),
        Err(other) => Err(not_native(name, &other, "convert")),
    }
}

/// The file extension of a video format Sorrel decodes itself (`mp4`, `gif`, `png` for APNG, `webp`), from
/// the first bytes; `None` for anything else.
pub fn native_video_extension(bytes: &[u8]) -> Option<&'static str> {
    match sniff(bytes) {
        Kind::Mp4 => Some("mp4"),
        Kind::Gif => Some("gif"),
        Kind::Png => Some("png"),
        Kind::WebP => Some("webp"),
        Kind::Other => None,
    }
}

/// The clip, if the bytes are a format decoded here; else what they are, for the message.
fn decode_native(bytes: &[u8], path: &Path) -> Result<std::result::Result<Clip, String>> {
    let other = match sniff(bytes) {
        Kind::Mp4 => match mp4::read(bytes)? {
            mp4::Mp4Contents::Decoded(clip) => return Ok(Ok(clip)),
            mp4::Mp4Contents::OtherCodec(name) => format!("an MP4 with {name} video"),
        },
        Kind::Gif => {
            return read_animation(
                image::codecs::gif::GifDecoder::new(Cursor::new(bytes)),
                path,
            )
            .map(Ok)
        }
        Kind::Png => {
            let dec = image::codecs::png::PngDecoder::new(Cursor::new(bytes))
                .map_err(|e| bad_file(path, e))?;
            if dec.is_apng().map_err(|e| bad_file(path, e))? {
                return read_animation(dec.apng(), path).map(Ok);
            }
            let img = image::load_from_memory(bytes)
                .map_err(|e| bad_file(path, e))?
                .into_rgb8();
            let frame = Frame::new(img.width(), img.height(), img.into_raw())?;
            return Clip::new(vec![frame], 1).map(Ok);
        }
        Kind::WebP => return read_webp(bytes, path).map(Ok),
        Kind::Other => "a video format Sorrel does not decode itself".to_string(),
    };
    Ok(Err(other))
}

fn not_native(path: &Path, what: &str, fix: &str) -> MediaError {
    MediaError::Unsupported(format!(
        "{} is {what}: Sorrel decodes H.264 MP4, GIF, APNG and WebP itself; {fix} the file with \
         `ffmpeg -i INPUT -c:v libx264 -pix_fmt yuv420p OUTPUT.mp4`",
        path.display()
    ))
}

fn bad_file(path: &Path, e: impl std::fmt::Display) -> MediaError {
    MediaError::codec("image decoder", format!("{}: {e}", path.display()))
}

/// Decodes a WebP (animated or not) with libwebp's own animation decoder. The `image` crate's WebP
/// compositing of animation frames is off by a few levels (measured: 48 dB on a lossless file that
/// libwebp decodes exactly), so lossless files would not round-trip through it.
fn read_webp(bytes: &[u8], path: &Path) -> Result<Clip> {
    let decoder =
        webp_animation::Decoder::new(bytes).map_err(|e| bad_file(path, format!("{e:?}")))?;
    let mut frames = Vec::new();
    let mut first_end_ms = None;
    for f in decoder {
        let (w, h) = f.dimensions();
        first_end_ms.get_or_insert(f.timestamp());
        let rgb = f
            .data()
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect();
        frames.push(Frame::new(w, h, rgb)?);
    }
    let fps = match first_end_ms {
        Some(ms) if ms > 0 => ((1000.0 / ms as f64).round() as u32).clamp(1, MAX_FPS),
        _ => 1,
    };
    Clip::new(frames, fps)
}

/// Decodes an animated image; the frame rate comes from the first frame's delay.
fn read_animation<'a, D: AnimationDecoder<'a>>(
    decoder: image::ImageResult<D>,
    path: &Path,
) -> Result<Clip> {
    let frames = decoder
        .map_err(|e| bad_file(path, e))?
        .into_frames()
        .collect_frames()
        .map_err(|e| bad_file(path, e))?;
    let fps = frames
        .first()
        .map(|f| {
            let (num, den) = f.delay().numer_denom_ms();
            if num == 0 {
                return 10;
            }
            ((1000.0 * den as f64 / num as f64).round() as u32).clamp(1, MAX_FPS)
        })
        .unwrap_or(1);
    let frames = frames
        .into_iter()
        .map(|f| {
            let rgb = image::DynamicImage::ImageRgba8(f.into_buffer()).into_rgb8();
            Frame::new(rgb.width(), rgb.height(), rgb.into_raw())
        })
        .collect::<Result<Vec<_>>>()?;
    Clip::new(frames, fps)
}
