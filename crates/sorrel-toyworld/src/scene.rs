//! What a clip shows: one group of 1–3 identical objects (shape, colour, size) doing one motion above a
//! coloured floor, with positions and speeds drawn from the seed. Coordinates are fractions of the frame
//! (x right, y down), so one scene renders at any resolution.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::palette::{Colour, COLOURS};

/// Object shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Shape {
    /// A disc.
    Ball,
    /// A square.
    Box,
    /// An upward-pointing triangle.
    Triangle,
}

/// Every shape.
pub const SHAPES: [Shape; 3] = [Shape::Ball, Shape::Box, Shape::Triangle];

/// Object sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Size {
    /// Half-extent 0.09 of the frame width.
    Small,
    /// Half-extent 0.14 of the frame width.
    Big,
}

impl Size {
    /// Half-extent as a fraction of the frame width.
    pub fn radius(self) -> f32 {
        match self {
            Size::Small => 0.09,
            Size::Big => 0.14,
        }
    }
}

/// What the objects do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Motion {
    /// Along the floor to the left (balls roll, the others slide).
    Left,
    /// Along the floor to the right.
    Right,
    /// Upward through the air.
    Up,
    /// Downward through the air.
    Down,
    /// Dropped from rest: falls under gravity and bounces on the floor, losing energy each time.
    Bounce,
    /// Swells to 1.5x its size in place.
    Grow,
    /// Shrinks to 1/1.5 of its size in place.
    Shrink,
}

/// Every motion.
pub const MOTIONS: [Motion; 7] = [
    Motion::Left,
    Motion::Right,
    Motion::Up,
    Motion::Down,
    Motion::Bounce,
    Motion::Grow,
    Motion::Shrink,
];

/// Top of the floor, as a fraction of the frame height: the floor fills the rows below.
pub const FLOOR_TOP: f32 = 0.84;

/// Weakest and strongest gravity of bouncing scenes, in frame heights per clip length squared.
pub const MIN_GRAVITY: f32 = 2.2;
/// See [`MIN_GRAVITY`].
pub const MAX_GRAVITY: f32 = 3.2;

/// Least space between neighbouring objects, as a fraction of the frame width.
pub const GAP: f32 = 0.07;

/// Fraction of speed kept at each bounce.
pub const RESTITUTION: f32 = 0.75;

/// Draws the starting height of one object.
type StartHeight = Box<dyn Fn(&mut StdRng) -> f32>;

/// One generated scene.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    /// How many objects, 1 to 3.
    pub count: usize,
    /// Their colour.
    pub colour: Colour,
    /// Their shape.
    pub shape: Shape,
    /// Their size.
    pub size: Size,
    /// What they do.
    pub motion: Motion,
    /// The floor's colour (never the objects' colour, so an object sinking into the floor shows).
    pub floor: Colour,
    /// Starting centres (x, y), one per object.
    pub starts: Vec<(f32, f32)>,
    /// Distance covered over the clip for Left/Right/Up/Down (fraction of the frame), or the
    /// gravitational acceleration for Bounce (fraction of the frame height per clip-length squared).
    pub amount: f32,
}

/// Which combinations a scene may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Split {
    /// Everything except the held-out pairs.
    Train,
    /// Only scenes with a held-out pair: yellow boxes, or three objects shrinking.
    HeldOut,
}

impl Split {
    /// The split a scene belongs to.
    pub fn of(scene: &Scene) -> Split {
        let held_colour_shape = scene.colour == Colour::Yellow && scene.shape == Shape::Box;
        let held_count_motion = scene.count == 3 && scene.motion == Motion::Shrink;
        if held_colour_shape || held_count_motion {
            Split::HeldOut
        } else {
            Split::Train
        }
    }
}

impl Scene {
    /// The scene for `seed` in `split`: deterministic, different seeds give different scenes.
    pub fn sample(seed: u64, split: Split) -> Scene {
        // Salted so that the world's scenes and the pipeline's noise from the same seed are unrelated.
        let mut rng = StdRng::seed_from_u64(seed ^ 0x0070_7977_6f72_6c64);
        loop {
            if let Some(s) = Self::draw(&mut rng) {
                if Split::of(&s) == split {
                    return s;
                }
            }
        }
    }

    /// A random scene, or `None` when the objects would not fit side by side.
    fn draw(rng: &mut StdRng) -> Option<Scene> {
        let count = rng.random_range(1..=3usize);
        let colour = COLOURS[rng.random_range(0..COLOURS.len())];
        let shape = crate::scene::SHAPES[rng.random_range(0..3)];
        let size = if rng.random_bool(0.5) {
            Size::Small
        } else {
            Size::Big
        };
        let motion = MOTIONS[rng.random_range(0..MOTIONS.len())];
        let floor = loop {
            let f = COLOURS[rng.random_range(0..COLOURS.len())];
            if f != colour {
                break f;
            }
        };
        // Room each object needs: its largest half-extent over the clip plus a gap.
        let grow = if motion == Motion::Grow { 1.5 } else { 1.0 };
        let r = size.radius() * grow;
        let ground = FLOOR_TOP - size.radius();
        let rs = size.radius();
        let (amount, ys): (f32, StartHeight) = match motion {
            Motion::Left | Motion::Right => {
                (rng.random_range(0.3..0.42), Box::new(move |_| ground))
            }
            Motion::Up => (
                rng.random_range(0.3..0.38),
                Box::new(move |rng: &mut StdRng| rng.random_range(0.66f32..0.72).min(ground)),
            ),
            Motion::Down => (
                rng.random_range(0.3..0.38),
                Box::new(move |rng: &mut StdRng| rs + 0.02 + rng.random_range(0.0f32..0.06)),
            ),
            Motion::Bounce => (
                rng.random_range(MIN_GRAVITY..MAX_GRAVITY),
                Box::new(move |rng: &mut StdRng| rs + 0.02 + rng.random_range(0.0f32..0.08)),
            ),
            Motion::Grow | Motion::Shrink => (
                0.0,
                Box::new(move |rng: &mut StdRng| rng.random_range(0.4f32..0.55)),
            ),
        };
        // Objects side by side in equal lanes; a horizontal mover keeps its lane's order and stays in frame.
        let (lo, hi) = match motion {
            Motion::Left => (r + amount, 1.0 - r),
            Motion::Right => (r, 1.0 - r - amount),
            _ => (r, 1.0 - r),
        };
        let lane = (hi - lo) / count as f32;
        // At least 0.07 of the frame (2 pixels at 32x32) between neighbours, so they never merge.
        if lane < 2.0 * r + GAP {
            return None;
        }
        let starts = (0..count)
            .map(|i| {
                let jitter = (lane - 2.0 * r - GAP).max(0.0);
                let x = lo + lane * i as f32 + lane / 2.0 + rng.random_range(-0.5..=0.5) * jitter;
                (x, ys(rng))
            })
            .collect();
        Some(Scene {
            count,
            colour,
            shape,
            size,
            motion,
            floor,
            starts,
            amount,
        })
    }

    /// Centre and half-extent of every object at clip time `u` (0 at the first frame, 1 at the last frame
    /// of a clip of the world's length). The world goes on past 1: movers along the floor slide back and
    /// forth between the side walls (the group turns when its outer object touches a wall), movers up and
    /// down turn at the top of the frame and at the floor, bouncers keep bouncing until they rest, and
    /// growers and shrinkers hold their final size. Over [0, 1] nothing touches a wall, so the first clip is
    /// the motion the caption names.
    pub fn objects_at(&self, u: f32) -> Vec<(f32, f32, f32)> {
        let r = self.size.radius();
        let ground = FLOOR_TOP - r;
        let grown = u.clamp(0.0, 1.0);
        // The group moves as one, so it keeps its spacing: its offset folds between the walls.
        let (xmin, xmax) = self
            .starts
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &(x, _)| (a.min(x), b.max(x)));
        let along = |sign: f32| fold(sign * self.amount * u, r - xmin, 1.0 - r - xmax);
        self.starts
            .iter()
            .map(|&(x, y)| match self.motion {
                Motion::Left => (x + along(-1.0), y, r),
                Motion::Right => (x + along(1.0), y, r),
                Motion::Up => (x, y + fold(-self.amount * u, r - y, ground - y), r),
                Motion::Down => (x, y + fold(self.amount * u, r - y, ground - y), r),
                Motion::Grow => (x, y, r * (1.0 + 0.5 * grown)),
                Motion::Shrink => (x, y, r / (1.0 + 0.5 * grown)),
                Motion::Bounce => (x, bounce_y(y, ground, self.amount, u), r),
            })
            .collect()
    }

    /// The objects' velocities (d/du of their centres) at clip time `u`, by a central difference: what
    /// continuity across a rollout's windows is checked against.
    pub fn velocities_at(&self, u: f32) -> Vec<(f32, f32)> {
        let h = 1e-3;
        let (a, b) = (self.objects_at(u - h), self.objects_at(u + h));
        a.iter()
            .zip(&b)
            .map(|(p, q)| ((q.0 - p.0) / (2.0 * h), (q.1 - p.1) / (2.0 * h)))
            .collect()
    }
}

/// `d` folded into [`lo`, `hi`] (with `lo` <= 0 <= `hi`) as a point moving at constant speed bounces
/// between two walls: a triangle wave.
pub fn fold(d: f32, lo: f32, hi: f32) -> f32 {
    let span = hi - lo;
    if span <= 1e-6 {
        return lo.max(0.0).min(hi);
    }
    let p = (d - lo).rem_euclid(2.0 * span);
    lo + if p <= span { p } else { 2.0 * span - p }
}

/// Height at time `u` of an object dropped from rest at `y0` under gravity `g` that bounces at `ground`
/// keeping [`RESTITUTION`] of its speed: integrated exactly between bounces, so it never passes the ground.
pub fn bounce_y(y0: f32, ground: f32, g: f32, u: f32) -> f32 {
    let (mut y, mut v, mut t) = (y0, 0.0f32, 0.0f32);
    for _ in 0..64 {
        // Time to reach the ground from (y, v): solve y + v*s + g*s^2/2 = ground.
        let d = ground - y;
        let s = (-v + (v * v + 2.0 * g * d).max(0.0).sqrt()) / g;
        if t + s >= u {
            let s = u - t;
            return y + v * s + 0.5 * g * s * s;
        }
        t += s;
        y = ground;
        v = -(v + g * s) * RESTITUTION;
        if v.abs() < 1e-4 {
            return ground;
        }
    }
    ground
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_are_deterministic_and_respect_the_split() {
        assert_eq!(
            Scene::sample(5, Split::Train),
            Scene::sample(5, Split::Train)
        );
        assert_ne!(
            Scene::sample(5, Split::Train),
            Scene::sample(6, Split::Train)
        );
        for seed in 0..2000 {
            assert_eq!(Split::of(&Scene::sample(seed, Split::Train)), Split::Train);
            assert_eq!(
                Split::of(&Scene::sample(seed, Split::HeldOut)),
                Split::HeldOut
            );
        }
    }

    #[test]
    fn every_object_stays_in_frame_and_above_the_floor() {
        for seed in 0..1000 {
            let s = Scene::sample(
                seed,
                if seed % 4 == 0 {
                    Split::HeldOut
                } else {
                    Split::Train
                },
            );
            assert_ne!(s.floor, s.colour);
            for i in 0..=32 {
                let objs = s.objects_at(i as f32 / 32.0);
                for (k, &(x, y, r)) in objs.iter().enumerate() {
                    assert!(x - r >= -1e-4 && x + r <= 1.0 + 1e-4, "{s:?} x {x}");
                    assert!(y - r >= -1e-4 && y + r <= FLOOR_TOP + 1e-4, "{s:?} y {y}");
                    for &(x2, _, r2) in &objs[k + 1..] {
                        assert!(
                            (x - x2).abs() >= r + r2 + GAP - 1e-4,
                            "objects too close: {s:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_world_goes_on_inside_the_frame_for_a_minute() {
        for seed in 0..300 {
            let s = Scene::sample(seed, Split::Train);
            // A minute at 8 fps of an 8-frame clip length: u up to 480 / 7.
            for i in 0..=480 {
                let u = i as f32 / 7.0;
                let objs = s.objects_at(u);
                for (k, &(x, y, r)) in objs.iter().enumerate() {
                    assert!(x - r >= -1e-3 && x + r <= 1.0 + 1e-3, "{s:?} x {x} at {u}");
                    assert!(
                        y - r >= -1e-3 && y + r <= FLOOR_TOP + 1e-3,
                        "{s:?} y {y} at {u}"
                    );
                    for &(x2, _, r2) in &objs[k + 1..] {
                        assert!((x - x2).abs() >= r + r2 + GAP - 1e-3, "too close: {s:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn movers_turn_at_the_walls() {
        let s = Scene {
            count: 1,
            colour: crate::Colour::Red,
            shape: Shape::Ball,
            size: Size::Small,
            motion: Motion::Right,
            floor: crate::Colour::Blue,
            starts: vec![(0.2, FLOOR_TOP - 0.09)],
            amount: 0.4,
        };
        // Right wall: x = 1 - r = 0.91, reached after 0.71 / 0.4 = 1.775 clips; then back left.
        assert!((s.objects_at(1.0)[0].0 - 0.6).abs() < 1e-5);
        assert!((s.objects_at(1.775)[0].0 - 0.91).abs() < 1e-4);
        assert!((s.objects_at(2.0)[0].0 - 0.82).abs() < 1e-4);
        assert!(s.velocities_at(1.0)[0].0 > 0.39 && s.velocities_at(2.0)[0].0 < -0.39);
        assert!((fold(-0.3, -0.2, 0.5) + 0.1).abs() < 1e-6);
        assert!((fold(0.7, -0.2, 0.5) - 0.3).abs() < 1e-6);
    }

    #[test]
    fn bounces_lose_height() {
        let peaks: Vec<f32> = (0..400)
            .map(|i| bounce_y(0.1, 0.7, 30.0, i as f32 / 400.0))
            .collect::<Vec<_>>()
            .windows(3)
            .filter(|w| w[1] < w[0] && w[1] < w[2])
            .map(|w| w[1])
            .collect();
        assert!(peaks.len() >= 2, "{peaks:?}");
        assert!(
            peaks.windows(2).all(|p| p[1] > p[0]),
            "each apex is lower (larger y): {peaks:?}"
        );
    }
}
