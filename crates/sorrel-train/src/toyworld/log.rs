//! The loss log: one CSV line per logged step (appended, so a resumed run continues the same file), and a
//! PNG plot of it for the model card.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Result, TrainError};

/// An append-only `stage,step,loss,seconds` log.
pub struct LossLog {
    path: PathBuf,
}

impl LossLog {
    /// Opens (creating with a header) the log at `path`; with `fresh`, an existing log is started over.
    pub fn open(path: &Path, fresh: bool) -> Result<Self> {
        if fresh || !path.exists() {
            std::fs::write(path, "stage,step,loss,seconds\n")
                .map_err(|e| TrainError::io(path, e))?;
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Appends one line.
    pub fn record(&mut self, stage: &str, step: u64, loss: f64, seconds: f64) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| TrainError::io(&self.path, e))?;
        writeln!(f, "{stage},{step},{loss:.6},{seconds:.1}")
            .map_err(|e| TrainError::io(&self.path, e))
    }

    /// The logged (step, loss) points of `stage`, keeping the last line for each step (a resumed run
    /// repeats the steps after its checkpoint).
    pub fn points(&self, stage: &str) -> Result<Vec<(u64, f64)>> {
        let text =
            std::fs::read_to_string(&self.path).map_err(|e| TrainError::io(&self.path, e))?;
        let mut pts: Vec<(u64, f64)> = Vec::new();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split(',').collect();
            if cols.len() < 3 || cols[0] != stage {
                continue;
            }
            if let (Ok(s), Ok(l)) = (cols[1].parse::<u64>(), cols[2].parse::<f64>()) {
                pts.retain(|p| p.0 < s);
                pts.push((s, l));
            }
        }
        Ok(pts)
    }
}

/// One line of a plot: its (step, loss) points and RGB colour.
pub type Series<'a> = (&'a [(u64, f64)], [u8; 3]);

/// Draws each series as a line of its colour on a log-scale loss axis, into a `w`x`h` RGB PNG at `path`.
/// Written by hand: a plotting crate would be a large dependency for two polylines.
pub fn plot_png(path: &Path, series: &[Series], w: usize, h: usize) -> Result<()> {
    let mut img = vec![255u8; w * h * 3];
    let (pad_l, pad_r, pad_t, pad_b) = (40usize, 10usize, 10usize, 30usize);
    let all: Vec<(u64, f64)> = series
        .iter()
        .flat_map(|s| s.0.iter().copied())
        .filter(|p| p.1 > 0.0)
        .collect();
    let max_x = all.iter().map(|p| p.0).max().unwrap_or(1).max(1) as f64;
    let (lo, hi) = all.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.1.log10()), hi.max(p.1.log10()))
    });
    let (lo, hi) = if lo < hi {
        (lo, hi)
    } else {
        (lo - 1.0, lo + 1.0)
    };
    let (pw, ph) = ((w - pad_l - pad_r) as f64, (h - pad_t - pad_b) as f64);
    let put = |x: usize, y: usize, c: [u8; 3], img: &mut Vec<u8>| {
        if x < w && y < h {
            img[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&c);
        }
    };
    // Axes, and a grey line at every power of ten of the loss.
    for x in pad_l..w - pad_r {
        put(x, h - pad_b, [0, 0, 0], &mut img);
    }
    for y in pad_t..=h - pad_b {
        put(pad_l, y, [0, 0, 0], &mut img);
    }
    for decade in lo.floor() as i32..=hi.ceil() as i32 {
        let y = pad_t as f64 + (hi - decade as f64) / (hi - lo) * ph;
        if y >= pad_t as f64 && y <= (h - pad_b) as f64 {
            for x in (pad_l..w - pad_r).step_by(3) {
                put(x, y as usize, [180, 180, 180], &mut img);
            }
        }
    }
    for (pts, colour) in series {
        let to_px = |p: &(u64, f64)| {
            (
                pad_l as f64 + p.0 as f64 / max_x * pw,
                pad_t as f64 + (hi - p.1.max(1e-12).log10()) / (hi - lo) * ph,
            )
        };
        for seg in pts.windows(2) {
            let (a, b) = (to_px(&seg[0]), to_px(&seg[1]));
            let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()) as usize).max(1);
            for i in 0..=n {
                let t = i as f64 / n as f64;
                let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
                put(x as usize, y as usize, *colour, &mut img);
                put(x as usize, y as usize + 1, *colour, &mut img);
            }
        }
    }
    crate::toyworld::export::write_png(path, &img, w, h)
}
