//! The built-in planner: a story in plain sentences to a [`Plan`], deterministically (the same story always
//! gives the same plan, with no model and no network).
//!
//! - Paragraphs are scenes; each sentence that shows something is a shot.
//! - "Ruby is a small red ball." / "The Twins are two blue boxes." / "A small red ball called Ruby ..."
//!   define characters; their names are replaced by their looks in every shot's prompt, so a character is
//!   described the same way every time.
//! - "The floor is green." sets the place; a shot that names no place ("on the green floor", "in the
//!   garden", at the end of the sentence) is given the last one, so the setting carries forward.
//! - "for 30 seconds" / "for a minute" sets a shot's length (else the default).
//! - Within a paragraph, a shot with the same characters as the shot before continues it (a long take goes
//!   on from its last frames); a new paragraph or other characters is a cut.

use sorrel_core::{Error, Result};

use super::plan::{Character, Plan, Shot, PLAN_VERSION};

/// Settings of the built-in planner.
#[derive(Debug, Clone)]
pub struct PlannerOptions {
    /// Length of a shot whose sentence gives none, in seconds.
    pub shot_seconds: f64,
}

impl Default for PlannerOptions {
    fn default() -> Self {
        Self { shot_seconds: 2.0 }
    }
}

/// Words that open a sentence to link it to the one before; they tell the planner about order, not the
/// model about the picture, so they are left out of prompts.
const CONNECTIVES: [&str; 10] = [
    "and then",
    "after that",
    "then",
    "now",
    "later",
    "next",
    "meanwhile",
    "finally",
    "suddenly",
    "and",
];

/// Capitalised words that open sentences without naming anyone ("It is a sunny day."): never names.
const NOT_NAMES: [&str; 14] = [
    "It",
    "This",
    "That",
    "There",
    "Here",
    "He",
    "She",
    "They",
    "We",
    "I",
    "You",
    "What",
    "Everything",
    "Nothing",
];

/// Words that may open a character's look.
const LOOK_STARTS: [&str; 11] = [
    "a", "an", "one", "two", "three", "some", "1", "2", "3", "the", "little",
];

/// Turns a story into a plan.
pub fn plan_story(story: &str, opts: &PlannerOptions) -> Result<Plan> {
    if story.trim().is_empty() {
        return Err(Error::invalid(
            "the story is empty: write what happens, one sentence a shot (e.g. \"Ruby is a small red \
             ball. Ruby bounces on a green floor.\")",
        ));
    }
    let mut characters: Vec<Character> = Vec::new();
    let mut shots: Vec<Shot> = Vec::new();
    let mut place: Option<String> = None;
    for paragraph in paragraphs(story) {
        let first_shot_of_paragraph = shots.len();
        for sentence in sentences(&paragraph) {
            if let Some(set) = floor_sentence(&sentence) {
                place = Some(set);
                continue;
            }
            if let Some(c) = definition(&sentence) {
                add_character(&mut characters, c);
                continue;
            }
            // "A small red ball called Ruby bounces ...": a definition and a shot in one sentence.
            let sentence = match called(&sentence) {
                Some((c, rest)) => {
                    add_character(&mut characters, c);
                    rest
                }
                None => sentence,
            };
            let (body, seconds) = duration(&strip_connective(&sentence));
            let (mut prompt, cast) = substitute(&body, &characters);
            if prompt.trim().is_empty() {
                continue;
            }
            match place_of(&prompt) {
                Some(found) => place = Some(found),
                None => {
                    if let Some(at) = &place {
                        prompt = format!("{prompt} {at}");
                    }
                }
            }
            let continues = shots.len() > first_shot_of_paragraph
                && !cast.is_empty()
                && shots.last().is_some_and(|s: &Shot| s.characters == cast);
            shots.push(Shot {
                text: sentence.clone(),
                prompt,
                seconds: seconds.unwrap_or(opts.shot_seconds),
                characters: cast,
                camera: String::new(),
                continues,
                seed: None,
            });
        }
    }
    if shots.is_empty() {
        return Err(Error::invalid(
            "the story has no sentence that shows something happening (only characters or places were \
             described): add one such as \"Ruby bounces on the green floor.\"",
        ));
    }
    let plan = Plan {
        sorrel_film: PLAN_VERSION,
        title: String::new(),
        characters,
        shots,
    };
    plan.check()?;
    Ok(plan)
}

fn add_character(characters: &mut Vec<Character>, c: Character) {
    // A later definition of the same name restates the look: the first one stands, so the character
    // stays as introduced.
    if !characters.iter().any(|o| o.name == c.name) {
        characters.push(c);
    }
}

/// Paragraphs: text separated by blank lines.
fn paragraphs(story: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in story.lines() {
        if line.trim().is_empty() {
            if !cur.trim().is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            cur.clear();
        } else {
            cur.push(' ');
            cur.push_str(line.trim());
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

/// Sentences: ended by `.`, `!` or `?` (the mark kept), whitespace collapsed.
fn sentences(paragraph: &str) -> Vec<String> {
    let words: Vec<&str> = paragraph.split_whitespace().collect();
    let mut out = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    for w in words {
        cur.push(w);
        if w.ends_with(['.', '!', '?']) {
            out.push(cur.join(" "));
            cur.clear();
        }
    }
    if !cur.is_empty() {
        out.push(cur.join(" "));
    }
    out
}

fn trim_end_mark(s: &str) -> &str {
    s.trim().trim_end_matches(['.', '!', '?', ',', ';']).trim()
}

fn is_name_word(w: &str) -> bool {
    w.chars().next().is_some_and(char::is_uppercase) && w.chars().all(char::is_alphanumeric)
}

/// "The floor is green." / "The ground is blue": the place every following shot happens in.
fn floor_sentence(s: &str) -> Option<String> {
    let words: Vec<String> = trim_end_mark(s)
        .split_whitespace()
        .map(str::to_lowercase)
        .collect();
    match words.as_slice() {
        [the, what, is, colour]
            if the == "the" && is == "is" && (what == "floor" || what == "ground") =>
        {
            Some(format!("on a {colour} {what}"))
        }
        _ => None,
    }
}

/// "Ruby is a small red ball." / "The Twins are two blue boxes.": a character, not a shot.
fn definition(s: &str) -> Option<Character> {
    let body = trim_end_mark(s);
    let words: Vec<&str> = body.split_whitespace().collect();
    let verb = words.iter().position(|w| *w == "is" || *w == "are")?;
    let mut name_words = &words[..verb];
    if name_words
        .first()
        .is_some_and(|w| w.eq_ignore_ascii_case("the"))
    {
        name_words = &name_words[1..];
    }
    if name_words.is_empty()
        || name_words.len() > 3
        || !name_words.iter().all(|w| is_name_word(w))
        || NOT_NAMES.contains(&name_words[0])
    {
        return None;
    }
    let look = &words[verb + 1..];
    if look.is_empty() || !LOOK_STARTS.contains(&look[0].to_lowercase().as_str()) {
        return None;
    }
    Some(Character {
        name: name_words.join(" "),
        look: lower_first(&look.join(" ")),
        seed: None,
    })
}

/// "A small red ball called Ruby bounces on a green floor": the character, and the sentence with the name
/// in place of the look and the "called" clause ("Ruby bounces on a green floor").
fn called(s: &str) -> Option<(Character, String)> {
    let words: Vec<&str> = s.split_whitespace().collect();
    let k = words.iter().position(|w| *w == "called" || *w == "named")?;
    if k == 0 || !LOOK_STARTS.contains(&words[0].to_lowercase().as_str()) {
        return None;
    }
    let name_len = words[k + 1..]
        .iter()
        .take_while(|w| is_name_word(w.trim_end_matches(['.', ',', '!', '?'])))
        .count()
        .min(3);
    if name_len == 0 {
        return None;
    }
    let name: Vec<&str> = words[k + 1..k + 1 + name_len]
        .iter()
        .map(|w| w.trim_end_matches(['.', ',', '!', '?']))
        .collect();
    let name = name.join(" ");
    let rest = words[k + 1 + name_len..].join(" ");
    let c = Character {
        name: name.clone(),
        look: lower_first(&words[..k].join(" ")),
        seed: None,
    };
    Some((c, format!("{name} {rest}").trim().to_string()))
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

fn strip_connective(s: &str) -> String {
    let mut t = s.trim().to_string();
    loop {
        let lower = t.to_lowercase();
        let Some(c) = CONNECTIVES.iter().find(|c| {
            lower.starts_with(*c)
                && lower[c.len()..]
                    .chars()
                    .next()
                    .is_some_and(|ch| ch == ' ' || ch == ',')
        }) else {
            return t;
        };
        t = t[c.len()..]
            .trim_start_matches([' ', ','])
            .trim()
            .to_string();
    }
}

/// A number word or numeral up to sixty.
fn number(w: &str) -> Option<f64> {
    const WORDS: [(&str, f64); 16] = [
        ("a", 1.0),
        ("an", 1.0),
        ("one", 1.0),
        ("two", 2.0),
        ("three", 3.0),
        ("four", 4.0),
        ("five", 5.0),
        ("six", 6.0),
        ("seven", 7.0),
        ("eight", 8.0),
        ("nine", 9.0),
        ("ten", 10.0),
        ("twenty", 20.0),
        ("thirty", 30.0),
        ("forty", 40.0),
        ("sixty", 60.0),
    ];
    w.parse::<f64>()
        .ok()
        .or_else(|| WORDS.iter().find(|(k, _)| *k == w).map(|(_, v)| *v))
}

/// Removes "for N seconds" / "for a minute" / "for half a minute" and returns the length it gave.
fn duration(s: &str) -> (String, Option<f64>) {
    let body = trim_end_mark(s);
    let words: Vec<&str> = body.split_whitespace().collect();
    let lower: Vec<String> = words
        .iter()
        .map(|w| w.to_lowercase().trim_end_matches(',').to_string())
        .collect();
    for i in 0..lower.len() {
        if lower[i] != "for" {
            continue;
        }
        let (value, unit_at) = match lower.get(i + 1).map(String::as_str) {
            Some("half") if lower.get(i + 2).map(String::as_str) == Some("a") => (0.5, i + 3),
            Some(w) => match number(w) {
                Some(v) => (v, i + 2),
                None => continue,
            },
            None => continue,
        };
        let scale = match lower.get(unit_at).map(String::as_str) {
            Some("second" | "seconds" | "s") => 1.0,
            Some("minute" | "minutes") => 60.0,
            _ => continue,
        };
        let rest: Vec<&str> = words[..i]
            .iter()
            .chain(&words[unit_at + 1..])
            .copied()
            .collect();
        return (rest.join(" "), Some(value * scale));
    }
    (body.to_string(), None)
}

/// Replaces every character's name (with its article, "the Twins") by its look; returns the prompt and
/// the characters named, in order of first mention.
fn substitute(body: &str, characters: &[Character]) -> (String, Vec<String>) {
    let clean = |w: &str| w.trim_end_matches([',', '.', '!', '?', ';']).to_string();
    let words: Vec<&str> = body.split_whitespace().collect();
    // Longest names first, so "Big Ruby" wins over "Ruby".
    let mut by_len: Vec<&Character> = characters.iter().collect();
    by_len.sort_by_key(|c| std::cmp::Reverse(c.name.split_whitespace().count()));
    let mut out: Vec<String> = Vec::new();
    let mut cast: Vec<String> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let article = usize::from(words[i].eq_ignore_ascii_case("the"));
        let found = by_len.iter().find_map(|c| {
            let name: Vec<&str> = c.name.split_whitespace().collect();
            [article, 0].into_iter().find_map(|skip| {
                let at = i + skip;
                let hit = at + name.len() <= words.len()
                    && name
                        .iter()
                        .enumerate()
                        .all(|(k, n)| clean(words[at + k]) == *n);
                hit.then_some((*c, at + name.len()))
            })
        });
        match found {
            Some((c, end)) => {
                let last = words[end - 1];
                out.push(format!("{}{}", c.look, &last[clean(last).len()..]));
                if !cast.contains(&c.name) {
                    cast.push(c.name.clone());
                }
                i = end;
            }
            None => {
                out.push(words[i].to_string());
                i += 1;
            }
        }
    }
    (lower_first(out.join(" ").trim()), cast)
}

/// The place phrase a prompt ends with: "on the green floor", "above a red ground", "in the garden".
fn place_of(prompt: &str) -> Option<String> {
    let words: Vec<&str> = prompt.split_whitespace().collect();
    let articles = ["a", "an", "the"];
    let preps = ["on", "above", "over", "in", "at"];
    (0..words.len().saturating_sub(2))
        .find(|&i| {
            preps.contains(&words[i].to_lowercase().as_str())
                && articles.contains(&words[i + 1].to_lowercase().as_str())
                && words.len() - i <= 6
        })
        .map(|i| words[i..].join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORY: &str =
        "Ruby is a small red ball. The Twins are two small blue boxes. The floor is green.

Ruby bounces. Then Ruby moves to the right for 4 seconds.

The Twins slide to the left on the yellow floor. Ruby moves up.";

    #[test]
    fn a_story_becomes_shots_with_characters_places_and_takes() {
        let plan = plan_story(STORY, &PlannerOptions::default()).unwrap();
        let names: Vec<&str> = plan.characters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["Ruby", "Twins"]);
        assert_eq!(plan.characters[1].look, "two small blue boxes");
        let prompts: Vec<&str> = plan.shots.iter().map(|s| s.prompt.as_str()).collect();
        assert_eq!(
            prompts,
            [
                "a small red ball bounces on a green floor",
                "a small red ball moves to the right on a green floor",
                "two small blue boxes slide to the left on the yellow floor",
                "a small red ball moves up on the yellow floor",
            ]
        );
        let seconds: Vec<f64> = plan.shots.iter().map(|s| s.seconds).collect();
        assert_eq!(seconds, [2.0, 4.0, 2.0, 2.0]);
        let continues: Vec<bool> = plan.shots.iter().map(|s| s.continues).collect();
        // Same character in one paragraph: a long take; a new paragraph or another character: a cut.
        assert_eq!(continues, [false, true, false, false]);
        assert_eq!(
            plan.shots[1].text,
            "Then Ruby moves to the right for 4 seconds."
        );
        assert_eq!(plan.shots[2].characters, ["Twins"]);
        // The same story gives the same plan.
        assert_eq!(plan, plan_story(STORY, &PlannerOptions::default()).unwrap());
    }

    #[test]
    fn characters_may_be_named_in_passing_and_lengths_written_in_words() {
        let plan = plan_story(
            "A big green triangle called Tri grows above a red floor for half a minute. Tri shrinks for \
             a minute.",
            &PlannerOptions::default(),
        )
        .unwrap();
        assert_eq!(plan.characters[0].name, "Tri");
        assert_eq!(plan.characters[0].look, "a big green triangle");
        assert_eq!(
            plan.shots[0].prompt,
            "a big green triangle grows above a red floor"
        );
        assert_eq!(plan.shots[0].seconds, 30.0);
        assert_eq!(plan.shots[1].seconds, 60.0);
        assert!(plan.shots[1].continues);
    }

    #[test]
    fn pronouns_are_not_characters() {
        let plan = plan_story(
            "It is a sunny day. Ruby is a small red ball. Ruby bounces.",
            &PlannerOptions::default(),
        )
        .unwrap();
        let names: Vec<&str> = plan.characters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["Ruby"]);
        assert_eq!(plan.shots[0].prompt, "it is a sunny day");
    }

    #[test]
    fn stories_that_show_nothing_are_refused() {
        let e = plan_story("  \n ", &PlannerOptions::default()).unwrap_err();
        assert!(e.to_string().contains("the story is empty"));
        let e = plan_story("Ruby is a small red ball.", &PlannerOptions::default()).unwrap_err();
        assert!(e.to_string().contains("no sentence that shows"), "{e}");
    }
}
