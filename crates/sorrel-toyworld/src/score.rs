//! Scoring generated clips against the scene their caption came from, by segmenting objects out of the
//! known palette: colour, shape, count, motion direction, object permanence (the count stays the same
//! through the clip) and, for bounces, physical plausibility (nothing sinks into the floor; between
//! bounces the height follows one parabola, i.e. constant gravity).
//!
//! Objects are 4-connected components of one palette colour of at least [`MIN_AREA`] pixels, so scattered
//! coloured noise is not an object: the scorer gives 100 % on rendered ground truth and about 0 % on noise
//! (both tested).

use serde::Serialize;

use crate::palette::Colour;
use crate::render::{floor_row, inside};
use crate::scene::{Motion, Scene, Shape, SHAPES};

/// Smallest object, in pixels.
pub const MIN_AREA: usize = 4;
/// Least share of its bounding box an object fills (a triangle fills half).
pub const MIN_FILL: f32 = 0.35;
/// Farthest a pixel may be from a palette colour (RGB distance) to count as that colour.
pub const MAX_COLOUR_DIST: f32 = 80.0;

/// One segmented object in one frame.
#[derive(Debug, Clone)]
pub(crate) struct Blob {
    pub(crate) colour: Colour,
    pub(crate) pixels: Vec<(usize, usize)>,
    pub(crate) cx: f32,
    pub(crate) cy: f32,
    /// Pixels below the floor's top row (plus one row of tolerance).
    pub(crate) sunk: usize,
}

pub(crate) fn segment(frame: &[u8], n: usize, floor: Colour) -> Vec<Blob> {
    let floor_row = floor_row(n);
    let class: Vec<Option<Colour>> = (0..n * n)
        .map(|i| {
            let px = [frame[3 * i], frame[3 * i + 1], frame[3 * i + 2]];
            let c = Colour::classify(px, MAX_COLOUR_DIST)?;
            // The floor's own colour below its top edge is floor, not an object.
            (!(i / n >= floor_row && c == floor)).then_some(c)
        })
        .collect();
    let mut seen = vec![false; n * n];
    let mut blobs = Vec::new();
    for start in 0..n * n {
        let Some(colour) = class[start] else { continue };
        if seen[start] {
            continue;
        }
        let mut stack = vec![start];
        seen[start] = true;
        let mut pixels = Vec::new();
        while let Some(i) = stack.pop() {
            let (x, y) = (i % n, i / n);
            pixels.push((x, y));
            let mut visit = |j: usize| {
                if !seen[j] && class[j] == Some(colour) {
                    seen[j] = true;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < n {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - n);
            }
            if y + 1 < n {
                visit(i + n);
            }
        }
        // Objects are compact; the snakes that noise forms are not.
        let (bw, bh) = bbox_size(&pixels);
        if pixels.len() < MIN_AREA || (pixels.len() as f32) < MIN_FILL * (bw * bh) as f32 {
            continue;
        }
        let a = pixels.len() as f32;
        let cx = pixels.iter().map(|p| p.0 as f32 + 0.5).sum::<f32>() / a;
        let cy = pixels.iter().map(|p| p.1 as f32 + 0.5).sum::<f32>() / a;
        let sunk = pixels.iter().filter(|p| p.1 > floor_row).count();
        blobs.push(Blob {
            colour,
            pixels,
            cx,
            cy,
            sunk,
        });
    }
    blobs
}

fn bbox_size(pixels: &[(usize, usize)]) -> (usize, usize) {
    let (mut x0, mut x1, mut y0, mut y1) = (usize::MAX, 0, usize::MAX, 0);
    for &(x, y) in pixels {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    (x1 + 1 - x0.min(x1), y1 + 1 - y0.min(y1))
}

/// The shape whose ideal outline overlaps the blob best (intersection over union), each shape's centre
/// and size searched around the blob's bounding box: small shapes are only a few pixels, so a fit to the
/// box alone would favour whichever shape rasterises most like a square.
pub(crate) fn classify_shape(b: &Blob) -> Shape {
    let x0 = b.pixels.iter().map(|p| p.0).min().unwrap_or(0) as f32;
    let x1 = b.pixels.iter().map(|p| p.0).max().unwrap_or(0) as f32 + 1.0;
    let y0 = b.pixels.iter().map(|p| p.1).min().unwrap_or(0) as f32;
    let y1 = b.pixels.iter().map(|p| p.1).max().unwrap_or(0) as f32 + 1.0;
    let (bx, by) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
    let half = (x1 - x0).max(y1 - y0) / 2.0;
    // Membership in a small grid around the blob (cheaper than hashing in the inner loop).
    let (gx, gy) = (
        (x0 - half - 4.0).max(0.0) as usize,
        (y0 - half - 4.0).max(0.0) as usize,
    );
    let gw = (x1 - x0 + 2.0 * half + 9.0) as usize;
    let gh = (y1 - y0 + 2.0 * half + 9.0) as usize;
    let mut grid = vec![false; gw * gh];
    for &(x, y) in &b.pixels {
        grid[(y - gy) * gw + (x - gx)] = true;
    }
    let member = |x: usize, y: usize| {
        x >= gx && y >= gy && x - gx < gw && y - gy < gh && grid[(y - gy) * gw + (x - gx)]
    };
    let iou = |shape: Shape, cx: f32, cy: f32, r: f32| {
        let (mut inter, mut union) = (0usize, 0usize);
        let lo = |v: f32| (v - r - 2.0).max(0.0) as usize;
        for y in lo(cy.min(by))..(cy.max(by) + r + 2.0) as usize {
            for x in lo(cx.min(bx))..(cx.max(bx) + r + 2.0) as usize {
                let a = inside(shape, cx, cy, r, x as f32 + 0.5, y as f32 + 0.5);
                let m = member(x, y);
                inter += (a && m) as usize;
                union += (a || m) as usize;
            }
        }
        inter as f32 / union.max(1) as f32
    };
    let best = |shape: Shape| {
        let r0 = if shape == Shape::Box {
            half / 0.9
        } else {
            half
        };
        let mut top = 0f32;
        for i in -2..=2 {
            for j in -2..=2 {
                for k in -3..=3 {
                    let (cx, cy) = (bx + 0.25 * i as f32, by + 0.25 * j as f32);
                    top = top.max(iou(shape, cx, cy, r0 * (1.0 + 0.06 * k as f32)));
                }
            }
        }
        top
    };
    SHAPES
        .into_iter()
        .map(|s| (s, best(s)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(Shape::Ball, |x| x.0)
}

/// Each frame's number of `colour` objects, and the number most frames have.
pub(crate) fn usual_count(per_frame: &[Vec<Blob>], colour: Colour) -> (Vec<usize>, usize) {
    let counts: Vec<usize> = per_frame
        .iter()
        .map(|bs| bs.iter().filter(|b| b.colour == colour).count())
        .collect();
    let mode = (0..=counts.iter().copied().max().unwrap_or(0))
        .max_by_key(|c| counts.iter().filter(|&&x| x == *c).count())
        .unwrap_or(0);
    (counts, mode)
}

/// At least 90 % of the object pixels over `per_frame` have `colour`.
pub(crate) fn mostly_colour(per_frame: &[Vec<Blob>], colour: Colour) -> bool {
    let all_px: usize = per_frame.iter().flatten().map(|b| b.pixels.len()).sum();
    let right_px: usize = per_frame
        .iter()
        .flatten()
        .filter(|b| b.colour == colour)
        .map(|b| b.pixels.len())
        .sum();
    all_px > 0 && right_px * 10 >= all_px * 9
}

/// The clip scorer's colour rule: [`mostly_colour`], with objects in at least half of the frames.
pub(crate) fn colour_holds(per_frame: &[Vec<Blob>], colour: Colour) -> bool {
    let with_objects = per_frame.iter().filter(|bs| !bs.is_empty()).count();
    mostly_colour(per_frame, colour) && with_objects * 2 >= per_frame.len().max(1)
}

/// Mean linear size (square root of area) of the `colour` objects over `per_frame`, if there is any.
pub(crate) fn mean_size(per_frame: &[Vec<Blob>], colour: Colour) -> Option<f32> {
    let sizes: Vec<f32> = per_frame
        .iter()
        .flatten()
        .filter(|b| b.colour == colour)
        .map(|b| (b.pixels.len() as f32).sqrt())
        .collect();
    (!sizes.is_empty()).then(|| sizes.iter().sum::<f32>() / sizes.len() as f32)
}

/// How one clip scored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ClipScore {
    /// The objects have the caption's colour.
    pub colour: bool,
    /// They have the caption's shape.
    pub shape: bool,
    /// There are as many as the caption says.
    pub count: bool,
    /// They move (or grow, shrink, bounce) as the caption says.
    pub direction: bool,
    /// The number of objects stays the same through the clip.
    pub permanence: bool,
    /// For bounces: no object sinks into the floor and the fall follows constant gravity.
    pub bounce: Option<bool>,
}

impl ClipScore {
    /// Everything right.
    pub fn all(&self) -> bool {
        self.colour
            && self.shape
            && self.count
            && self.direction
            && self.permanence
            && self.bounce != Some(false)
    }
}

/// Scores `frames` (RGB8, `size` x `size`) against `scene`.
pub fn score_clip(frames: &[Vec<u8>], size: usize, scene: &Scene) -> ClipScore {
    let n = size;
    let per_frame: Vec<Vec<Blob>> = frames.iter().map(|f| segment(f, n, scene.floor)).collect();
    let f = per_frame.len().max(1);

    // Objects of the caption's colour; other colours only cost the colour score.
    let (counts, mode) = usual_count(&per_frame, scene.colour);
    let steady = counts.iter().filter(|&&c| c == mode).count();
    let permanence = mode >= 1 && steady * 10 >= f * 9;
    let count = mode == scene.count;

    let colour = colour_holds(&per_frame, scene.colour);

    // Shape by vote over objects big enough to have one (a few pixels are any shape).
    // Five frames spread over the clip are plenty, and the fit is the scorer's costliest part.
    let stride = (per_frame.len() / 4).max(1);
    let votes: Vec<Shape> = per_frame
        .iter()
        .step_by(stride)
        .flatten()
        .filter(|b| b.colour == scene.colour && b.pixels.len() >= 2 * MIN_AREA)
        .map(classify_shape)
        .collect();
    let shape =
        !votes.is_empty() && votes.iter().filter(|&&s| s == scene.shape).count() * 2 > votes.len();

    // Mean position and size of the caption's objects in each frame that has any.
    let track: Vec<Option<(f32, f32, f32)>> = per_frame
        .iter()
        .map(|bs| {
            let mine: Vec<&Blob> = bs.iter().filter(|b| b.colour == scene.colour).collect();
            (!mine.is_empty()).then(|| {
                let k = mine.len() as f32;
                (
                    mine.iter().map(|b| b.cx).sum::<f32>() / k,
                    mine.iter().map(|b| b.cy).sum::<f32>() / k,
                    mine.iter().map(|b| b.pixels.len() as f32).sum::<f32>() / k,
                )
            })
        })
        .collect();
    let direction = direction_ok(&track, n as f32, scene.motion);
    let bounce = (scene.motion == Motion::Bounce).then(|| bounce_ok(&per_frame, scene, mode, f, n));
    ClipScore {
        colour,
        shape,
        count,
        direction,
        permanence,
        bounce,
    }
}

fn mean(v: &[(f32, f32, f32)]) -> Option<(f32, f32, f32)> {
    let k = v.len() as f32;
    (!v.is_empty()).then(|| {
        (
            v.iter().map(|p| p.0).sum::<f32>() / k,
            v.iter().map(|p| p.1).sum::<f32>() / k,
            v.iter().map(|p| p.2).sum::<f32>() / k,
        )
    })
}

/// A least-squares line v = mean_v + slope (t - mean_t).
struct Line {
    mean_t: f64,
    mean_v: f64,
    slope: f64,
}

impl Line {
    fn fit(pts: impl Iterator<Item = (f64, f64)> + Clone) -> Line {
        let n = pts.clone().count().max(1) as f64;
        let mean_t = pts.clone().map(|p| p.0).sum::<f64>() / n;
        let mean_v = pts.clone().map(|p| p.1).sum::<f64>() / n;
        let stt: f64 = pts.clone().map(|p| (p.0 - mean_t).powi(2)).sum();
        let stv: f64 = pts.map(|p| (p.0 - mean_t) * (p.1 - mean_v)).sum();
        let slope = if stt > 0.0 { stv / stt } else { 0.0 };
        Line {
            mean_t,
            mean_v,
            slope,
        }
    }

    fn at(&self, t: f64) -> f64 {
        self.mean_v + self.slope * (t - self.mean_t)
    }
}

/// Object area at the first and last frame with objects, from a least-squares line through all of them.
fn area_trend(track: &[Option<(f32, f32, f32)>]) -> Option<(f32, f32)> {
    let pts: Vec<(f32, f32)> = track
        .iter()
        .enumerate()
        .filter_map(|(t, p)| p.map(|p| (t as f32, p.2)))
        .collect();
    if pts.len() < 2 {
        return None;
    }
    let line = Line::fit(pts.iter().map(|&(t, a)| (t as f64, a as f64)));
    let at = |t: f32| (line.at(t as f64) as f32).max(1.0);
    Some((at(pts[0].0), at(pts[pts.len() - 1].0)))
}

fn direction_ok(track: &[Option<(f32, f32, f32)>], n: f32, motion: Motion) -> bool {
    let q = (track.len() / 4).max(1);
    let early: Vec<_> = track[..q].iter().flatten().copied().collect();
    let late: Vec<_> = track[track.len() - q..].iter().flatten().copied().collect();
    let (Some(a), Some(b)) = (mean(&early), mean(&late)) else {
        return false;
    };
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let far = 0.1 * n;
    match motion {
        Motion::Left => dx < -far && dx.abs() > 2.0 * dy.abs(),
        Motion::Right => dx > far && dx.abs() > 2.0 * dy.abs(),
        Motion::Up => dy < -far && dy.abs() > 2.0 * dx.abs(),
        Motion::Down => dy > far && dy.abs() > 2.0 * dx.abs(),
        // Areas of small shapes move in pixel-sized steps, so compare the ends of a line fitted through all
        // frames rather than a few frames at each end.
        Motion::Grow => area_trend(track).is_some_and(|(first, last)| last > 1.4 * first),
        Motion::Shrink => area_trend(track).is_some_and(|(first, last)| last < first / 1.4),
        Motion::Bounce => {
            // Falls a good way, then comes back up at least once.
            let ys: Vec<f32> = track.iter().flatten().map(|p| p.1).collect();
            let Some(low) = ys
                .iter()
                .enumerate()
                .max_by(|x, y| x.1.total_cmp(y.1))
                .map(|x| x.0)
            else {
                return false;
            };
            let first_contact = (1..ys.len().saturating_sub(1))
                .find(|&i| ys[i] >= ys[i - 1] && ys[i] > ys[i + 1])
                .unwrap_or(low);
            let fell = ys[first_contact] - ys[0] > 0.15 * n;
            let rose = ys[first_contact..]
                .iter()
                .any(|&y| ys[first_contact] - y > 0.04 * n);
            fell && rose
        }
    }
}

/// No object below the floor's top, and each object's height between bounces fits a parabola opening
/// downward in the image (constant gravity), with similar accelerations throughout.
pub(crate) fn bounce_ok(
    per_frame: &[Vec<Blob>],
    scene: &Scene,
    mode: usize,
    frames: usize,
    n: usize,
) -> bool {
    if per_frame
        .iter()
        .flatten()
        .any(|b| b.colour == scene.colour && b.sunk > 0)
    {
        return false;
    }
    if mode == 0 {
        return false;
    }
    // Objects bounce in place, so sorting by x keeps their identities.
    let mut tracks: Vec<Vec<(f32, f32)>> = vec![Vec::new(); mode];
    for (t, bs) in per_frame.iter().enumerate() {
        let mut mine: Vec<&Blob> = bs.iter().filter(|b| b.colour == scene.colour).collect();
        if mine.len() != mode {
            continue;
        }
        mine.sort_by(|a, b| a.cx.total_cmp(&b.cx));
        for (k, b) in mine.iter().enumerate() {
            tracks[k].push((t as f32, b.cy));
        }
    }
    // Constant gravity: every segment between bounces is a parabola with the same curvature. One shared
    // acceleration is fitted over all segments of all objects (each segment keeping its own velocity and
    // position), which is far steadier than per-segment fits on a few pixel-quantised points.
    let mut segments: Vec<&[(f32, f32)]> = Vec::new();
    for tr in &tracks {
        // Contacts: local maxima of y (lowest points on screen).
        let contacts: Vec<usize> = (1..tr.len().saturating_sub(1))
            .filter(|&i| tr[i].1 >= tr[i - 1].1 && tr[i].1 > tr[i + 1].1)
            .collect();
        let mut bounds = vec![None];
        bounds.extend(contacts.iter().map(|&c| Some(c)));
        bounds.push(None);
        for w in bounds.windows(2) {
            let lo = w[0].map_or(0, |c| c + 1);
            let hi = w[1].unwrap_or(tr.len());
            if hi >= lo + 4 {
                segments.push(&tr[lo..hi]);
            }
        }
    }
    let Some((accel, rms)) = shared_parabola(&segments) else {
        return false;
    };
    // Gravity must be real (at least half the weakest the world uses, in pixels per frame squared) and
    // must explain the motion to within pixel quantisation.
    let steps = (frames.max(2) - 1) as f32;
    let g_min = 0.5 * crate::scene::MIN_GRAVITY * n as f32 / (steps * steps);
    accel >= g_min && rms <= 0.5
}

/// Fits y = (a/2) t^2 + b_k t + c_k to every segment k with one shared `a`; returns (a, RMS residual).
fn shared_parabola(segments: &[&[(f32, f32)]]) -> Option<(f32, f32)> {
    // For a fixed a each segment's line is a least-squares fit, so only the parts of y and t^2 that no
    // line explains matter: a = sum <ry, rq> / sum <rq, rq>.
    let resid = |seg: &[(f32, f32)], f: &dyn Fn(f64, f64) -> f64| -> Vec<f64> {
        let pts: Vec<(f64, f64)> = seg
            .iter()
            .map(|p| (p.0 as f64, f(p.0 as f64, p.1 as f64)))
            .collect();
        let line = Line::fit(pts.iter().copied());
        pts.iter().map(|&(t, v)| v - line.at(t)).collect()
    };
    let parts: Vec<(Vec<f64>, Vec<f64>)> = segments
        .iter()
        .map(|seg| (resid(seg, &|_, y| y), resid(seg, &|t, _| 0.5 * t * t)))
        .collect();
    let (mut num, mut den, mut count) = (0f64, 0f64, 0usize);
    for (ry, rq) in &parts {
        num += ry.iter().zip(rq).map(|(a, b)| a * b).sum::<f64>();
        den += rq.iter().map(|b| b * b).sum::<f64>();
        count += ry.len();
    }
    if den <= 0.0 || count == 0 {
        return None;
    }
    let a = num / den;
    let rss: f64 = parts
        .iter()
        .map(|(ry, rq)| {
            ry.iter()
                .zip(rq)
                .map(|(y, q)| (y - a * q).powi(2))
                .sum::<f64>()
        })
        .sum();
    Some((a as f32, (rss / count as f64).sqrt() as f32))
}

/// Percentages over a set of clips.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Clips scored.
    pub clips: usize,
    /// Percent with the right colour.
    pub colour: f64,
    /// Percent with the right shape.
    pub shape: f64,
    /// Percent with the right count.
    pub count: f64,
    /// Percent moving as captioned.
    pub direction: f64,
    /// Percent whose object count stays constant.
    pub permanence: f64,
    /// Percent of bounce clips that are physically plausible (NaN when there were none).
    pub bounce: f64,
    /// Percent right on every measure.
    pub all: f64,
}

impl Summary {
    /// Summarises scores.
    pub fn of(scores: &[ClipScore]) -> Self {
        let pct = |f: &dyn Fn(&ClipScore) -> bool| {
            100.0 * scores.iter().filter(|s| f(s)).count() as f64 / scores.len().max(1) as f64
        };
        let bounces: Vec<bool> = scores.iter().filter_map(|s| s.bounce).collect();
        Summary {
            clips: scores.len(),
            colour: pct(&|s| s.colour),
            shape: pct(&|s| s.shape),
            count: pct(&|s| s.count),
            direction: pct(&|s| s.direction),
            permanence: pct(&|s| s.permanence),
            bounce: if bounces.is_empty() {
                f64::NAN
            } else {
                100.0 * bounces.iter().filter(|&&b| b).count() as f64 / bounces.len() as f64
            },
            all: pct(&|s| s.all()),
        }
    }
}
