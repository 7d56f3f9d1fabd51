//! Finding the pattern again. Frames are averaged (the pattern is the same in each, content moves), the
//! average's fine detail is kept (a high-pass), and for each candidate scale the detail is folded onto one
//! tile: every canonical pixel adds into its position modulo the tile. A crop only shifts the folded tile,
//! so a circular cross-correlation with the pilot finds the shift; the scale with the sharpest peak wins.
//! The data cells at that scale and shift give soft bits for the Reed–Solomon decoder.

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};
use serde::Serialize;
use std::sync::Arc;

use super::code::{self, CODED_BITS};
use super::filter::box_blur;
use super::pattern::{frame_scale, Role, Tile, WatermarkKey, CELL, TILE, TILE_CELLS};

/// Relative scales tried around the one the frame's size implies (a crop changes the short side without
/// scaling the picture): 0.85 to 1.15 in steps of 0.3 %, fine enough that the pattern drifts by under
/// 1.5 canonical pixels across an 832-pixel-wide frame.
const SCALE_MIN: f64 = 0.85;
const SCALE_STEP: f64 = 0.003;
const SCALE_COUNT: usize = 101;
/// The best scales (by pilot peak) whose data cells are decoded.
const DECODE_ATTEMPTS: usize = 3;
/// The pilot peak, in standard deviations, below which nothing is decoded. On unmarked video the highest of
/// the ~3.7 million correlations tried sits near 5 (200 textured clips: median 4.2, max 5.1); marked 480p
/// video after H.264 CRF 28 gives 15. The gate also keeps degenerate input (a flat image, where every soft
/// bit is 0 and the all-zero word is a codeword) from decoding to anything.
pub const SYNC_THRESHOLD: f64 = 6.5;

/// What the detector found.
#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    /// Whether a payload was recovered.
    pub detected: bool,
    /// The recovered 64-bit payload.
    #[serde(serialize_with = "hex_payload")]
    pub payload: Option<u64>,
    /// Share of the 160 coded bits read correctly (against the re-encoded payload), when detected.
    pub bit_accuracy: Option<f64>,
    /// Height of the pilot's correlation peak in standard deviations of all shifts (about 5 on unmarked
    /// video, the maximum of millions of noise values; marked video gives much more).
    pub sync_score: f64,
    /// Frame pixels per pattern pixel at the best match (1.0 for an untouched 480-line video).
    pub scale: f64,
    /// Frames averaged.
    pub frames: usize,
    /// The chance that a video without this watermark would give some payload here: the decoder's bound
    /// times the number of decoding attempts.
    pub false_positive_probability: f64,
}

/// Serialises a payload as 16 hex digits.
pub fn hex_payload<S: serde::Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(p) => s.serialize_str(&format!("{p:016x}")),
        None => s.serialize_none(),
    }
}

/// The detector for one key.
pub struct Detector {
    tile: Tile,
    pilot_spectrum: Vec<Complex<f32>>,
    forward: Arc<dyn Fft<f32>>,
    inverse: Arc<dyn Fft<f32>>,
}

impl Detector {
    /// Prepares the pilot of `key`.
    pub fn new(key: &WatermarkKey) -> Self {
        let tile = Tile::new(key);
        let mut planner = FftPlanner::new();
        let forward = planner.plan_fft_forward(TILE);
        let inverse = planner.plan_fft_inverse(TILE);
        let mut pilot: Vec<Complex<f32>> = tile
            .pilot_image()
            .into_iter()
            .map(|v| Complex::new(v, 0.0))
            .collect();
        fft2(&mut pilot, &forward);
        Detector {
            tile,
            pilot_spectrum: pilot,
            forward,
            inverse,
        }
    }

    /// Looks for the watermark in every frame of `clip`.
    pub fn detect_clip(&self, clip: &sorrel_media::Clip) -> Detection {
        let (w, h) = (clip.width() as usize, clip.height() as usize);
        self.detect(clip.frames().iter().map(|f| &f.rgb[..]), w, h)
    }

    /// Looks for the watermark in RGB8 frames of `width x height`.
    pub fn detect<'a>(
        &self,
        frames: impl IntoIterator<Item = &'a [u8]>,
        width: usize,
        height: usize,
    ) -> Detection {
        let mut sum = vec![0.0f64; width * height];
        let mut n = 0;
        for rgb in frames {
            assert_eq!(rgb.len(), width * height * 3, "frame buffer size");
            for (s, p) in sum.iter_mut().zip(rgb.chunks_exact(3)) {
                *s += 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64;
            }
            n += 1;
        }
        let none = Detection {
            detected: false,
            payload: None,
            bit_accuracy: None,
            sync_score: 0.0,
            scale: 0.0,
            frames: n,
            false_positive_probability: 0.0,
        };
        if n == 0 || width < 8 || height < 8 {
            return none;
        }
        let mean: Vec<f32> = sum.iter().map(|s| (s / n as f64) as f32).collect();
        let detail = high_pass(&mean, width, height);

        let base = frame_scale(width, height);
        let mut found: Vec<(f64, f64, usize)> = (0..SCALE_COUNT)
            .map(|i| {
                let k = base * (SCALE_MIN + SCALE_STEP * i as f64);
                let folded = fold(&detail, width, height, k);
                let (z, shift) = self.pilot_peak(&folded);
                (z, k, shift)
            })
            .collect();
        found.sort_by(|a, b| b.0.total_cmp(&a.0));
        let (best_z, best_k, _) = found[0];
        let mut out = Detection {
            sync_score: best_z,
            scale: best_k,
            ..none
        };
        for &(z, k, shift) in found.iter().take(DECODE_ATTEMPTS) {
            if z < SYNC_THRESHOLD {
                break;
            }
            out.false_positive_probability += code::false_positive_bound();
            let folded = fold(&detail, width, height, k);
            let soft = self.soft_bits(&folded, shift);
            if let Some(payload) = code::decode(&soft) {
                let bits = code::encode(payload);
                let right = soft
                    .iter()
                    .zip(bits.iter())
                    .filter(|(s, &b)| (**s > 0.0) == b)
                    .count();
                out.detected = true;
                out.payload = Some(payload);
                out.bit_accuracy = Some(right as f64 / CODED_BITS as f64);
                out.scale = k;
                break;
            }
        }
        out
    }

    /// The pilot's correlation peak over all circular shifts of the folded tile: (height in standard
    /// deviations, shift as `dy * TILE + dx`).
    fn pilot_peak(&self, folded: &[f32]) -> (f64, usize) {
        let mut spec: Vec<Complex<f32>> = folded.iter().map(|&v| Complex::new(v, 0.0)).collect();
        fft2(&mut spec, &self.forward);
        for (s, p) in spec.iter_mut().zip(&self.pilot_spectrum) {
            *s *= p.conj();
        }
        fft2(&mut spec, &self.inverse);
        let n = spec.len() as f64;
        let mean = spec.iter().map(|c| c.re as f64).sum::<f64>() / n;
        let var = spec
            .iter()
            .map(|c| (c.re as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let (at, peak) = spec
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.re.total_cmp(&b.1.re))
            .map(|(i, c)| (i, c.re as f64))
            .expect("non-empty tile");
        if var <= 0.0 {
            return (0.0, at);
        }
        ((peak - mean) / var.sqrt(), at)
    }

    /// Soft coded bits from the data cells of the folded tile shifted by `shift`. Each cell is read over its
    /// inner pixels, away from edges that blur and compression smear into neighbours.
    fn soft_bits(&self, folded: &[f32], shift: usize) -> [f64; CODED_BITS] {
        let (dy, dx) = (shift / TILE, shift % TILE);
        let mut soft = [0.0f64; CODED_BITS];
        for (i, role) in self.tile.cells.iter().enumerate() {
            let Role::Data { bit, sign } = *role else {
                continue;
            };
            let (cy, cx) = (i / TILE_CELLS, i % TILE_CELLS);
            let mut v = 0.0f64;
            for y in cy * CELL + 1..(cy + 1) * CELL - 1 {
                let row = ((y + dy) % TILE) * TILE;
                for x in cx * CELL + 1..(cx + 1) * CELL - 1 {
                    v += folded[row + (x + dx) % TILE] as f64;
                }
            }
            soft[bit] += v * sign as f64;
        }
        soft
    }
}

/// Fine detail of the averaged luma: the image minus its local mean over about two cells, with outliers
/// (edges of objects) clipped to three mean absolute deviations so they do not drown the pattern.
fn high_pass(luma: &[f32], width: usize, height: usize) -> Vec<f32> {
    let radius = ((frame_scale(width, height) * CELL as f64).round() as usize).max(1);
    let blurred = box_blur(luma, width, height, radius);
    let mut detail: Vec<f32> = luma.iter().zip(&blurred).map(|(a, b)| a - b).collect();
    let mad = detail.iter().map(|v| v.abs()).sum::<f32>() / detail.len() as f32;
    let limit = 3.0 * mad.max(1e-3);
    for v in detail.iter_mut() {
        *v = v.clamp(-limit, limit);
    }
    detail
}

/// Folds `detail` (frame pixels) onto one tile at `k` frame pixels per canonical pixel: each canonical
/// pixel's centre is sampled bilinearly and added at its position modulo the tile; the result is the mean
/// per tile position, less the overall mean.
fn fold(detail: &[f32], width: usize, height: usize, k: f64) -> Vec<f32> {
    let (wc, hc) = ((width as f64 / k) as usize, (height as f64 / k) as usize);
    let taps = |c: usize, limit: usize| {
        let p = ((c as f64 + 0.5) * k - 0.5).clamp(0.0, (limit - 1) as f64);
        let i = (p as usize).min(limit.saturating_sub(2));
        (i, (p - i as f64) as f32)
    };
    let cols: Vec<(usize, f32)> = (0..wc).map(|u| taps(u, width)).collect();
    let mut sums = vec![0.0f32; TILE * TILE];
    let mut counts = vec![0u32; TILE * TILE];
    for v in 0..hc {
        let (y0, fy) = taps(v, height);
        let (r0, r1) = (&detail[y0 * width..], &detail[(y0 + 1) * width..]);
        let base = (v % TILE) * TILE;
        for (u, &(x0, fx)) in cols.iter().enumerate() {
            let top = r0[x0] + (r0[x0 + 1] - r0[x0]) * fx;
            let bottom = r1[x0] + (r1[x0 + 1] - r1[x0]) * fx;
            let at = base + u % TILE;
            sums[at] += top + (bottom - top) * fy;
            counts[at] += 1;
        }
    }
    let mut folded: Vec<f32> = sums
        .iter()
        .zip(&counts)
        .map(|(s, &c)| if c > 0 { s / c as f32 } else { 0.0 })
        .collect();
    let mean = folded.iter().sum::<f32>() / folded.len() as f32;
    for v in folded.iter_mut() {
        *v -= mean;
    }
    folded
}

/// In-place 2D FFT of a `TILE x TILE` row-major array (unnormalised).
fn fft2(data: &mut [Complex<f32>], fft: &Arc<dyn Fft<f32>>) {
    fft.process(data);
    let mut t = transpose(data);
    fft.process(&mut t);
    data.copy_from_slice(&transpose(&t));
}

fn transpose(data: &[Complex<f32>]) -> Vec<Complex<f32>> {
    let mut out = vec![Complex::new(0.0, 0.0); data.len()];
    for y in 0..TILE {
        for x in 0..TILE {
            out[x * TILE + y] = data[y * TILE + x];
        }
    }
    out
}
