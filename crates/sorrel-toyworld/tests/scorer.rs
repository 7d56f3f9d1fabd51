//! The scorer is only useful if it is right: 100 % on rendered ground truth, about 0 % on noise and on blank
//! frames, and it catches each kind of mistake a model makes.

use rand::{Rng, SeedableRng};
use sorrel_toyworld::scene::FLOOR_TOP;
use sorrel_toyworld::{render, score_clip, Motion, Scene, Split, Summary, WorldSize};

fn scenes(split: Split, n: u64) -> Vec<Scene> {
    (0..n).map(|s| Scene::sample(1000 + s, split)).collect()
}

#[test]
fn ground_truth_scores_100_percent_at_32_and_64_pixels() {
    for size in [32, 64] {
        let world = WorldSize { size, frames: 17 };
        for split in [Split::Train, Split::HeldOut] {
            let scored: Vec<_> = scenes(split, 300)
                .iter()
                .map(|s| {
                    let clip = render(s, world);
                    let sc = score_clip(&clip.frames, size, s);
                    assert!(
                        sc.all(),
                        "{size}px {split:?}: {sc:?} for {:?} `{}`",
                        s,
                        sorrel_toyworld::caption(s)
                    );
                    sc
                })
                .collect();
            let sum = Summary::of(&scored);
            assert_eq!(sum.all, 100.0);
            assert!(
                sum.bounce == 100.0,
                "some bounce clips were scored: {sum:?}"
            );
        }
    }
}

#[test]
fn noise_and_blank_frames_score_nothing() {
    let world = WorldSize::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let scored: Vec<_> = scenes(Split::Train, 200)
        .iter()
        .map(|s| {
            let noise: Vec<Vec<u8>> = (0..world.frames)
                .map(|_| {
                    (0..world.size * world.size * 3)
                        .map(|_| rng.random::<u8>())
                        .collect()
                })
                .collect();
            score_clip(&noise, world.size, s)
        })
        .collect();
    let sum = Summary::of(&scored);
    assert!(
        sum.colour <= 2.0 && sum.count <= 10.0 && sum.all == 0.0,
        "{sum:?}"
    );
    let blank = vec![vec![16u8; world.size * world.size * 3]; world.frames];
    let s = Scene::sample(1, Split::Train);
    let sc = score_clip(&blank, world.size, &s);
    assert!(
        !sc.colour && !sc.count && !sc.direction && !sc.permanence && !sc.shape,
        "{sc:?}"
    );
}

#[test]
fn each_mistake_is_caught() {
    let world = WorldSize::default();
    let find = |pred: &dyn Fn(&Scene) -> bool| {
        (0..)
            .map(|s| Scene::sample(s, Split::Train))
            .find(|s| pred(s))
            .unwrap()
    };
    // Wrong direction: a clip moving left, played backwards.
    let left = find(&|s| s.motion == Motion::Left);
    let mut clip = render(&left, world);
    assert!(score_clip(&clip.frames, world.size, &left).direction);
    clip.frames.reverse();
    assert!(!score_clip(&clip.frames, world.size, &left).direction);

    // Wrong count and colour: scored against a caption with another count / colour.
    let two = find(&|s| s.count == 2 && s.motion == Motion::Right);
    let clip = render(&two, world);
    let mut other = two.clone();
    other.count = 3;
    assert!(!score_clip(&clip.frames, world.size, &other).count);
    let mut other = two.clone();
    other.colour = sorrel_toyworld::COLOURS
        .into_iter()
        .find(|&c| c != two.colour && c != two.floor)
        .unwrap();
    assert!(!score_clip(&clip.frames, world.size, &other).colour);

    // Wrong shape.
    let ball =
        find(&|s| s.shape == sorrel_toyworld::Shape::Ball && s.size == sorrel_toyworld::Size::Big);
    let clip = render(&ball, world);
    for shape in [
        sorrel_toyworld::Shape::Box,
        sorrel_toyworld::Shape::Triangle,
    ] {
        let mut other = ball.clone();
        other.shape = shape;
        assert!(
            !score_clip(&clip.frames, world.size, &other).shape,
            "{shape:?}"
        );
    }

    // An object that vanishes for a few frames breaks permanence.
    let mut clip = render(&two, world);
    for f in &mut clip.frames[6..10] {
        for px in f.chunks_mut(3) {
            if px == two.colour.rgb() {
                px.copy_from_slice(&[16, 16, 20]);
            }
        }
    }
    assert!(!score_clip(&clip.frames, world.size, &two).permanence);

    // Bounces: falling through the floor, or moving at constant speed, are implausible.
    let bounce = find(&|s| s.motion == Motion::Bounce && s.count == 1);
    assert_eq!(
        score_clip(&render(&bounce, world).frames, world.size, &bounce).bounce,
        Some(true)
    );
    let mut sunk = bounce.clone();
    sunk.motion = Motion::Down;
    sunk.amount = FLOOR_TOP + 0.1 - sunk.starts[0].1;
    let through = render(&sunk, world);
    assert_eq!(
        score_clip(&through.frames, world.size, &bounce).bounce,
        Some(false),
        "sinks into the floor"
    );
    let mut linear = bounce.clone();
    linear.motion = Motion::Down;
    let ground = FLOOR_TOP - bounce.size.radius();
    linear.amount = (ground - bounce.starts[0].1) * 0.999;
    let r = render(&linear, world);
    let sc = score_clip(&r.frames, world.size, &bounce);
    assert_eq!(
        sc.bounce,
        Some(false),
        "constant speed is not gravity: {sc:?}"
    );
}
