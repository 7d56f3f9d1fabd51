//! Drawing a scene: square frames, hard-edged shapes sampled at pixel centres, the floor's rows below
//! [`FLOOR_TOP`](crate::scene::FLOOR_TOP).

use crate::palette::BACKGROUND;
use crate::scene::{Scene, Shape};

/// Frame size and length of rendered clips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorldSize {
    /// Width and height in pixels.
    pub size: usize,
    /// Frames per clip.
    pub frames: usize,
}

impl Default for WorldSize {
    /// 32x32, 17 frames (a 4k+1 length, as the video VAE needs).
    fn default() -> Self {
        Self {
            size: 32,
            frames: 17,
        }
    }
}

/// A rendered clip: RGB8 frames, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    /// Width and height in pixels.
    pub size: usize,
    /// One `size * size * 3` buffer per frame.
    pub frames: Vec<Vec<u8>>,
}

/// Whether pixel centre (`px`, `py`) lies in `shape` centred at (`cx`, `cy`) with half-extent `r` (pixels).
pub fn inside(shape: Shape, cx: f32, cy: f32, r: f32, px: f32, py: f32) -> bool {
    let (dx, dy) = (px - cx, py - cy);
    match shape {
        Shape::Ball => dx * dx + dy * dy <= r * r,
        Shape::Box => dx.abs() <= 0.9 * r && dy.abs() <= 0.9 * r,
        // Apex at the top, base of width 2r at the bottom.
        Shape::Triangle => dy.abs() <= r && dx.abs() <= (dy + r) / 2.0,
    }
}

/// The first row of the floor in a frame of `size` pixels.
pub fn floor_row(size: usize) -> usize {
    (crate::scene::FLOOR_TOP * size as f32).ceil() as usize
}

/// Renders `scene` at `world` size: its first clip, `world.frames` frames.
pub fn render(scene: &Scene, world: WorldSize) -> Clip {
    render_span(scene, world, 0, world.frames)
}

/// Renders frames `first .. first + count` of `scene`'s ongoing world, at the frame rate of `world`'s clips
/// (frame `i` is clip time `i / (world.frames - 1)`), so any window of a minute-long scene has a ground truth.
pub fn render_span(scene: &Scene, world: WorldSize, first: usize, count: usize) -> Clip {
    let n = world.size;
    let s = n as f32;
    let floor = floor_row(n);
    let frames = (first..first + count)
        .map(|t| {
            let objects = scene.objects_at(clip_time(world, t));
            let mut rgb = Vec::with_capacity(n * n * 3);
            for y in 0..n {
                for x in 0..n {
                    let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                    let hit = objects
                        .iter()
                        .any(|&(cx, cy, r)| inside(scene.shape, cx * s, cy * s, r * s, px, py));
                    let c = if hit {
                        scene.colour.rgb()
                    } else if y >= floor {
                        scene.floor.rgb()
                    } else {
                        BACKGROUND
                    };
                    rgb.extend_from_slice(&c);
                }
            }
            rgb
        })
        .collect();
    Clip { size: n, frames }
}

/// Clip time of frame `t`: 0 at the first frame, 1 at the last frame of a `world.frames` clip.
pub fn clip_time(world: WorldSize, t: usize) -> f32 {
    if world.frames > 1 {
        t as f32 / (world.frames - 1) as f32
    } else {
        0.0
    }
}
