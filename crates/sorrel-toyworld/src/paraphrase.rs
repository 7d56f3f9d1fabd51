//! Captions as people write them: the grammar's caption says "two small red balls bounce on a blue floor",
//! but a person types "a red ball bounces on a blue floor" (no size word), "2 red spheres hopping on the
//! ground", "on a green floor, a cube slides left" or "A red ball moves to the right. The floor is blue."
//!
//! [`paraphrase`] draws one of the training forms with random word choices (optional size words, synonyms,
//! numerals, verbs, word order, two plain sentences). [`held_out_paraphrase`] writes the forms training never
//! sees, made of the same words in orders no training caption uses; `docs/models/toyworld-held-out-prompts.txt`
//! lists the evaluation's held-out prompts.

use rand::rngs::StdRng;
use rand::Rng;

use crate::scene::{Motion, Scene, Shape, Size};

/// Sentence shapes of training captions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// "two red balls bounce on a blue floor" (the grammar's order, any words).
    Grammar,
    /// "two red balls bouncing on the blue ground".
    Participle,
    /// "on a blue floor, two red balls bounce".
    PlaceFirst,
    /// "two red balls bounce. the floor is blue".
    TwoSentences,
}

/// Forms only the held-out evaluation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldOutForm {
    /// "two red balls on a blue floor, bouncing".
    PlaceThenParticiple,
    /// "the floor is blue. two red balls bounce" (the two sentences the other way round).
    FloorSentenceFirst,
    /// "blue floor, two red balls bouncing".
    FloorThenParticiple,
}

/// Every training form.
pub const FORMS: [Form; 4] = [
    Form::Grammar,
    Form::Participle,
    Form::PlaceFirst,
    Form::TwoSentences,
];

/// Every held-out form.
pub const HELD_OUT_FORMS: [HeldOutForm; 3] = [
    HeldOutForm::PlaceThenParticiple,
    HeldOutForm::FloorSentenceFirst,
    HeldOutForm::FloorThenParticiple,
];

/// The words of one caption, chosen before they are put in order.
struct Words {
    subject: String,
    /// Verb phrase agreeing with the subject ("bounces" / "bounce").
    verb: String,
    /// Participle phrase ("bouncing").
    ing: String,
    prep: &'static str,
    article: &'static str,
    floor: &'static str,
    ground: &'static str,
}

fn pick<'a>(rng: &mut StdRng, options: &[&'a str]) -> &'a str {
    options[rng.random_range(0..options.len())]
}

/// (singular, plural, participle) of a verb.
type Verb = (&'static str, &'static str, &'static str);

const MOVE: Verb = ("moves", "move", "moving");
const GO: Verb = ("goes", "go", "going");

fn words(scene: &Scene, rng: &mut StdRng) -> Words {
    let plural = scene.count > 1;
    let count = pick(
        rng,
        match scene.count {
            1 => &["a", "one", "1"],
            2 => &["two", "2"],
            _ => &["three", "3"],
        },
    );
    // A size word is optional: people leave it out more often than not.
    let size = if rng.random_bool(0.45) {
        Some(match scene.size {
            Size::Small => pick(rng, &["small", "little", "tiny"]),
            Size::Big => pick(rng, &["big", "large"]),
        })
    } else {
        None
    };
    let noun = match (scene.shape, plural) {
        (Shape::Ball, false) => pick(rng, &["ball", "sphere"]),
        (Shape::Ball, true) => pick(rng, &["balls", "spheres"]),
        (Shape::Box, false) => pick(rng, &["box", "cube"]),
        (Shape::Box, true) => pick(rng, &["boxes", "cubes"]),
        (Shape::Triangle, false) => "triangle",
        (Shape::Triangle, true) => "triangles",
    };
    let subject = match size {
        Some(s) => format!("{count} {s} {} {noun}", scene.colour.word()),
        None => format!("{count} {} {noun}", scene.colour.word()),
    };
    let along: Verb = if scene.shape == Shape::Ball {
        ("rolls", "roll", "rolling")
    } else {
        ("slides", "slide", "sliding")
    };
    let (v, tail): (Verb, String) = match scene.motion {
        Motion::Left | Motion::Right => {
            let side = if scene.motion == Motion::Left {
                "left"
            } else {
                "right"
            };
            let v = [along, MOVE, GO][rng.random_range(0..3)];
            let tail = if rng.random_bool(0.5) {
                format!(" to the {side}")
            } else {
                format!(" {side}")
            };
            (v, tail)
        }
        Motion::Up => match rng.random_range(0..3) {
            0 => (MOVE, " up".into()),
            1 => (GO, " up".into()),
            _ => (("rises", "rise", "rising"), String::new()),
        },
        Motion::Down => match rng.random_range(0..3) {
            0 => (MOVE, " down".into()),
            1 => (GO, " down".into()),
            _ => (("floats", "float", "floating"), " down".into()),
        },
        Motion::Bounce => (
            [
                ("bounces", "bounce", "bouncing"),
                ("hops", "hop", "hopping"),
            ][rng.random_range(0..2)],
            String::new(),
        ),
        Motion::Grow => {
            if rng.random_bool(0.5) {
                (("grows", "grow", "growing"), String::new())
            } else {
                (("gets", "get", "getting"), " bigger".into())
            }
        }
        Motion::Shrink => {
            if rng.random_bool(0.5) {
                (("shrinks", "shrink", "shrinking"), String::new())
            } else {
                (("gets", "get", "getting"), " smaller".into())
            }
        }
    };
    Words {
        subject,
        verb: format!("{}{tail}", if plural { v.1 } else { v.0 }),
        ing: format!("{}{tail}", v.2),
        prep: pick(rng, &["on", "above", "over"]),
        article: pick(rng, &["a", "the"]),
        floor: scene.floor.word(),
        ground: pick(rng, &["floor", "ground"]),
    }
}

/// Capitalises the first letter of `s` and of every sentence after a ". ".
fn sentence_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for (i, c) in s.char_indices() {
        if start && c.is_alphabetic() {
            out.extend(c.to_uppercase());
            start = false;
        } else {
            out.push(c);
            if c.is_alphanumeric() {
                start = false;
            }
        }
        if c == '.' && s[i + 1..].starts_with(' ') {
            start = true;
        }
    }
    out
}

/// `text` in sentence case half the time and ended with a full stop half the time, as people write.
fn styled(text: String, rng: &mut StdRng) -> String {
    let text = if rng.random_bool(0.5) {
        sentence_case(&text)
    } else {
        text
    };
    if rng.random_bool(0.5) {
        text + "."
    } else {
        text
    }
}

/// A training caption of `scene`: a random form, random word choices, and (each half the time) written in
/// sentence case and ended with a full stop.
pub fn paraphrase(scene: &Scene, rng: &mut StdRng) -> String {
    let w = words(scene, rng);
    let Words {
        subject,
        verb,
        ing,
        prep,
        article,
        floor,
        ground,
    } = &w;
    let text = match FORMS[rng.random_range(0..FORMS.len())] {
        Form::Grammar => format!("{subject} {verb} {prep} {article} {floor} {ground}"),
        Form::Participle => format!("{subject} {ing} {prep} {article} {floor} {ground}"),
        Form::PlaceFirst => format!("on {article} {floor} {ground}, {subject} {verb}"),
        Form::TwoSentences => format!("{subject} {verb}. the {ground} is {floor}"),
    };
    styled(text, rng)
}

/// A training caption of `scene` that names no floor ("a red ball moves to the right", "Two cubes
/// sliding left."), as people often write: the floor may then be any colour but the objects'. Same word
/// choices, sentence case and full stop as [`paraphrase`].
pub fn paraphrase_without_floor(scene: &Scene, rng: &mut StdRng) -> String {
    let Words {
        subject, verb, ing, ..
    } = words(scene, rng);
    let text = if rng.random_bool(0.5) {
        format!("{subject} {verb}")
    } else {
        format!("{subject} {ing}")
    };
    styled(text, rng)
}

/// The held-out caption of `scene` in `form`, with word choices drawn from `rng`; lower case, no full stop.
pub fn held_out_paraphrase(scene: &Scene, form: HeldOutForm, rng: &mut StdRng) -> String {
    let Words {
        subject,
        verb,
        ing,
        prep,
        article,
        floor,
        ground,
    } = words(scene, rng);
    match form {
        HeldOutForm::PlaceThenParticiple => {
            format!("{subject} {prep} {article} {floor} {ground}, {ing}")
        }
        HeldOutForm::FloorSentenceFirst => format!("the {ground} is {floor}. {subject} {verb}"),
        HeldOutForm::FloorThenParticiple => format!("{floor} {ground}, {subject} {ing}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caption::VOCABULARY;
    use crate::scene::Split;
    use rand::SeedableRng;

    fn words_of(c: &str) -> Vec<String> {
        c.replace(['.', ','], " ")
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn paraphrases_use_the_vocabulary_and_name_the_colours() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut seen = std::collections::HashSet::new();
        for seed in 0..4000 {
            let s = Scene::sample(seed, Split::Train);
            let grammar = crate::caption_styled(&s, crate::CaptionStyle::nth(seed as u32 % 8));
            seen.extend(words_of(&grammar));
            let c = paraphrase(&s, &mut rng);
            let lower = c.to_lowercase();
            assert!(
                lower.contains(s.colour.word()) && lower.contains(s.floor.word()),
                "{c}"
            );
            for w in words_of(&c) {
                assert!(VOCABULARY.contains(&w.as_str()), "`{w}` in `{c}`");
                seen.insert(w);
            }
            let bare = paraphrase_without_floor(&s, &mut rng).to_lowercase();
            assert!(bare.contains(s.colour.word()), "{bare}");
            assert!(
                !bare.contains("floor")
                    && !bare.contains("ground")
                    && !bare.contains(s.floor.word()),
                "{bare}"
            );
            for w in words_of(&bare) {
                assert!(VOCABULARY.contains(&w.as_str()), "`{w}` in `{bare}`");
            }
            for form in HELD_OUT_FORMS {
                let h = held_out_paraphrase(&s, form, &mut rng);
                for w in words_of(&h) {
                    assert!(VOCABULARY.contains(&w.as_str()), "`{w}` in `{h}`");
                }
            }
        }
        let unused: Vec<_> = VOCABULARY.iter().filter(|w| !seen.contains(**w)).collect();
        assert!(unused.is_empty(), "in no training caption: {unused:?}");
    }

    #[test]
    fn held_out_forms_are_not_training_forms() {
        let mut rng = StdRng::seed_from_u64(1);
        let train: std::collections::HashSet<String> = (0..20000)
            .map(|i| paraphrase(&Scene::sample(i % 50, Split::Train), &mut rng).to_lowercase())
            .map(|c| c.trim_end_matches('.').to_string())
            .collect();
        for i in 0..50 {
            for form in HELD_OUT_FORMS {
                let h = held_out_paraphrase(&Scene::sample(i, Split::Train), form, &mut rng);
                assert!(!train.contains(&h), "{h}");
            }
        }
        assert_eq!(
            sentence_case("two red balls bounce. the floor is blue"),
            "Two red balls bounce. The floor is blue"
        );
        assert_eq!(sentence_case("2 red balls"), "2 red balls");
    }
}
