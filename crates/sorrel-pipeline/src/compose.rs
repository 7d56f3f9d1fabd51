//! Extension and connecting clips as VACE compositions: a window of frames whose known part comes from the
//! clips (mask black) and whose rest is generated (mask white, filled with grey), and the splice of the
//! generated frames back between the clips, so the output is the whole clip written once.

use candle_core::Tensor;
use sorrel_core::{Error, Result};

use crate::request::{Conditioning, Picture};
use crate::vace::{solid, FILL_GRAY};

/// How many frames of a clip the window keeps as context, at most: the first latent frame and two more
/// (2 x 4 + 1 for Wan's 4x time compression), enough to carry motion across the join.
pub fn context_frames(tc: usize) -> usize {
    2 * tc + 1
}

/// A window to generate and how its frames join the inputs.
#[derive(Debug, Clone)]
pub struct Splice {
    /// The composition to generate (its frame count is [`Splice::frames`]).
    pub conditioning: Conditioning,
    /// Frames in the window (1 + a multiple of the VAE's time compression).
    pub frames: usize,
    /// The input frames before the generated ones, as given.
    before: Vec<Picture>,
    /// The input frames after them.
    after: Vec<Picture>,
    /// Which window frames are new.
    new: std::ops::Range<usize>,
}

/// The smallest `tc * k + 1` at least `n`.
fn window_len(n: usize, tc: usize) -> usize {
    (n.max(1) - 1).div_ceil(tc) * tc + 1
}

fn check_sizes(clips: &[&[Picture]]) -> Result<(usize, usize)> {
    let first = clips
        .iter()
        .flat_map(|c| c.first())
        .next()
        .ok_or_else(|| Error::invalid("the clip has no frames"))?;
    for c in clips {
        if let Some(p) = c
            .iter()
            .find(|p| (p.width, p.height) != (first.width, first.height))
        {
            return Err(Error::invalid(format!(
                "the clips' frames differ in size ({}x{} and {}x{}): give clips of one size",
                first.width, first.height, p.width, p.height
            )));
        }
    }
    Ok((first.width, first.height))
}

impl Splice {
    /// Continues `clip` by `new` frames (after it, or before it when `backward`), the window fitted to
    /// `size` (the request's width and height).
    pub fn extend(
        clip: &[Picture],
        new: usize,
        backward: bool,
        tc: usize,
        size: (usize, usize),
    ) -> Result<Self> {
        if clip.is_empty() {
            return Err(Error::invalid("the clip to extend has no frames"));
        }
        if new == 0 {
            return Err(Error::invalid("extend by at least 1 frame (--frames N)"));
        }
        check_sizes(&[clip])?;
        let want_ctx = clip.len().min(context_frames(tc));
        let frames = window_len(want_ctx + new, tc);
        // Rounding up the window leaves room: fill it with more context while the clip has some.
        let ctx = (frames - new).min(clip.len());
        let extra = frames - new - ctx;
        let (w, h) = size;
        let known: Vec<Picture> = if backward {
            clip[..ctx].to_vec()
        } else {
            clip[clip.len() - ctx..].to_vec()
        };
        let fill = vec![solid(w, h, FILL_GRAY); new + extra];
        let (black, white) = (solid(w, h, 0), solid(w, h, 255));
        let (video, mask, new_range, before, after) = if backward {
            (
                [fill, known].concat(),
                [vec![white; new + extra], vec![black; ctx]].concat(),
                extra..extra + new,
                vec![],
                clip.to_vec(),
            )
        } else {
            (
                [known, fill].concat(),
                [vec![black; ctx], vec![white; new + extra]].concat(),
                ctx..ctx + new,
                clip.to_vec(),
                vec![],
            )
        };
        Ok(Self {
            conditioning: Conditioning::Compose {
                video: Some(video),
                mask: Some(mask),
                references: vec![],
            },
            frames,
            before,
            after,
            new: new_range,
        })
    }

    /// Joins clip `a` to clip `b` with `new` generated frames between them.
    pub fn connect(
        a: &[Picture],
        b: &[Picture],
        new: usize,
        tc: usize,
        size: (usize, usize),
    ) -> Result<Self> {
        if a.is_empty() || b.is_empty() {
            return Err(Error::invalid(
                "both clips to connect need at least one frame",
            ));
        }
        if new == 0 {
            return Err(Error::invalid(
                "connect with at least 1 new frame (--frames N)",
            ));
        }
        check_sizes(&[a, b])?;
        let ctx = context_frames(tc);
        let (mut ca, mut cb) = (a.len().min(ctx), b.len().min(ctx));
        let frames = window_len(ca + new + cb, tc);
        // Room left by rounding goes to more context, from the first clip first.
        let mut room = frames - (ca + new + cb);
        let more_a = room.min(a.len() - ca);
        ca += more_a;
        room -= more_a;
        let more_b = room.min(b.len() - cb);
        cb += more_b;
        room -= more_b;
        if room > 0 {
            return Err(Error::invalid(format!(
                "the clips are too short for a window of {frames} frames: connect with {} new frames \
                 instead, or give longer clips",
                new + room
            )));
        }
        let (w, h) = size;
        let (black, white) = (solid(w, h, 0), solid(w, h, 255));
        let video = [
            a[a.len() - ca..].to_vec(),
            vec![solid(w, h, FILL_GRAY); new],
            b[..cb].to_vec(),
        ]
        .concat();
        let mask = [vec![black.clone(); ca], vec![white; new], vec![black; cb]].concat();
        Ok(Self {
            conditioning: Conditioning::Compose {
                video: Some(video),
                mask: Some(mask),
                references: vec![],
            },
            frames,
            before: a.to_vec(),
            after: b.to_vec(),
            new: ca..ca + new,
        })
    }

    /// New frames this splice adds.
    pub fn new_frames(&self) -> usize {
        self.new.len()
    }

    /// The new frames alone, out of the generated window (F, H, W, 3).
    pub fn new_part(&self, generated: &Tensor) -> Result<Tensor> {
        Ok(generated.narrow(0, self.new.start, self.new.len())?)
    }

    /// The whole clip: the inputs as given around the window's new frames. `generated`: (F, H, W, 3) in [0, 1]
    /// at the size the inputs have (their frames are kept as they are, not regenerated).
    pub fn assemble(&self, generated: &Tensor) -> Result<Tensor> {
        let (_, h, w, _) = generated.dims4()?;
        let as_tensor = |ps: &[Picture]| -> Result<Option<Tensor>> {
            if ps.is_empty() {
                return Ok(None);
            }
            let mut v = Vec::with_capacity(ps.len() * h * w * 3);
            for p in ps {
                if (p.width, p.height) != (w, h) {
                    return Err(Error::invalid(format!(
                        "the clip is {}x{} but the video is generated at {w}x{h}: ask for --size {}x{} so \
                         the two join",
                        p.width, p.height, p.width, p.height
                    )));
                }
                v.extend(p.rgb.iter().map(|&x| x as f32 / 255.0));
            }
            Ok(Some(Tensor::from_vec(
                v,
                (ps.len(), h, w, 3),
                generated.device(),
            )?))
        };
        let new = generated.narrow(0, self.new.start, self.new.len())?;
        let parts: Vec<Tensor> = [as_tensor(&self.before)?, Some(new), as_tensor(&self.after)?]
            .into_iter()
            .flatten()
            .collect();
        Ok(Tensor::cat(&parts, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(n: usize, v0: u8) -> Vec<Picture> {
        (0..n).map(|i| solid(4, 2, v0 + i as u8)).collect()
    }

    fn mask_of(s: &Splice) -> Vec<u8> {
        match &s.conditioning {
            Conditioning::Compose { mask: Some(m), .. } => m.iter().map(|p| p.rgb[0]).collect(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn extension_windows_keep_context_and_round_to_the_vae() {
        // 20 frames, add 8: 9 context frames + 8 = 17 = 4*4+1, no rounding.
        let s = Splice::extend(&clip(20, 0), 8, false, 4, (4, 2)).unwrap();
        assert_eq!(s.frames, 17);
        assert_eq!(mask_of(&s), [vec![0; 9], vec![255; 8]].concat());
        assert_eq!(s.new, 9..17);
        // 3 frames, add 4: window 7 -> 9, the clip has only 3, so 2 extra frames are generated and dropped.
        let s = Splice::extend(&clip(3, 0), 4, false, 4, (4, 2)).unwrap();
        assert_eq!((s.frames, s.new.clone()), (9, 3..7));
        // Backward: the context is the clip's start, at the end of the window.
        let s = Splice::extend(&clip(20, 0), 8, true, 4, (4, 2)).unwrap();
        assert_eq!(mask_of(&s), [vec![255; 8], vec![0; 9]].concat());
        assert_eq!(s.new, 0..8);
        let gen = Tensor::zeros(
            (17, 2, 4, 3),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        assert_eq!(
            s.assemble(&gen).unwrap().dim(0).unwrap(),
            28,
            "8 new + the 20 given"
        );
    }

    #[test]
    fn connecting_puts_the_new_frames_between_the_clips() {
        let s = Splice::connect(&clip(12, 0), &clip(12, 100), 6, 4, (4, 2)).unwrap();
        // 9 + 6 + 9 = 24 -> 25: one more context frame from the first clip.
        assert_eq!(s.frames, 25);
        assert_eq!(
            mask_of(&s),
            [vec![0; 10], vec![255; 6], vec![0; 9]].concat()
        );
        let gen = Tensor::zeros(
            (25, 2, 4, 3),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        assert_eq!(s.assemble(&gen).unwrap().dim(0).unwrap(), 12 + 6 + 12);
        // One-frame clips cannot fill the rounded window.
        let e = Splice::connect(&clip(1, 0), &clip(1, 0), 2, 4, (4, 2)).unwrap_err();
        assert!(e.to_string().contains("too short"), "{e}");
    }
}
