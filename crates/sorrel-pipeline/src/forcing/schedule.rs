//! Diffusion forcing's plan: which timestep every latent frame sees at every iteration of a window (the step
//! matrix), and how a long video is cut into overlapping windows. Follows diffusers 0.42.1's
//! `SkyReelsV2DiffusionForcingPipeline` (`generate_timestep_matrix`, `prepare_latents`, `__call__`).

use sorrel_core::{Error, Result};

/// One window's schedule: row `i` is iteration `i`.
#[derive(Debug, Clone, PartialEq)]
pub struct StepMatrix {
    /// The timestep each latent frame sees (rows x frames).
    pub timesteps: Vec<Vec<f32>>,
    /// Whether each frame takes a sampler step at this iteration (rows x frames).
    pub update: Vec<Vec<bool>>,
    /// The frames the transformer sees at this iteration, `start..end`.
    pub intervals: Vec<(usize, usize)>,
}

/// The step matrix of `frames` latent frames denoised along `template` (the sampler's timesteps) in causal
/// blocks of `block` frames, at most `base` frames in view at once. Block `i + 1` trails block `i` by
/// `ar_step` iterations (0: all together); the first `pre_ready` frames are given clean and never updated.
pub fn step_matrix(
    frames: usize,
    template: &[f32],
    base: usize,
    ar_step: usize,
    pre_ready: usize,
    block: usize,
) -> Result<StepMatrix> {
    if block == 0 || frames == 0 || base == 0 {
        return Err(Error::invalid(
            "diffusion forcing needs at least one frame, one frame in view and a causal block of at least 1"
                .to_string(),
        ));
    }
    let iterations = template.len() + 1;
    let blocks = frames / block;
    let base_blocks = base / block;
    if base_blocks == 0 {
        return Err(Error::invalid(format!(
            "a window of {base} latent frames holds no whole causal block of {block}"
        )));
    }
    if base_blocks < blocks {
        let min = template.len().div_ceil(base_blocks);
        if ar_step < min {
            return Err(Error::invalid(format!(
                "--ar-step {ar_step} is too small: with {} steps and {base_blocks} blocks in view it must be at \
                 least {min}",
                template.len()
            )));
        }
    }
    // 999 before the first step (pure noise) and 0 after the last (clean); diffusers truncates to integers.
    let steps: Vec<f32> = std::iter::once(999.0)
        .chain(template.iter().map(|t| t.trunc()))
        .chain(std::iter::once(0.0))
        .collect();
    let mut pre = vec![0usize; blocks];
    for p in pre.iter_mut().take(pre_ready / block) {
        *p = iterations;
    }
    let (mut rows, mut masks) = (Vec::new(), Vec::new());
    while pre.iter().any(|&p| p + 1 < iterations) {
        let mut row = vec![0i64; blocks];
        for i in 0..blocks {
            row[i] = if i == 0 || pre[i - 1] + 1 >= iterations {
                pre[i] as i64 + 1
            } else {
                row[i - 1] - ar_step as i64
            };
        }
        let row: Vec<usize> = row
            .iter()
            .map(|&r| r.clamp(0, iterations as i64) as usize)
            .collect();
        masks.push(
            row.iter()
                .zip(&pre)
                .map(|(&r, &p)| r != p && r != iterations)
                .collect::<Vec<bool>>(),
        );
        rows.push(row.clone());
        pre = row;
    }
    let mut terminal = base_blocks;
    let mut intervals = Vec::with_capacity(masks.len());
    for m in &masks {
        if terminal < blocks && m[terminal] {
            terminal += 1;
        }
        intervals.push((terminal.saturating_sub(base_blocks), terminal));
    }
    // Blocks to frames.
    let expand = |v: &[usize]| -> Vec<usize> {
        v.iter()
            .flat_map(|&x| std::iter::repeat_n(x, block))
            .collect()
    };
    Ok(StepMatrix {
        timesteps: rows
            .iter()
            .map(|r| expand(r).iter().map(|&i| steps[i]).collect())
            .collect(),
        update: masks
            .iter()
            .map(|m| {
                m.iter()
                    .flat_map(|&x| std::iter::repeat_n(x, block))
                    .collect()
            })
            .collect(),
        intervals: intervals
            .into_iter()
            .map(|(s, e)| (s * block, e * block))
            .collect(),
    })
}

/// How a video of `frames` latent frames is made window by window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Latent frames of the whole video.
    pub frames: usize,
    /// Latent frames per window.
    pub window: usize,
    /// Latent frames each window after the first repeats from the video so far.
    pub overlap: usize,
}

impl Windows {
    /// One window when the video fits in one, else windows of `window` latent frames overlapping by
    /// `overlap` (diffusers' long-video branch).
    pub fn plan(frames: usize, window: usize, overlap: usize) -> Result<Self> {
        if frames <= window {
            return Ok(Self {
                frames,
                window: frames,
                overlap: 0,
            });
        }
        if overlap == 0 || overlap >= window {
            return Err(Error::invalid(format!(
                "windows of {window} latent frames overlapping by {overlap} cannot make progress: the overlap must \
                 be at least 1 and less than the window"
            )));
        }
        Ok(Self {
            frames,
            window,
            overlap,
        })
    }

    /// Whether the video takes more than one window.
    pub fn is_long(&self) -> bool {
        self.frames > self.window
    }

    /// How many windows.
    pub fn count(&self) -> usize {
        if !self.is_long() {
            return 1;
        }
        1 + (self.frames - self.window - 1) / (self.window - self.overlap) + 1
    }

    /// Latent frames of window `k` (its repeated frames included).
    pub fn frames_of(&self, k: usize) -> usize {
        if k == 0 {
            return self.window;
        }
        let finished = k * (self.window - self.overlap) + self.overlap;
        (self.frames - finished + self.overlap).min(self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_videos_take_overlapping_windows() {
        // 41 frames in windows of 17 overlapping by 9: 11, 5 and 3 latent frames.
        let w = Windows::plan(11, 5, 3).unwrap();
        assert_eq!(w.count(), 4);
        assert_eq!(
            (0..4).map(|k| w.frames_of(k)).collect::<Vec<_>>(),
            [5, 5, 5, 5]
        );
        // Frames made: 5 + 2 + 2 + 2 = 11.
        let w = Windows::plan(12, 5, 3).unwrap();
        assert_eq!(w.count(), 5);
        assert_eq!(w.frames_of(4), 4);
        assert_eq!(Windows::plan(5, 5, 3).unwrap().count(), 1);
        assert!(Windows::plan(11, 5, 5).is_err());
    }
}
