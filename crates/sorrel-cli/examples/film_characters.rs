//! How well `sorrel film` keeps its characters on the embedded model, over many films: the story is planned
//! once, then rendered once per seed set (each character's seed changed), and every appearance is scored
//! with the toy-world scorer as `tests/film.rs` scores its one film (colour and count as named, size within
//! 20 % of the character's median, the shape read most often). One film says little: the same story gives
//! 6 of 6 appearances kept on one seed and 4 of 6 on the next (docs/film.md).
//!
//! ```sh
//! cargo build --release -p sorrel-cli
//! cargo run --release -p sorrel-cli --example film_characters -- story.txt 16
//! ```
//!
//! Arguments: the story, how many films (default 8), the first seed set (default 0), and a model folder
//! (default: the embedded model). It runs the `sorrel` binary beside this example's folder
//! (target/release/sorrel) with a temporary data and cache folder.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use sorrel_pipeline::film::Plan;
use sorrel_toyworld::{appearance, carries_on_across, floor_of, kept, Look};

/// Frame size of the embedded model.
const SIZE: usize = 32;

fn sorrel_binary() -> Option<PathBuf> {
    // target/release/examples/film_characters -> target/release/sorrel
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("sorrel");
    bin.exists().then_some(bin)
}

fn run(bin: &Path, home: &Path, model: Option<&str>, args: &[&str]) -> Result<(), String> {
    let mut c = Command::new(bin);
    c.args(args);
    if let Some(m) = model {
        c.args(["--model", m]);
    }
    let o = c
        .env("SORREL_DATA_DIR", home.join("data"))
        .env("SORREL_CACHE_DIR", home.join("cache"))
        .env_remove("SORREL_MODEL")
        .output()
        .map_err(|e| format!("could not run {}: {e}", bin.display()))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "sorrel {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

/// Counts over all films.
#[derive(Default)]
struct Tally {
    appearances: usize,
    look: usize,
    shape: usize,
    all: usize,
    seams: usize,
    seams_kept: usize,
}

fn score(plan: &Plan, work: &Path, tally: &mut Tally) -> Result<String, String> {
    let frames = |i: usize| {
        sorrel_film::finished_shot(work, i).ok_or_else(|| format!("shot {} is missing", i + 1))
    };
    let mut line = String::new();
    for c in &plan.characters {
        let look = Look::parse(&c.look).ok_or_else(|| format!("{}: no toy-world look", c.look))?;
        let mut apps = Vec::new();
        for (i, s) in plan.shots.iter().enumerate() {
            if s.characters.contains(&c.name) {
                let floor = floor_of(&s.prompt).ok_or_else(|| format!("{}: no floor", s.prompt))?;
                apps.push(appearance(&frames(i)?, SIZE, floor, &look));
            }
        }
        let k = kept(&apps);
        tally.appearances += k.len();
        tally.look += k.iter().filter(|x| x.look).count();
        tally.shape += k.iter().filter(|x| x.shape).count();
        tally.all += k.iter().filter(|x| x.all()).count();
        let marks: String = k
            .iter()
            .map(|x| match (x.look, x.shape) {
                (true, true) => 'K',
                (true, false) => 's',
                (false, true) => 'l',
                (false, false) => '-',
            })
            .collect();
        line += &format!("  {} {marks}", c.name);
    }
    for (i, s) in plan.shots.iter().enumerate().filter(|(_, s)| s.continues) {
        let (a, b) = (frames(i - 1)?, frames(i)?);
        let lead = s
            .characters
            .first()
            .and_then(|n| plan.character(n))
            .and_then(|c| Look::parse(&c.look))
            .ok_or_else(|| format!("shot {}: no lead character", i + 1))?;
        let floor = floor_of(&s.prompt).ok_or_else(|| format!("{}: no floor", s.prompt))?;
        let ok = carries_on_across(&a, &b, SIZE, floor, lead.colour);
        tally.seams += 1;
        tally.seams_kept += ok as usize;
        line += &format!(
            "  seam into shot {}: {}",
            i + 1,
            if ok { "kept" } else { "jump" }
        );
    }
    Ok(line)
}

fn measure(story: &Path, films: u64, first: u64, model: Option<&str>) -> Result<(), String> {
    let bin = sorrel_binary().ok_or(
        "no target/release/sorrel beside this example: run `cargo build --release -p sorrel-cli`",
    )?;
    let home = tempfile::tempdir().map_err(|e| e.to_string())?;
    let plan_path = home.path().join("plan.json");
    let story = story.to_str().ok_or("the story's path is not UTF-8")?;
    run(
        &bin,
        home.path(),
        model,
        &["film", story, "--plan-only", plan_path.to_str().unwrap()],
    )?;
    let text = std::fs::read_to_string(&plan_path).map_err(|e| e.to_string())?;
    let planned = Plan::from_json(&text, "plan.json").map_err(|e| e.to_string())?;
    println!("K: colour, count, size and shape kept; s: all but the shape; l: only the shape; -: neither");
    let mut tally = Tally::default();
    for set in first..first + films {
        let mut plan = planned.clone();
        for (k, c) in plan.characters.iter_mut().enumerate() {
            c.seed = Some(1000 * set + k as u64 + 77);
        }
        let p = home.path().join(format!("plan{set}.json"));
        let json = serde_json::to_string_pretty(&plan).map_err(|e| e.to_string())?;
        std::fs::write(&p, json).map_err(|e| e.to_string())?;
        let work = home.path().join(format!("work{set}"));
        let out = home.path().join(format!("film{set}.mp4"));
        run(
            &bin,
            home.path(),
            model,
            &[
                "film",
                p.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--work",
                work.to_str().unwrap(),
                "-q",
            ],
        )?;
        println!("seeds {set}:{}", score(&plan, &work, &mut tally)?);
    }
    let pc = |n: usize, of: usize| 100.0 * n as f64 / of.max(1) as f64;
    let t = &tally;
    println!(
        "{films} films, {} appearances: colour, count and size kept {} ({:.0} %); shape kept {} ({:.0} %); \
         all four {} ({:.0} %); continuous seams carried on {} of {} ({:.0} %)",
        t.appearances,
        t.look,
        pc(t.look, t.appearances),
        t.shape,
        pc(t.shape, t.appearances),
        t.all,
        pc(t.all, t.appearances),
        t.seams_kept,
        t.seams,
        pc(t.seams_kept, t.seams)
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(story) = args.first() else {
        eprintln!("usage: film_characters STORY.txt [FILMS] [FIRST_SEED_SET] [MODEL_DIR]");
        return ExitCode::from(2);
    };
    let num = |i: usize, d: u64| args.get(i).map_or(Ok(d), |v| v.parse::<u64>());
    let (Ok(films), Ok(first)) = (num(1, 8), num(2, 0)) else {
        eprintln!("FILMS and FIRST_SEED_SET are whole numbers");
        return ExitCode::from(2);
    };
    match measure(
        Path::new(story),
        films,
        first,
        args.get(3).map(String::as_str),
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
