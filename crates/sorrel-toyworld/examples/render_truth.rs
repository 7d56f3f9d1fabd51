//! The toy world's ground truth of one scene as raw RGB8 frames (32x32, 8 fps) on stdout, its caption on
//! stderr: what a model's continuation of the same frames should do. Used to look at how the embedded
//! model continues a clip it did not make (`sorrel generate --extend`), e.g.
//!
//! ```sh
//! cargo run --release -p sorrel-toyworld --example render_truth -- 5 bounce 32 12 > rest.rgb
//! ffmpeg -f rawvideo -pix_fmt rgb24 -s 32x32 -r 8 -i rest.rgb -f apng rest.apng
//! ```
use std::io::Write;
use std::process::ExitCode;

use sorrel_toyworld::scene::MOTIONS;
use sorrel_toyworld::{caption, render_span, Scene, Split, WorldSize};

const USAGE: &str = "usage: render_truth SEED MOTION START FRAMES (MOTION: left, right, up, down, bounce, \
                     grow or shrink; the first one-object training scene from SEED on that does it)";

fn main() -> ExitCode {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| a.get(i).and_then(|s| s.parse::<u64>().ok());
    let motion = a.get(1).and_then(|m| {
        MOTIONS
            .into_iter()
            .find(|x| format!("{x:?}").eq_ignore_ascii_case(m))
    });
    let (Some(seed), Some(motion), Some(start), Some(frames)) = (num(0), motion, num(2), num(3))
    else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let Some(scene) = (seed..seed + 10_000)
        .map(|s| Scene::sample(s, Split::Train))
        .find(|s| s.motion == motion && s.count == 1)
    else {
        eprintln!("no one-object {motion:?} scene in 10,000 seeds from {seed}");
        return ExitCode::FAILURE;
    };
    eprintln!("{}", caption(&scene));
    let world = WorldSize {
        size: 32,
        frames: 8,
    };
    let clip = render_span(&scene, world, start as usize, frames as usize);
    let mut out = std::io::stdout().lock();
    for f in clip.frames {
        if out.write_all(&f).is_err() {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
