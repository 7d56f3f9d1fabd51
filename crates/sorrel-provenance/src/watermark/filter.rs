//! A box blur through a summed-area table: the embedder's texture mask and the detector's high-pass both
//! need a local mean whose cost does not grow with the radius.

/// The mean of each pixel's `(2r+1)^2` neighbourhood, clipped at the image's edges.
pub fn box_blur(img: &[f32], width: usize, height: usize, radius: usize) -> Vec<f32> {
    let w1 = width + 1;
    let mut sat = vec![0.0f64; w1 * (height + 1)];
    for y in 0..height {
        let mut row = 0.0f64;
        for x in 0..width {
            row += img[y * width + x] as f64;
            sat[(y + 1) * w1 + x + 1] = sat[y * w1 + x + 1] + row;
        }
    }
    let span = |i: usize, n: usize| (i.saturating_sub(radius), (i + radius + 1).min(n));
    let cols: Vec<(usize, usize)> = (0..width).map(|x| span(x, width)).collect();
    let mut out = vec![0.0f32; width * height];
    for y in 0..height {
        let (y0, y1) = span(y, height);
        let (top, bottom) = (&sat[y0 * w1..], &sat[y1 * w1..]);
        let rows = (y1 - y0) as f64;
        for (x, &(x0, x1)) in cols.iter().enumerate() {
            let sum = bottom[x1] - top[x1] - bottom[x0] + top[x0];
            out[y * width + x] = (sum / (rows * (x1 - x0) as f64)) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn box_blur_matches_a_direct_sum() {
        let (w, h) = (7, 5);
        let img: Vec<f32> = (0..w * h).map(|i| ((i * 37) % 11) as f32).collect();
        let fast = super::box_blur(&img, w, h, 2);
        for y in 0..h {
            for x in 0..w {
                let (mut s, mut n) = (0.0, 0);
                for yy in y.saturating_sub(2)..(y + 3).min(h) {
                    for xx in x.saturating_sub(2)..(x + 3).min(w) {
                        s += img[yy * w + xx];
                        n += 1;
                    }
                }
                assert!((fast[y * w + x] - s / n as f32).abs() < 1e-4);
            }
        }
    }
}
