//! The caption grammar: `{a|two|three} {small|big} {colour} {shape}(s) {verb phrase} {on|above} a {colour}
//! floor`, e.g. "two big red balls bounce on a blue floor", "a small yellow box slides to the left on a
//! green floor". Balls roll, boxes and triangles slide. [`caption_styled`] also writes the verb as a
//! participle ("a red ball bouncing on a blue floor"), capitalises the first word or ends with a full stop,
//! so that the ways people write a prompt are all seen in training.

use crate::scene::{Motion, Scene, Shape, Size};

/// Every word the grammar and its paraphrases ([`crate::paraphrase`]) can produce (the embedded model's
/// vocabulary). Capitalised words are separate pieces (UMT5's tokenizer does not lower-case), so the ones
/// that start a sentence are listed.
pub const VOCABULARY: &[&str] = &[
    "a",
    "one",
    "1",
    "two",
    "2",
    "three",
    "3",
    "small",
    "little",
    "tiny",
    "big",
    "large",
    "red",
    "green",
    "blue",
    "yellow",
    "ball",
    "balls",
    "sphere",
    "spheres",
    "box",
    "boxes",
    "cube",
    "cubes",
    "triangle",
    "triangles",
    "rolls",
    "roll",
    "rolling",
    "slides",
    "slide",
    "sliding",
    "moves",
    "move",
    "moving",
    "goes",
    "go",
    "going",
    "to",
    "the",
    "left",
    "right",
    "up",
    "down",
    "rises",
    "rise",
    "rising",
    "floats",
    "float",
    "floating",
    "bounces",
    "bounce",
    "bouncing",
    "hops",
    "hop",
    "hopping",
    "grows",
    "grow",
    "growing",
    "gets",
    "get",
    "getting",
    "bigger",
    "smaller",
    "shrinks",
    "shrink",
    "shrinking",
    "on",
    "above",
    "over",
    "floor",
    "ground",
    "is",
    "A",
    "One",
    "Two",
    "Three",
    "On",
    "The",
];

/// How a caption is written; the default is the plain grammar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptionStyle {
    /// "a red ball bouncing" instead of "a red ball bounces".
    pub participle: bool,
    /// "A red ball ...".
    pub capital: bool,
    /// A trailing ".".
    pub period: bool,
}

impl CaptionStyle {
    /// The style numbered `i` of the eight (bits: participle, capital, period).
    pub fn nth(i: u32) -> Self {
        Self {
            participle: i & 1 != 0,
            capital: i & 2 != 0,
            period: i & 4 != 0,
        }
    }
}

/// The caption of `scene`.
pub fn caption(scene: &Scene) -> String {
    caption_styled(scene, CaptionStyle::default())
}

/// The caption of `scene` written in `style`.
pub fn caption_styled(scene: &Scene, style: CaptionStyle) -> String {
    let plural = scene.count > 1;
    let count = if style.capital {
        ["A", "Two", "Three"][scene.count - 1]
    } else {
        ["a", "two", "three"][scene.count - 1]
    };
    let size = match scene.size {
        Size::Small => "small",
        Size::Big => "big",
    };
    let noun = match (scene.shape, plural) {
        (Shape::Ball, false) => "ball",
        (Shape::Ball, true) => "balls",
        (Shape::Box, false) => "box",
        (Shape::Box, true) => "boxes",
        (Shape::Triangle, false) => "triangle",
        (Shape::Triangle, true) => "triangles",
    };
    let participle = style.participle;
    let verb = |one: &'static str, many: &'static str, ing: &'static str| {
        if participle {
            ing
        } else if plural {
            many
        } else {
            one
        }
    };
    let along = if scene.shape == Shape::Ball {
        verb("rolls", "roll", "rolling")
    } else {
        verb("slides", "slide", "sliding")
    };
    let (phrase, place) = match scene.motion {
        Motion::Left => (format!("{along} to the left"), "on"),
        Motion::Right => (format!("{along} to the right"), "on"),
        Motion::Up => (format!("{} up", verb("moves", "move", "moving")), "above"),
        Motion::Down => (format!("{} down", verb("moves", "move", "moving")), "above"),
        Motion::Bounce => (verb("bounces", "bounce", "bouncing").to_string(), "on"),
        Motion::Grow => (verb("grows", "grow", "growing").to_string(), "above"),
        Motion::Shrink => (verb("shrinks", "shrink", "shrinking").to_string(), "above"),
    };
    format!(
        "{count} {size} {} {noun} {phrase} {place} a {} floor{}",
        scene.colour.word(),
        scene.floor.word(),
        if style.period { "." } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scene::Split;

    #[test]
    fn captions_use_only_the_vocabulary_and_say_what_the_scene_is() {
        let mut seen = std::collections::HashSet::new();
        for seed in 0..3000 {
            let s = Scene::sample(
                seed,
                if seed % 3 == 0 {
                    Split::HeldOut
                } else {
                    Split::Train
                },
            );
            let c = caption_styled(&s, CaptionStyle::nth(seed as u32 % 8));
            for w in c.trim_end_matches('.').split(' ') {
                assert!(VOCABULARY.contains(&w), "`{w}` in `{c}`");
                seen.insert(w.to_string());
            }
            assert!(
                c.contains(s.colour.word())
                    && c.trim_end_matches('.')
                        .ends_with(&format!("a {} floor", s.floor.word())),
                "{c}"
            );
        }
        // The paraphrases' test checks that every word is used by one or the other.
        assert!(seen.len() > 40);
        let s = Scene {
            count: 2,
            colour: crate::Colour::Red,
            shape: Shape::Ball,
            size: Size::Big,
            motion: Motion::Bounce,
            floor: crate::Colour::Blue,
            starts: vec![(0.3, 0.2), (0.7, 0.2)],
            amount: 2.5,
        };
        assert_eq!(caption(&s), "two big red balls bounce on a blue floor");
        assert_eq!(
            caption_styled(&s, CaptionStyle::nth(7)),
            "Two big red balls bouncing on a blue floor."
        );
    }
}
