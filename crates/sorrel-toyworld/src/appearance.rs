//! Whether a film's recurring characters look the same in every shot they appear in: each appearance is
//! segmented as the clip scorer does; a character is kept in an appearance when it has its look's colour
//! and count ("two small blue boxes") and the same shape and size (within 20 %) as in its other
//! appearances. Whether that shape is the one its look names is reported apart: a character drawn as a
//! box in every shot is kept, though its look says ball.

use serde::Serialize;

use crate::palette::{Colour, COLOURS};
use crate::scene::{Shape, Size};
use crate::score::{classify_shape, colour_holds, mean_size, segment, usual_count, MIN_AREA};
use crate::window_score::SIZE_TOLERANCE;

/// A character's look, read from the words of a phrase such as "a small red ball" or "2 tiny blue cubes".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Look {
    /// How many objects.
    pub count: usize,
    /// Their colour.
    pub colour: Colour,
    /// Their shape.
    pub shape: Shape,
    /// Their size word, when the phrase has one.
    pub size: Option<Size>,
}

impl Look {
    /// Reads a look from a phrase in the toy world's words (and their paraphrases); `None` when the phrase
    /// names no colour or no shape.
    pub fn parse(phrase: &str) -> Option<Look> {
        let mut count = 1;
        let (mut colour, mut shape, mut size) = (None, None, None);
        for w in phrase.split_whitespace() {
            let w = w
                .trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase();
            match w.as_str() {
                "two" | "2" => count = 2,
                "three" | "3" => count = 3,
                "small" | "little" | "tiny" => size = Some(Size::Small),
                "big" | "large" => size = Some(Size::Big),
                "ball" | "balls" | "sphere" | "spheres" => shape = Some(Shape::Ball),
                "box" | "boxes" | "cube" | "cubes" => shape = Some(Shape::Box),
                "triangle" | "triangles" => shape = Some(Shape::Triangle),
                other => {
                    if let Some(c) = COLOURS.iter().find(|c| c.word() == other) {
                        colour = Some(*c);
                    }
                }
            }
        }
        Some(Look {
            count,
            colour: colour?,
            shape: shape?,
            size,
        })
    }
}

/// The floor colour a prompt names ("... on a green floor"), if any.
pub fn floor_of(prompt: &str) -> Option<Colour> {
    let words: Vec<String> = prompt
        .split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .collect();
    let at = words.iter().position(|w| w == "floor" || w == "ground")?;
    COLOURS
        .iter()
        .find(|c| at > 0 && words[at - 1] == c.word())
        .copied()
}

/// How a character looked in one shot.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Appearance {
    /// Nine tenths of the object pixels have the look's colour, in at least half of the frames.
    pub colour: bool,
    /// The shape objects big enough to have one were most often read as (`None`: none, or a tie).
    pub shape: Option<Shape>,
    /// That shape is the look's.
    pub named_shape: bool,
    /// The most common number of objects of that colour is the look's.
    pub count: bool,
    /// Mean linear size (square root of the area, in pixels) of the objects of that colour.
    pub size: f32,
}

/// Segments `frames` (RGB8, `n` x `n`, above a `floor`) for the objects of `look`.
pub fn appearance(frames: &[Vec<u8>], n: usize, floor: Colour, look: &Look) -> Appearance {
    let per_frame: Vec<_> = frames.iter().map(|f| segment(f, n, floor)).collect();
    let (_, mode) = usual_count(&per_frame, look.colour);
    let votes: Vec<Shape> = per_frame
        .iter()
        .flatten()
        .filter(|b| b.colour == look.colour && b.pixels.len() >= 2 * MIN_AREA)
        .map(classify_shape)
        .collect();
    // Every frame votes: a shot is a few dozen frames, and small objects need the votes.
    let shape = most_voted(&votes);
    Appearance {
        colour: colour_holds(&per_frame, look.colour),
        shape,
        named_shape: shape == Some(look.shape),
        count: mode == look.count,
        size: mean_size(&per_frame, look.colour).unwrap_or(0.0),
    }
}

/// Whether the objects of `colour` carry on across a cut-free join from shot `before` to shot `after`
/// (RGB8 frames, `n` x `n`): the last two frames of one and the first two of the other have the same
/// objects, sizes, and no jump (the rollout scorer's rule at window boundaries). `false` when either
/// shot has fewer than two frames.
pub fn carries_on_across(
    before: &[Vec<u8>],
    after: &[Vec<u8>],
    n: usize,
    floor: Colour,
    colour: Colour,
) -> bool {
    if before.len() < 2 || after.len() < 2 {
        return false;
    }
    let per_frame: Vec<_> = before[before.len() - 2..]
        .iter()
        .chain(&after[..2])
        .map(|f| segment(f, n, floor))
        .collect();
    crate::window_score::carries_on(&per_frame, colour)
}

/// The shape named by more of `votes` than any other (`None` for no votes or a tie): small objects are
/// a few dozen pixels, where one frame's outline may read as another shape.
fn most_voted(votes: &[Shape]) -> Option<Shape> {
    let count = |s: Shape| votes.iter().filter(|&&v| v == s).count();
    let best = crate::scene::SHAPES.into_iter().max_by_key(|&s| count(s))?;
    let top = count(best);
    (top > 0
        && crate::scene::SHAPES
            .into_iter()
            .all(|s| s == best || count(s) < top))
    .then_some(best)
}

/// Whether a character was kept in one appearance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Kept {
    /// The look's colour and count, and a size within [`SIZE_TOLERANCE`] of the median of the character's
    /// appearances.
    pub look: bool,
    /// The shape it was read as most often in all its appearances (read, not tied).
    pub shape: bool,
}

impl Kept {
    /// Colour, count, size and shape.
    pub fn all(&self) -> bool {
        self.look && self.shape
    }
}

/// For each of a character's appearances, what of it was kept (see [`Kept`]).
pub fn kept(appearances: &[Appearance]) -> Vec<Kept> {
    let mut sizes: Vec<f32> = appearances.iter().map(|a| a.size).collect();
    sizes.sort_by(f32::total_cmp);
    let median = sizes.get(sizes.len() / 2).copied().unwrap_or(0.0);
    let shapes: Vec<Shape> = appearances.iter().filter_map(|a| a.shape).collect();
    let usual = most_voted(&shapes);
    appearances
        .iter()
        .map(|a| Kept {
            look: a.colour
                && a.count
                && median > 0.0
                && (a.size - median).abs() <= SIZE_TOLERANCE * median,
            shape: a.shape.is_some() && a.shape == usual,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{render, WorldSize};
    use crate::scene::{Scene, Split};

    #[test]
    fn looks_are_read_in_any_of_the_toy_worlds_words() {
        let l = Look::parse("two small blue boxes").unwrap();
        assert_eq!((l.count, l.colour, l.shape), (2, Colour::Blue, Shape::Box));
        assert_eq!(Look::parse("a tiny red sphere").unwrap().shape, Shape::Ball);
        assert!(Look::parse("a friendly dragon").is_none());
        assert_eq!(
            floor_of("a small red ball bounces on a green floor"),
            Some(Colour::Green)
        );
    }

    #[test]
    fn rendered_scenes_keep_their_look_and_noise_does_not() {
        let world = WorldSize {
            size: 32,
            frames: 8,
        };
        for seed in 0..40 {
            let scene = Scene::sample(seed, Split::Train);
            let clip = render(&scene, world);
            let look = Look {
                count: scene.count,
                colour: scene.colour,
                shape: scene.shape,
                size: Some(scene.size),
            };
            let a = appearance(&clip.frames, 32, scene.floor, &look);
            assert!(a.colour && a.named_shape && a.count, "seed {seed}: {a:?}");
        }
        let noise: Vec<Vec<u8>> = (0..8u32)
            .map(|f| {
                (0..32 * 32 * 3u32)
                    .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(f * 97) >> 7) as u8)
                    .collect()
            })
            .collect();
        let look = Look::parse("a small red ball").unwrap();
        let a = appearance(&noise, 32, Colour::Green, &look);
        assert!(!(a.colour && a.named_shape && a.count), "{a:?}");
    }

    #[test]
    fn a_character_that_changes_size_or_shape_is_not_kept() {
        let a = |size, shape| Appearance {
            colour: true,
            shape: Some(shape),
            named_shape: shape == Shape::Ball,
            count: true,
            size,
        };
        let all = |k: Vec<Kept>| k.iter().map(Kept::all).collect::<Vec<_>>();
        assert_eq!(
            all(kept(&[
                a(4.0, Shape::Box),
                a(4.2, Shape::Box),
                a(6.0, Shape::Box)
            ])),
            [true, true, false]
        );
        assert_eq!(
            all(kept(&[
                a(4.0, Shape::Ball),
                a(4.2, Shape::Box),
                a(4.1, Shape::Ball)
            ])),
            [true, false, true]
        );
    }
}
