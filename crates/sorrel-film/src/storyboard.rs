//! The film's storyboard: one row per shot, its middle frame beside its number, length, cut or
//! continuation, and the story's line, as a PNG.

use candle_core::Tensor;
use font8x8::UnicodeFonts;
use sorrel_core::Result;
use sorrel_pipeline::film::Plan;
use sorrel_pipeline::Picture;

/// Height of each row's picture in pixels.
const ROW: usize = 96;
/// Text is the 8x8 font drawn at this scale.
const SCALE: usize = 2;
/// Characters per line of caption.
const LINE_CHARS: usize = 44;
const GAP: usize = 12;
const BACKGROUND: [u8; 3] = [17, 17, 20];
const INK: [u8; 3] = [235, 235, 235];
const DIM: [u8; 3] = [150, 150, 160];

struct Canvas {
    w: usize,
    h: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Self {
            w,
            h,
            rgb: BACKGROUND.repeat(w * h),
        }
    }

    fn put(&mut self, x: usize, y: usize, c: [u8; 3]) {
        if x < self.w && y < self.h {
            let i = (y * self.w + x) * 3;
            self.rgb[i..i + 3].copy_from_slice(&c);
        }
    }

    /// Draws `text` with its top-left corner at (x, y); characters the font lacks are drawn as `?`.
    fn text(&mut self, x: usize, y: usize, text: &str, c: [u8; 3]) {
        for (k, ch) in text.chars().enumerate() {
            let glyph = font8x8::BASIC_FONTS
                .get(ch)
                .or_else(|| font8x8::LATIN_FONTS.get(ch))
                .or_else(|| font8x8::BASIC_FONTS.get('?'))
                .unwrap_or([0; 8]);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        for dy in 0..SCALE {
                            for dx in 0..SCALE {
                                self.put(x + (k * 8 + col) * SCALE + dx, y + row * SCALE + dy, c);
                            }
                        }
                    }
                }
            }
        }
    }

    fn picture(&mut self, x: usize, y: usize, p: &Picture) {
        for py in 0..p.height {
            for px in 0..p.width {
                let i = (py * p.width + px) * 3;
                self.put(x + px, y + py, [p.rgb[i], p.rgb[i + 1], p.rgb[i + 2]]);
            }
        }
    }
}

/// `text` broken into lines of at most `width` characters at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// A frame scaled to [`ROW`] pixels high: small frames by whole-pixel blocks (a 32x32 frame stays sharp),
/// large ones with Lanczos.
fn thumbnail(frame: &Tensor) -> Result<Picture> {
    let p = crate::render::pictures(&frame.unsqueeze(0)?)?.remove(0);
    let (w, h) = (p.width, p.height);
    if h <= ROW {
        let k = ROW / h;
        let (tw, th) = (w * k, h * k);
        let mut out = vec![0u8; tw * th * 3];
        for y in 0..th {
            for x in 0..tw {
                let s = ((y / k) * w + x / k) * 3;
                let d = (y * tw + x) * 3;
                out[d..d + 3].copy_from_slice(&p.rgb[s..s + 3]);
            }
        }
        return Ok(Picture {
            width: tw,
            height: th,
            rgb: out,
        });
    }
    let tw = (w * ROW).div_ceil(h);
    Ok(Picture {
        width: tw,
        height: ROW,
        rgb: sorrel_pipeline::fit(&p, tw, ROW),
    })
}

/// The storyboard of `plan` rendered as `shots` (each (F, H, W, 3) in [0, 1]; `counts[i]` frames at `fps`),
/// as PNG bytes.
pub fn sheet(plan: &Plan, shots: &[Tensor], counts: &[usize], fps: u32) -> Result<Vec<u8>> {
    let thumbs: Vec<Picture> = shots
        .iter()
        .map(|s| thumbnail(&s.get(s.dim(0)? / 2)?))
        .collect::<Result<_>>()?;
    let thumb_w = thumbs.iter().map(|t| t.width).max().unwrap_or(ROW);
    let text_w = LINE_CHARS * 8 * SCALE;
    let width = GAP + thumb_w + GAP + text_w + GAP;
    let height = GAP + shots.len() * (ROW + GAP);
    let mut c = Canvas::new(width, height);
    let mut at = 0.0;
    for (i, (shot, thumb)) in plan.shots.iter().zip(&thumbs).enumerate() {
        let y = GAP + i * (ROW + GAP);
        c.picture(GAP, y, thumb);
        let seconds = counts[i] as f64 / fps as f64;
        let how = if shot.continues { "continues" } else { "cut" };
        let head = format!("{}  {at:.1}-{:.1} s  {how}", i + 1, at + seconds);
        at += seconds;
        let x = GAP + thumb_w + GAP;
        c.text(x, y, &head, DIM);
        let lines = wrap(&shot.text, LINE_CHARS);
        let room = (ROW - 8 * SCALE - 4) / (8 * SCALE + 2);
        for (k, line) in lines.iter().take(room).enumerate() {
            c.text(x, y + 8 * SCALE + 4 + k * (8 * SCALE + 2), line, INK);
        }
    }
    let frame =
        sorrel_media::Frame::new(width as u32, height as u32, c.rgb).map_err(crate::output)?;
    sorrel_media::encode_png(&frame).map_err(crate::output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_wrap_at_spaces() {
        assert_eq!(
            wrap("Ruby bounces on the green floor for a while", 16),
            ["Ruby bounces on", "the green floor", "for a while"]
        );
    }
}
