//! Scoring long clips (rollouts of a minute) window by window against the scene's ongoing world: in every
//! window the objects keep the caption's count and colour and the ground truth's size, bounces stay
//! physically plausible, and where the model's generation windows meet, objects carry on (same count,
//! size and colour; no jump larger than their motion explains).

use serde::Serialize;

use crate::palette::Colour;
use crate::render::{render_span, WorldSize};
use crate::scene::{Motion, Scene};
use crate::score::{bounce_ok, mean_size, mostly_colour, segment, Blob};

/// Largest relative difference in linear size (square root of area) between a window's objects and the
/// ground truth's that still counts as the same size: the acceptance's 20 %.
pub const SIZE_TOLERANCE: f32 = 0.2;

/// How one long clip held up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LongScore {
    /// Windows scored (`world.frames` frames each, from the clip's start).
    pub windows: usize,
    /// Windows whose objects have the caption's count.
    pub count_windows: usize,
    /// Windows whose objects have the caption's colour.
    pub colour_windows: usize,
    /// Windows whose objects have the ground truth's size, within [`SIZE_TOLERANCE`].
    pub size_windows: usize,
    /// For bounces: windows where the motion is physically plausible (no sinking; a resting object or
    /// falls under one constant gravity), and windows scored.
    pub plausible_windows: Option<(usize, usize)>,
    /// For scenes that travel (left, right, up, down): windows where the objects move as the world's do
    /// (see [`MIN_TRAVEL`]), and windows where the world's objects travel that far. Without it, a model that
    /// froze its objects would keep count, colour and size, and a frozen bounce would read as resting.
    pub moving_windows: Option<(usize, usize)>,
    /// Boundaries between generation windows where the objects carry on, and boundaries scored.
    pub continuous: (usize, usize),
}

/// The net travel (pixels, along the scene's axis, across a window) from which a window counts for
/// [`LongScore::moving_windows`]: the objects must then travel the same way at least half as far.
pub const MIN_TRAVEL: f32 = 2.0;

impl LongScore {
    /// Count, colour and size held in every window: the clip kept its objects for its whole length.
    pub fn kept(&self) -> bool {
        self.windows > 0
            && self.count_windows == self.windows
            && self.colour_windows == self.windows
            && self.size_windows == self.windows
    }
}

/// The caption's objects in one frame.
fn mine<'a>(blobs: &'a [Blob], scene: &Scene) -> Vec<&'a Blob> {
    blobs.iter().filter(|b| b.colour == scene.colour).collect()
}

/// Scores `frames` (RGB8, `world.size` square) as a clip of `scene` from its start, in windows of
/// `world.frames`; `boundaries` are the frames where a generation window began after the first (a rollout
/// of 8-frame windows continuing from 4 frames: 8, 12, 16, ...).
pub fn score_long(
    frames: &[Vec<u8>],
    world: WorldSize,
    scene: &Scene,
    boundaries: &[usize],
) -> LongScore {
    let n = world.size;
    let per_frame: Vec<Vec<Blob>> = frames.iter().map(|f| segment(f, n, scene.floor)).collect();
    let w = world.frames.max(1);
    let windows = per_frame.len() / w;
    let mut score = LongScore {
        windows,
        count_windows: 0,
        colour_windows: 0,
        size_windows: 0,
        plausible_windows: (scene.motion == Motion::Bounce).then_some((0, 0)),
        moving_windows: travel_axis(scene.motion).map(|_| (0, 0)),
        continuous: (0, 0),
    };
    for k in 0..windows {
        let win = &per_frame[k * w..(k + 1) * w];
        let truth = render_span(scene, world, k * w, w);
        let truth: Vec<Vec<Blob>> = truth
            .frames
            .iter()
            .map(|f| segment(f, n, scene.floor))
            .collect();
        // Count: the most common number of the caption's objects in the window, as the clip scorer's
        // permanence takes it (two touching objects merge for a frame or two in the ground truth too).
        let counts: Vec<usize> = win.iter().map(|bs| mine(bs, scene).len()).collect();
        let mode = (0..=counts.iter().copied().max().unwrap_or(0))
            .max_by_key(|c| counts.iter().filter(|&&x| x == *c).count())
            .unwrap_or(0);
        score.count_windows += usize::from(mode == scene.count);
        score.colour_windows += usize::from(mostly_colour(win, scene.colour));
        if let (Some(a), Some(b)) = (
            mean_size(win, scene.colour),
            mean_size(&truth, scene.colour),
        ) {
            score.size_windows += usize::from((a - b).abs() <= SIZE_TOLERANCE * b);
        }
        if let Some((ok, all)) = &mut score.plausible_windows {
            *all += 1;
            *ok += usize::from(plausible(win, scene, mode, world));
        }
        if let (Some((ok, all)), Some(axis)) =
            (&mut score.moving_windows, travel_axis(scene.motion))
        {
            if let Some(want) = travel(&truth, scene, axis).filter(|t| t.abs() >= MIN_TRAVEL) {
                *all += 1;
                let got = travel(win, scene, axis);
                *ok += usize::from(got.is_some_and(|g| g * want.signum() >= 0.5 * want.abs()));
            }
        }
    }
    for &b in boundaries
        .iter()
        .filter(|&&b| b >= 2 && b + 1 < per_frame.len())
    {
        score.continuous.1 += 1;
        score.continuous.0 += usize::from(carries_on(&per_frame[b - 2..b + 2], scene.colour));
    }
    score
}

/// How the frames joining two clips held up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct JoinScore {
    /// The joining frames hold the caption's number of objects.
    pub count: bool,
    /// Of the caption's colour.
    pub colour: bool,
    /// Of the ground truth's size, within [`SIZE_TOLERANCE`].
    pub size: bool,
    /// Both seams carry on (the first clip into the new frames, the new frames into the second clip).
    pub seams: bool,
}

impl JoinScore {
    /// The joining frames match both clips' objects.
    pub fn matches(&self) -> bool {
        self.count && self.colour && self.size && self.seams
    }
}

/// Scores the `new` frames at `first_new` of `clip` (the first clip, the joining frames, the second clip;
/// at least two frames on each side), as frames `first_new ..` of `scene`'s ongoing world.
pub fn score_join(
    clip: &[Vec<u8>],
    world: WorldSize,
    scene: &Scene,
    first_new: usize,
    new: usize,
) -> JoinScore {
    let n = world.size;
    let per_frame: Vec<Vec<Blob>> = clip.iter().map(|f| segment(f, n, scene.floor)).collect();
    let joining = &per_frame[first_new..first_new + new];
    let truth: Vec<Vec<Blob>> = render_span(scene, world, first_new, new)
        .frames
        .iter()
        .map(|f| segment(f, n, scene.floor))
        .collect();
    let count = joining
        .iter()
        .filter(|bs| mine(bs, scene).len() == scene.count)
        .count()
        * 2
        > joining.len();
    let size = match (
        mean_size(joining, scene.colour),
        mean_size(&truth, scene.colour),
    ) {
        (Some(a), Some(b)) => (a - b).abs() <= SIZE_TOLERANCE * b,
        _ => false,
    };
    let end = first_new + new;
    let seams = first_new >= 2
        && end + 2 <= per_frame.len()
        && carries_on(&per_frame[first_new - 2..first_new + 2], scene.colour)
        && carries_on(&per_frame[end - 2..end + 2], scene.colour);
    JoinScore {
        count,
        colour: mostly_colour(joining, scene.colour),
        size,
        seams,
    }
}

/// The axis a travelling motion moves along (0: x, 1: y); `None` for motions in place.
fn travel_axis(motion: Motion) -> Option<usize> {
    match motion {
        Motion::Left | Motion::Right => Some(0),
        Motion::Up | Motion::Down => Some(1),
        Motion::Bounce | Motion::Grow | Motion::Shrink => None,
    }
}

/// The caption's objects' net travel along `axis` across a window: the mean centre over its last two
/// frames less that over its first two (pixels); `None` when either end shows none of them.
fn travel(win: &[Vec<Blob>], scene: &Scene, axis: usize) -> Option<f32> {
    let centre = |frames: &[Vec<Blob>]| {
        let c: Vec<f32> = frames
            .iter()
            .flat_map(|bs| mine(bs, scene))
            .map(|b| if axis == 0 { b.cx } else { b.cy })
            .collect();
        (!c.is_empty()).then(|| c.iter().sum::<f32>() / c.len() as f32)
    };
    let k = win.len().min(2);
    Some(centre(&win[win.len() - k..])? - centre(&win[..k])?)
}

/// A bounce window is plausible when nothing sinks into the floor and the objects either rest (move less
/// than a pixel) or fall under one constant gravity (the clip scorer's parabola test).
fn plausible(win: &[Vec<Blob>], scene: &Scene, mode: usize, world: WorldSize) -> bool {
    if win
        .iter()
        .flat_map(|bs| mine(bs, scene))
        .any(|b| b.sunk > 0)
    {
        return false;
    }
    let ys: Vec<f32> = win
        .iter()
        .filter(|bs| mine(bs, scene).len() == mode)
        .flat_map(|bs| mine(bs, scene).into_iter().map(|b| b.cy))
        .collect();
    let resting = {
        // Per object (sorted by x, as bounces stay in place): its height range over the window.
        let mut tracks: Vec<Vec<f32>> = vec![Vec::new(); mode];
        for bs in win {
            let mut m = mine(bs, scene);
            if m.len() != mode {
                continue;
            }
            m.sort_by(|a, b| a.cx.total_cmp(&b.cx));
            for (i, b) in m.iter().enumerate() {
                tracks[i].push(b.cy);
            }
        }
        !ys.is_empty()
            && tracks.iter().all(|t| {
                let lo = t.iter().copied().fold(f32::INFINITY, f32::min);
                let hi = t.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                hi - lo <= 1.0
            })
    };
    resting || bounce_ok(win, scene, mode, world.frames, world.size)
}

/// Whether the caption's objects carry on from the two frames before a boundary to the two after it: the
/// same number, the same sizes within [`SIZE_TOLERANCE`], and no object jumping further across the
/// boundary than twice the largest step it took on either side, plus a pixel.
pub(crate) fn carries_on(four: &[Vec<Blob>], colour: Colour) -> bool {
    let objs: Vec<Vec<&Blob>> = four
        .iter()
        .map(|bs| bs.iter().filter(|b| b.colour == colour).collect())
        .collect();
    let k = objs[1].len();
    if k == 0 || objs.iter().any(|o| o.len() != k) {
        return false;
    }
    let sorted = |o: &[&Blob]| {
        let mut v: Vec<(f32, f32, f32)> = o
            .iter()
            .map(|b| (b.cx, b.cy, (b.pixels.len() as f32).sqrt()))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        v
    };
    let s: Vec<Vec<(f32, f32, f32)>> = objs.iter().map(|o| sorted(o)).collect();
    let step = |a: &[(f32, f32, f32)], b: &[(f32, f32, f32)]| -> Vec<f32> {
        a.iter()
            .zip(b)
            .map(|(p, q)| (p.0 - q.0).hypot(p.1 - q.1))
            .collect()
    };
    let (before, across, after) = (step(&s[0], &s[1]), step(&s[1], &s[2]), step(&s[2], &s[3]));
    let sizes_hold = s[1]
        .iter()
        .zip(&s[2])
        .all(|(p, q)| (p.2 - q.2).abs() <= SIZE_TOLERANCE * p.2.max(q.2));
    sizes_hold && (0..k).all(|i| across[i] <= 2.0 * before[i].max(after[i]) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scene::Split;

    const WORLD: WorldSize = WorldSize {
        size: 32,
        frames: 8,
    };

    #[test]
    fn ground_truth_minutes_keep_their_objects_and_noise_does_not() {
        let boundaries: Vec<usize> = (8..480).step_by(4).collect();
        let (mut kept, mut plausible, mut bounce_windows, mut cont, mut bounds) = (0, 0, 0, 0, 0);
        let scenes = 40;
        for seed in 0..scenes {
            let scene = Scene::sample(9000 + seed, Split::Train);
            let clip = render_span(&scene, WORLD, 0, 480);
            let s = score_long(&clip.frames, WORLD, &scene, &boundaries);
            assert_eq!(s.windows, 60);
            kept += usize::from(s.kept());
            if let Some((ok, all)) = s.plausible_windows {
                plausible += ok;
                bounce_windows += all;
            }
            cont += s.continuous.0;
            bounds += s.continuous.1;
            // Frames of another scene, or shuffled in time, are not this scene's minute.
            let other = Scene::sample(19_000 + seed, Split::Train);
            if (other.colour, other.count) != (scene.colour, scene.count) {
                let wrong = render_span(&other, WORLD, 0, 480);
                assert!(!score_long(&wrong.frames, WORLD, &scene, &boundaries).kept());
            }
        }
        assert!(kept * 100 >= scenes as usize * 95, "{kept}/{scenes} kept");
        assert!(
            bounce_windows > 0 && plausible * 100 >= bounce_windows * 95,
            "{plausible}/{bounce_windows}"
        );
        assert!(cont * 100 >= bounds * 98, "{cont}/{bounds} continuous");
        let noise: Vec<Vec<u8>> = (0..480u32)
            .map(|t| {
                (0..32 * 32 * 3)
                    .map(|i| ((i as u32 * 7919 + t * 104_729) % 251) as u8)
                    .collect()
            })
            .collect();
        let scene = Scene::sample(9000, Split::Train);
        assert!(!score_long(&noise, WORLD, &scene, &boundaries).kept());
    }

    #[test]
    fn the_ground_truth_joins_and_a_wrong_join_does_not() {
        let (mut ok, total) = (0, 40);
        for seed in 0..total {
            let scene = Scene::sample(9100 + seed, Split::Train);
            let clip = render_span(&scene, WORLD, 0, 20).frames;
            ok += usize::from(score_join(&clip, WORLD, &scene, 8, 4).matches());
            // Blank joining frames lose the objects.
            let mut blank = clip.clone();
            let empty = render_span(
                &Scene {
                    starts: vec![],
                    ..scene.clone()
                },
                WORLD,
                8,
                4,
            )
            .frames;
            blank.splice(8..12, empty);
            assert!(!score_join(&blank, WORLD, &scene, 8, 4).matches());
        }
        assert!(ok * 100 >= total as usize * 95, "{ok}/{total}");
    }

    #[test]
    fn a_jump_at_a_boundary_is_not_continuity() {
        // A scene that slides sideways, whose second window restarts it: the objects jump back.
        let scene = (9000..)
            .map(|seed| Scene::sample(seed, Split::Train))
            .find(|s| matches!(s.motion, Motion::Left | Motion::Right))
            .unwrap();
        let whole = render_span(&scene, WORLD, 0, 16).frames;
        assert_eq!(score_long(&whole, WORLD, &scene, &[8]).continuous, (1, 1));
        let mut clip = whole;
        clip.splice(8.., render_span(&scene, WORLD, 0, 8).frames);
        assert_eq!(
            score_long(&clip, WORLD, &scene, &[8]).continuous,
            (0, 1),
            "{scene:?}"
        );
    }

    #[test]
    fn travelling_objects_must_keep_travelling() {
        let (mut ok, mut all, mut travelling) = (0, 0, 0);
        for seed in 0..40 {
            let scene = Scene::sample(9200 + seed, Split::Train);
            let clip = render_span(&scene, WORLD, 0, 480).frames;
            let s = score_long(&clip, WORLD, &scene, &[]);
            match travel_axis(scene.motion) {
                None => assert_eq!(s.moving_windows, None),
                Some(_) => {
                    travelling += 1;
                    let (o, a) = s.moving_windows.unwrap();
                    (ok, all) = (ok + o, all + a);
                    // The same objects frozen in their first frame keep count, colour and size, but
                    // travel nowhere.
                    let frozen = vec![clip[0].clone(); 480];
                    let f = score_long(&frozen, WORLD, &scene, &[]);
                    assert_eq!(f.moving_windows, Some((0, a)), "{scene:?}");
                }
            }
        }
        assert!(
            travelling > 5 && all > 0,
            "{travelling} scenes, {all} windows"
        );
        assert!(
            ok * 100 >= all * 95,
            "the world itself moves in {ok} of {all}"
        );
    }
}
