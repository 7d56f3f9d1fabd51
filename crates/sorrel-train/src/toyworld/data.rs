//! Training data from the procedural world: nothing on disk, every batch a function of (seed, step), so a
//! resumed run sees the same data as an uninterrupted one.

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sorrel_toyworld::{caption_styled, render, CaptionStyle, Scene, Split, WorldSize};

use crate::Result;

/// Scene seeds of the training clips start here; evaluation uses [`EVAL_SEEDS`] upward, never seen in training.
pub const TRAIN_SEEDS: u64 = 0;
/// First scene seed of evaluation prompts.
pub const EVAL_SEEDS: u64 = 1_000_000_000;

/// A generator for step `step` of stage `stage` of a run with `seed`.
pub fn step_rng(seed: u64, stage: u64, step: u64) -> StdRng {
    let mix = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(stage.wrapping_mul(0xC2B2_AE3D_27D4_EB4F))
        .wrapping_add(step);
    StdRng::seed_from_u64(mix)
}

/// RGB8 frames as f32 in [-1, 1], (3, F, H, W).
pub fn frames_to_tensor(frames: &[Vec<u8>], size: usize, device: &Device) -> Result<Tensor> {
    let f = frames.len();
    let mut data = vec![0f32; 3 * f * size * size];
    for (t, frame) in frames.iter().enumerate() {
        for (i, px) in frame.chunks_exact(3).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                data[(c * f + t) * size * size + i] = v as f32 / 127.5 - 1.0;
            }
        }
    }
    Ok(Tensor::from_vec(data, (3, f, size, size), device)?)
}

/// A batch of single frames for the VAE: images (B, 3, 1, H, W) and per-pixel loss weights (B, 1, 1, H, W),
/// 10 on object pixels and 1 elsewhere (objects are a small share of the frame but all that matters).
pub fn vae_batch(
    rng: &mut StdRng,
    batch: usize,
    world: WorldSize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let n = world.size;
    let mut images = Vec::with_capacity(batch);
    let mut weights = Vec::with_capacity(batch * n * n);
    for _ in 0..batch {
        let scene = Scene::sample(rng.random(), Split::Train);
        let clip = render(&scene, world);
        let frame = &clip.frames[rng.random_range(0..world.frames)];
        let obj = scene.colour.rgb();
        weights.extend(
            frame
                .chunks_exact(3)
                .map(|p| if p == obj { 10f32 } else { 1.0 }),
        );
        images.push(frames_to_tensor(std::slice::from_ref(frame), n, device)?);
    }
    let x = Tensor::stack(&images, 0)?;
    let w = Tensor::from_vec(weights, (batch, 1, 1, n, n), device)?;
    Ok((x, w))
}

/// The scene of training clip `i`.
pub fn train_scene(i: usize) -> Scene {
    Scene::sample(TRAIN_SEEDS + i as u64, Split::Train)
}

/// The first frame of training scene `i`'s encoded span: 0 for even `i` (the clip its caption describes
/// from the start), else drawn up to `start_max` from the scene's index, so resumed runs agree.
pub fn span_start(i: usize, start_max: usize) -> usize {
    if i.is_multiple_of(2) || start_max == 0 {
        0
    } else {
        step_rng(i as u64, 9, 0).random_range(0..=start_max)
    }
}

/// A caption of `scene`: "" with probability `dropout`, else a paraphrase with probability `paraphrase`
/// (naming no floor with probability `floorless`), else the grammar in a random style.
pub fn train_caption(
    rng: &mut StdRng,
    scene: &Scene,
    dropout: f64,
    paraphrase: f64,
    floorless: f64,
) -> String {
    if rng.random_bool(dropout) {
        String::new()
    } else if paraphrase > 0.0 && rng.random_bool(paraphrase) {
        // A share of 0 draws nothing, so runs recorded before floorless captions existed repeat exactly.
        if floorless > 0.0 && rng.random_bool(floorless) {
            sorrel_toyworld::paraphrase_without_floor(scene, rng)
        } else {
            sorrel_toyworld::paraphrase(scene, rng)
        }
    } else {
        caption_styled(scene, CaptionStyle::nth(rng.random_range(0..8)))
    }
}

/// Standard normal values from `rng`, as a tensor of `shape`.
pub fn normal(rng: &mut StdRng, shape: &[usize], device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let d = rand_distr::StandardNormal;
    let v: Vec<f32> = (0..n).map(|_| rng.sample(d)).collect();
    Ok(Tensor::from_vec(v, shape, device)?)
}

/// How one transformer training clip is cut and noised.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipNoise {
    /// Whether the clip must be a scene's first clip (text-to-video and image-to-video start where the
    /// caption starts); otherwise it may be cut anywhere in a span.
    pub from_start: bool,
    /// First frame of the clip within its span (drawn once the span is known: see [`ClipNoise::place`]).
    pub offset: usize,
    /// Noise level of each frame, in [0, 1].
    pub frame_sigma: Vec<f32>,
    /// Noise level each 2-frame token slice is told (the transformer patches 2 frames).
    pub slice_sigma: Vec<f32>,
    /// 1 for frames the loss sees (the ones to generate), 0 for given frames.
    pub loss: Vec<f32>,
}

impl ClipNoise {
    /// Draws the clip's offset in a span of `span` frames for a clip of `frames`.
    pub fn place(&mut self, rng: &mut StdRng, span: usize, frames: usize) {
        self.offset = if self.from_start {
            0
        } else {
            rng.random_range(0..=span - frames)
        };
    }
}

/// Draws how a clip of `frames` frames is noised. With probability `1 - context_share` it is text-to-video
/// (every frame at one logit-normal level); otherwise some frames are given (at level 0, or at a small level
/// half the time, so a rollout's own slightly wrong frames are familiar context): the first frame
/// (image-to-video), the first or last 1 to 3 slices (extension forward or backward, and rollouts), or the
/// first and last slices (connecting two clips), drawn in proportion to `kinds` (in that order). With
/// probability `slice_share` the slices to generate are then noised independently, each at its own
/// logit-normal level (diffusion forcing proper), so the model must learn how objects move from slices
/// that are less noisy than the one it makes. Every drawn level is then moved by `shift` as the sampler's
/// schedule is ([`shift_level`]; 1 leaves it).
pub fn clip_noise(
    rng: &mut StdRng,
    frames: usize,
    context_share: f64,
    kinds: [f64; 4],
    slice_share: f64,
    shift: f64,
) -> ClipNoise {
    let s = shift_level(logit_normal(rng), shift);
    let slices = frames / 2;
    let mut frame_sigma = vec![s; frames];
    let mut slice_sigma = vec![s; slices];
    let mut loss = vec![1f32; frames];
    let mut from_start = true;
    if context_share > 0.0 && slices >= 2 && rng.random_bool(context_share) {
        let given = if rng.random_bool(0.5) {
            0.0
        } else {
            rng.random_range(0.0..0.1f32)
        };
        let kind = pick_kind(rng, kinds);
        let mut give_slices = |range: std::ops::Range<usize>| {
            for k in range {
                slice_sigma[k] = given;
                for f in [2 * k, 2 * k + 1] {
                    frame_sigma[f] = given;
                    loss[f] = 0.0;
                }
            }
        };
        match kind {
            // Image to video: only frame 0 is given; its slice is told the level of frame 1.
            0 => {
                frame_sigma[0] = given;
                loss[0] = 0.0;
            }
            // Extension forward (and every rollout window after the first).
            1 => {
                from_start = false;
                let c = rng.random_range(1..slices);
                give_slices(0..c);
            }
            // Extension backward.
            2 => {
                from_start = false;
                let c = rng.random_range(1..slices);
                give_slices(slices - c..slices);
            }
            // Connecting: the first and the last slice given.
            _ => {
                from_start = false;
                give_slices(0..1);
                give_slices(slices - 1..slices);
            }
        }
    }
    // A share of 0 draws nothing, so runs recorded before independent slices existed repeat exactly.
    if slice_share > 0.0 && slices >= 2 && rng.random_bool(slice_share) {
        for k in 0..slices {
            // Slices with a given frame keep their level: the image-to-video slice is told the level of
            // its second frame, which is drawn here like any other slice to generate.
            if loss[2 * k + 1] == 0.0 {
                continue;
            }
            let v = shift_level(logit_normal(rng), shift);
            slice_sigma[k] = v;
            for f in [2 * k, 2 * k + 1] {
                if loss[f] != 0.0 {
                    frame_sigma[f] = v;
                }
            }
        }
    }
    ClipNoise {
        from_start,
        offset: 0,
        frame_sigma,
        slice_sigma,
        loss,
    }
}

/// A noise level in (0, 1): the logistic of a standard normal draw (SD3's logit-normal sampling).
fn logit_normal(rng: &mut StdRng) -> f32 {
    let u: f32 = rng.sample(rand_distr::StandardNormal);
    1.0 / (1.0 + (-u).exp())
}

/// `s` moved towards 1 as FlowMatch's `shift` moves the sampler's levels (the schedulers' own
/// [`sorrel_schedulers::shift_sigma_f32`]).
/// The sampler (shift 3, 25 steps) takes 7 of its steps above level 0.9, where the objects' places are
/// decided, but unshifted logit-normal training puts 1.4 % of its clips there; the same shift in training
/// puts 14 % there. A shift of 1 returns `s` unchanged, so recipes recorded before it existed repeat exactly.
pub fn shift_level(s: f32, shift: f64) -> f32 {
    if shift == 1.0 {
        return s;
    }
    sorrel_schedulers::shift_sigma_f32(s, shift as f32)
}

/// Draws one of the four ways of giving frames in proportion to `kinds`. Equal weights take the one
/// uniform draw the sixth version's runs took, so their recipes still reproduce them.
fn pick_kind(rng: &mut StdRng, kinds: [f64; 4]) -> u32 {
    if kinds.iter().all(|&w| w == kinds[0]) {
        return rng.random_range(0..4u32);
    }
    let mut u = rng.random_range(0.0..kinds.iter().sum::<f64>());
    for (k, &w) in kinds.iter().enumerate() {
        if u < w {
            return k as u32;
        }
        u -= w;
    }
    3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_clip_is_drawn_and_given_frames_are_out_of_the_loss() {
        let mut rng = StdRng::seed_from_u64(0);
        let mut kinds = std::collections::HashSet::new();
        for _ in 0..2000 {
            let c = clip_noise(&mut rng, 8, 0.5, [1.0; 4], 0.0, 1.0);
            let given: Vec<usize> = (0..8).filter(|&i| c.loss[i] == 0.0).collect();
            for &i in &given {
                assert!(c.frame_sigma[i] < 0.1);
            }
            assert!(given.len() < 8, "something is always generated");
            for k in 0..4 {
                // A slice's told level is its second frame's.
                assert_eq!(c.slice_sigma[k], c.frame_sigma[2 * k + 1]);
            }
            kinds.insert(given);
        }
        for want in [
            vec![],
            vec![0],
            vec![0, 1],
            vec![0, 1, 2, 3, 4, 5],
            vec![6, 7],
            vec![0, 1, 6, 7],
        ] {
            assert!(kinds.contains(&want), "{want:?} never drawn");
        }
        let mut none = StdRng::seed_from_u64(0);
        assert!(
            (0..100).all(|_| clip_noise(&mut none, 8, 0.0, [1.0; 4], 0.0, 1.0)
                .loss
                .iter()
                .all(|&l| l == 1.0))
        );
    }

    #[test]
    fn shifted_levels_move_towards_noise_and_no_shift_changes_nothing() {
        assert_eq!(shift_level(0.3, 1.0), 0.3);
        assert_eq!(shift_level(0.0, 3.0), 0.0);
        assert!((shift_level(1.0, 3.0) - 1.0).abs() < 1e-6);
        assert!((shift_level(0.5, 3.0) - 0.75).abs() < 1e-6);
        // Above 0.9: P(N > ln 3) = 13.6 % with shift 3, P(N > ln 9) = 1.4 % without.
        let mut rng = StdRng::seed_from_u64(3);
        let high = |shift: f64, rng: &mut StdRng| {
            (0..20_000)
                .filter(|_| clip_noise(rng, 8, 0.0, [1.0; 4], 0.0, shift).frame_sigma[0] > 0.9)
                .count() as f64
                / 20_000.0
        };
        let (with, without) = (high(3.0, &mut rng), high(1.0, &mut rng));
        assert!((with - 0.136).abs() < 0.01, "{with}");
        assert!((without - 0.014).abs() < 0.004, "{without}");
        // Independent slice levels are shifted too.
        let mut a = StdRng::seed_from_u64(5);
        let mut b = StdRng::seed_from_u64(5);
        for _ in 0..200 {
            let plain = clip_noise(&mut a, 8, 0.5, [1.0; 4], 1.0, 1.0);
            let shifted = clip_noise(&mut b, 8, 0.5, [1.0; 4], 1.0, 3.0);
            for (p, q) in plain.slice_sigma.iter().zip(&shifted.slice_sigma) {
                assert!((shift_level(*p, 3.0) - q).abs() < 1e-6 || (p == q && *p < 0.1));
            }
        }
    }

    #[test]
    fn independent_slices_get_their_own_levels_and_given_frames_stay_given() {
        let (mut a, mut b) = (StdRng::seed_from_u64(3), StdRng::seed_from_u64(3));
        let mut differing = 0;
        for _ in 0..500 {
            let together = clip_noise(&mut a, 8, 0.5, [1.0; 4], 0.0, 1.0);
            let apart = clip_noise(&mut b, 8, 0.5, [1.0; 4], 1.0, 1.0);
            // The same clip kind and given frames either way; only the levels of generated slices change.
            assert_eq!(together.loss, apart.loss);
            for f in 0..8 {
                if apart.loss[f] == 0.0 {
                    assert_eq!(apart.frame_sigma[f], together.frame_sigma[f]);
                }
            }
            for k in 0..4 {
                assert_eq!(apart.slice_sigma[k], apart.frame_sigma[2 * k + 1]);
                if apart.loss[2 * k] != 0.0 {
                    assert_eq!(apart.frame_sigma[2 * k], apart.frame_sigma[2 * k + 1]);
                }
            }
            let generated: Vec<f32> = (0..4)
                .filter(|&k| apart.loss[2 * k + 1] != 0.0)
                .map(|k| apart.slice_sigma[k])
                .collect();
            differing += usize::from(generated.windows(2).any(|w| w[0] != w[1]));
            // Keep the two generators in step: the independent draws took extra numbers.
            b = StdRng::seed_from_u64(a.random());
            a = b.clone();
        }
        assert!(
            differing > 400,
            "{differing} of 500 clips had slices at different levels"
        );
    }

    #[test]
    fn given_frames_are_drawn_in_proportion_to_the_kinds() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut forward = 0;
        let mut first_only = 0;
        let n = 4000;
        for _ in 0..n {
            let c = clip_noise(&mut rng, 8, 1.0, [0.0, 3.0, 0.0, 1.0], 0.0, 1.0);
            first_only += usize::from(c.loss[0] == 0.0 && c.loss[1] == 1.0);
            // Forward extension gives the first slices and nothing at the end.
            forward += usize::from(c.loss[0] == 0.0 && c.loss[7] == 1.0);
        }
        assert_eq!(first_only, 0, "a weight of 0 is never drawn");
        assert!(
            (forward as f64 / n as f64 - 0.75).abs() < 0.03,
            "{forward}/{n}"
        );
    }

    #[test]
    fn a_share_of_paraphrases_names_no_floor() {
        let mut rng = StdRng::seed_from_u64(2);
        let n = 2000;
        let names_floor = |c: &str| {
            let c = c.to_lowercase();
            c.contains("floor") || c.contains("ground")
        };
        let mut floorless = 0;
        for i in 0..n {
            let scene = Scene::sample(i, Split::Train);
            let c = train_caption(&mut rng, &scene, 0.0, 1.0, 0.25);
            assert!(c.to_lowercase().contains(scene.colour.word()), "{c}");
            floorless += usize::from(!names_floor(&c));
        }
        assert!(
            (floorless as f64 / n as f64 - 0.25).abs() < 0.03,
            "{floorless}/{n}"
        );
        for i in 0..200 {
            let c = train_caption(&mut rng, &Scene::sample(i, Split::Train), 0.0, 0.5, 0.0);
            assert!(
                names_floor(&c),
                "a share of 0 keeps the floor in every caption: {c}"
            );
        }
    }
}
