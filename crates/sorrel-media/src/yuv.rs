//! RGB to Y'CbCr 4:2:0, BT.601 limited range, for both video encoders.
//!
//! Written here rather than taken from OpenH264's converter because that one truncates instead of
//! rounding, which darkens every channel by half a level on average; players undo BT.601 exactly, so
//! the rounding error is all that should be lost before the codec.

/// Planar 8-bit 4:2:0 picture; chroma planes are `(width / 2) x (height / 2)`.
pub(crate) struct Yuv420 {
    pub width: usize,
    pub height: usize,
    pub y: Vec<u8>,
    pub u: Vec<u8>,
    pub v: Vec<u8>,
}

impl Yuv420 {
    /// A black picture of an even size.
    pub fn new(width: usize, height: usize) -> Self {
        debug_assert!(width.is_multiple_of(2) && height.is_multiple_of(2));
        let c = (width / 2) * (height / 2);
        Yuv420 {
            width,
            height,
            y: vec![16; width * height],
            u: vec![128; c],
            v: vec![128; c],
        }
    }

    /// Converts a tightly packed RGB8 picture of this size. Chroma is taken from the mean colour of
    /// each 2x2 block (centred siting, as MPEG-2/H.264 decoders then upsample it).
    pub fn read_rgb(&mut self, rgb: &[u8]) {
        let (w, h) = (self.width, self.height);
        assert_eq!(rgb.len(), w * h * 3, "frame size checked by Clip");
        let luma = |r: f32, g: f32, b: f32| 16.0 + 0.256_788 * r + 0.504_129 * g + 0.097_906 * b;
        for (dst, px) in self.y.iter_mut().zip(rgb.chunks_exact(3)) {
            *dst = (luma(px[0] as f32, px[1] as f32, px[2] as f32) + 0.5) as u8;
        }
        let cw = w / 2;
        for cy in 0..h / 2 {
            let top = &rgb[(2 * cy) * w * 3..(2 * cy + 1) * w * 3];
            let bottom = &rgb[(2 * cy + 1) * w * 3..(2 * cy + 2) * w * 3];
            for cx in 0..cw {
                let mut s = [0f32; 3];
                for row in [top, bottom] {
                    for px in row[cx * 6..cx * 6 + 6].chunks_exact(3) {
                        s[0] += px[0] as f32;
                        s[1] += px[1] as f32;
                        s[2] += px[2] as f32;
                    }
                }
                let [r, g, b] = s.map(|c| c * 0.25);
                let u = 128.0 - 0.148_223 * r - 0.290_993 * g + 0.439_216 * b;
                let v = 128.0 + 0.439_216 * r - 0.367_788 * g - 0.071_427 * b;
                self.u[cy * cw + cx] = (u + 0.5).clamp(0.0, 255.0) as u8;
                self.v[cy * cw + cx] = (v + 0.5).clamp(0.0, 255.0) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primaries_land_on_the_bt601_codes() {
        // White, black, and pure red: Y' 235, 16 and 81 (16 + 219 * 0.299), red's Cr 240.
        let mut p = Yuv420::new(2, 2);
        p.read_rgb(&[255; 12]);
        assert_eq!((p.y[0], p.u[0], p.v[0]), (235, 128, 128));
        p.read_rgb(&[0; 12]);
        assert_eq!((p.y[0], p.u[0], p.v[0]), (16, 128, 128));
        p.read_rgb(&[255, 0, 0].repeat(4));
        assert_eq!((p.y[0], p.u[0], p.v[0]), (81, 90, 240));
    }
}
