//! The film plan: what `sorrel film` renders, as a versioned JSON file a person can read and edit
//! (`sorrel film STORY --plan-only plan.json`, then `sorrel film plan.json`). Format: `docs/film.md`.

use serde::{Deserialize, Serialize};
use sorrel_core::{Error, Result};

/// The plan format this build reads and writes (`"sorrel_film"` in the file).
pub const PLAN_VERSION: u32 = 1;

/// The longest shot a plan may ask for, in seconds (the rollout limit).
pub const MAX_SHOT_SECONDS: f64 = 600.0;

/// A film: its characters and its shots, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The format version, [`PLAN_VERSION`].
    pub sorrel_film: u32,
    /// A title for the credentials and the storyboard (optional).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    /// The recurring characters (the character bible).
    #[serde(default)]
    pub characters: Vec<Character>,
    /// The shots, in the order they play.
    pub shots: Vec<Shot>,
}

/// A recurring character: how it looks, said the same way in every shot it is in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Character {
    /// The name the story calls it by ("Ruby").
    pub name: String,
    /// How it looks, as a phrase the model reads ("a small red ball").
    pub look: String,
    /// The seed of its reference picture and of the shots it leads (default: one derived from the name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// One shot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shot {
    /// The story's line this shot shows (the storyboard's caption).
    pub text: String,
    /// What the model is asked for (characters' names already replaced by their looks).
    pub prompt: String,
    /// Length in seconds.
    pub seconds: f64,
    /// The characters in view, by name; the first leads (its reference picture and seed are used).
    #[serde(default)]
    pub characters: Vec<String>,
    /// Camera direction appended to the prompt ("slow pan left"); empty for none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub camera: String,
    /// Whether this shot continues the previous one without a cut (a long take goes on from its last
    /// frames); otherwise it is a cut.
    #[serde(default)]
    pub continues: bool,
    /// The shot's seed (default: its lead character's, or one derived from its position).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl Plan {
    /// Reads a plan from JSON text; `origin` names the file in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Plan> {
        // Check the version first, so a future plan gets "upgrade" rather than a confusing field error.
        let version = serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| Error::invalid(format!("{origin} is not valid JSON: {e}")))?
            .get("sorrel_film")
            .and_then(|v| v.as_u64());
        match version {
            Some(v) if v == u64::from(PLAN_VERSION) => {}
            Some(v) => {
                return Err(Error::invalid(format!(
                    "{origin} is a version {v} film plan; this Sorrel reads version {PLAN_VERSION} (a newer \
                     Sorrel may read it)"
                )))
            }
            None => {
                return Err(Error::invalid(format!(
                    "{origin} is not a film plan: it has no \"sorrel_film\": {PLAN_VERSION} version field \
                     (write one with `sorrel film STORY --plan-only plan.json`)"
                )))
            }
        }
        let plan: Plan = serde_json::from_str(text).map_err(|e| {
            Error::invalid(format!("{origin}: {e} (the format is in docs/film.md)"))
        })?;
        plan.check()?;
        Ok(plan)
    }

    /// The plan as pretty JSON, ending in a newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("a plan serialises");
        s.push('\n');
        s
    }

    /// Checks what the format alone cannot: lengths, names, references. Every error names the shot.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(m));
        if self.shots.is_empty() {
            return bad("the plan has no shots: a film needs at least one".into());
        }
        for (i, c) in self.characters.iter().enumerate() {
            if c.name.trim().is_empty() {
                return bad(format!("character {} has an empty name", i + 1));
            }
            if c.look.trim().is_empty() {
                return bad(format!(
                    "character {:?} has an empty look: say how it looks, e.g. \"a small red ball\"",
                    c.name
                ));
            }
            if self.characters[..i].iter().any(|o| o.name == c.name) {
                return bad(format!(
                    "character {:?} is defined twice: give each character one entry",
                    c.name
                ));
            }
        }
        for (i, s) in self.shots.iter().enumerate() {
            let n = i + 1;
            if s.prompt.trim().is_empty() {
                return bad(format!("shot {n} has an empty prompt: say what it shows"));
            }
            if !s.seconds.is_finite() || s.seconds <= 0.0 {
                return bad(format!(
                    "shot {n} lasts {} s: give it a positive length in seconds",
                    s.seconds
                ));
            }
            if s.seconds > MAX_SHOT_SECONDS {
                return bad(format!(
                    "shot {n} lasts {} s: at most {MAX_SHOT_SECONDS} s a shot; split it into shots that \
                     continue one another",
                    s.seconds
                ));
            }
            if let Some(name) = s
                .characters
                .iter()
                .find(|name| !self.characters.iter().any(|c| &&c.name == name))
            {
                return bad(format!(
                    "shot {n} shows {name:?}, who is not in the plan's characters: add {{\"name\": {name:?}, \
                     \"look\": ...}} to \"characters\" or remove the name from the shot"
                ));
            }
            if s.continues && i == 0 {
                return bad(
                    "shot 1 is marked \"continues\", but there is no shot before it to continue"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// The character called `name`.
    pub fn character(&self, name: &str) -> Option<&Character> {
        self.characters.iter().find(|c| c.name == name)
    }

    /// The prompt shot `i` is rendered with: its prompt, and its camera direction when it has one.
    pub fn prompt_of(&self, i: usize) -> String {
        let s = &self.shots[i];
        if s.camera.trim().is_empty() {
            s.prompt.clone()
        } else {
            format!("{}, {}", s.prompt, s.camera.trim())
        }
    }

    /// The seed of `c`: its own, or one derived from its name (stable across runs and plans).
    pub fn character_seed(c: &Character) -> u64 {
        c.seed.unwrap_or_else(|| {
            // FNV-1a: a fixed, documented hash, so the default seed never changes between builds.
            c.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            })
        })
    }

    /// The seed of shot `i`: its own, else its lead character's, else one derived from its position.
    pub fn shot_seed(&self, i: usize) -> u64 {
        let s = &self.shots[i];
        s.seed
            .or_else(|| {
                s.characters
                    .first()
                    .and_then(|n| self.character(n))
                    .map(Plan::character_seed)
            })
            .unwrap_or(1_000 + i as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            sorrel_film: PLAN_VERSION,
            title: String::new(),
            characters: vec![Character {
                name: "Ruby".into(),
                look: "a small red ball".into(),
                seed: None,
            }],
            shots: vec![Shot {
                text: "Ruby bounces.".into(),
                prompt: "a small red ball bounces on a green floor".into(),
                seconds: 2.0,
                characters: vec!["Ruby".into()],
                camera: String::new(),
                continues: false,
                seed: None,
            }],
        }
    }

    fn err(p: &Plan) -> String {
        Plan::from_json(&p.to_json(), "plan.json")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_plan_round_trips_through_json() {
        let p = plan();
        assert_eq!(Plan::from_json(&p.to_json(), "plan.json").unwrap(), p);
    }

    #[test]
    fn bad_plans_are_refused_naming_what_to_change() {
        let mut p = plan();
        p.shots[0].seconds = 0.0;
        assert!(err(&p).contains("shot 1 lasts 0 s"), "{}", err(&p));
        let mut p = plan();
        p.shots[0].characters = vec!["Blue".into()];
        assert!(err(&p).contains("\"Blue\", who is not in the plan's characters"));
        let mut p = plan();
        p.shots[0].continues = true;
        assert!(err(&p).contains("no shot before it"));
        let mut p = plan();
        p.shots.clear();
        assert!(err(&p).contains("no shots"));
        let mut p = plan();
        p.characters.push(p.characters[0].clone());
        assert!(err(&p).contains("defined twice"));
        let text = plan()
            .to_json()
            .replace("\"seconds\"", "\"secs\": 1, \"seconds\"");
        let e = Plan::from_json(&text, "plan.json").unwrap_err().to_string();
        assert!(e.contains("unknown field `secs`"), "{e}");
        let text = plan()
            .to_json()
            .replace("\"sorrel_film\": 1", "\"sorrel_film\": 2");
        let e = Plan::from_json(&text, "plan.json").unwrap_err().to_string();
        assert!(e.contains("version 2"), "{e}");
        let e = Plan::from_json("{\"shots\": []}", "x.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a film plan"), "{e}");
    }

    #[test]
    fn seeds_follow_the_lead_character() {
        let mut p = plan();
        let ruby = Plan::character_seed(&p.characters[0]);
        assert_eq!(p.shot_seed(0), ruby);
        assert_eq!(ruby, Plan::character_seed(&p.characters[0].clone()));
        p.shots[0].seed = Some(5);
        assert_eq!(p.shot_seed(0), 5);
        p.shots[0].characters.clear();
        p.shots[0].seed = None;
        assert_eq!(p.shot_seed(0), 1_000);
    }
}
