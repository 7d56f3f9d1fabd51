//! The embedded default model through the binary: the README's run command writes a playable MP4 with no
//! `--model`; bad prompts and sizes get clear errors; `sorrel eval` on a fixed-seed subset keeps the scores
//! the shipped model reached (so a regression in the engine or the model fails CI).

use std::path::Path;
use std::process::{Command, Output};

use sorrel_testkit::ffprobe;

mod common;

fn sorrel(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sorrel"))
        .args(args)
        .env("SORREL_DATA_DIR", cache.join("data"))
        .env("SORREL_CACHE_DIR", cache.join("cache"))
        .env_remove("SORREL_MODEL")
        .output()
        .expect("run sorrel")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn the_readme_command_writes_a_playable_mp4_from_the_embedded_model() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("clip.mp4");
    let o = sorrel(
        &[
            "generate",
            "a red ball bounces on a blue floor",
            "-o",
            out.to_str().unwrap(),
            "-q",
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let p = ffprobe(&out);
    assert_eq!((p.width, p.height), (32, 32));
    assert_eq!(p.frames, 8);
    // A second run reuses the cached model folder: one folder, no partial copies.
    let o = sorrel(
        &[
            "generate",
            "a red ball bounces on a blue floor",
            "-o",
            out.to_str().unwrap(),
            "-q",
            "--seed",
            "3",
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let cached: Vec<_> = std::fs::read_dir(tmp.path().join("cache/models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        cached.len() == 1 && cached[0].starts_with("sorrel-toyworld-"),
        "{cached:?}"
    );
}

/// The clip in `npy` as RGB8 frames of 32x32.
fn rgb_frames(npy: &Path) -> Vec<Vec<u8>> {
    let (_, v) = sorrel_testkit::read_npy_f32(npy);
    v.chunks(32 * 32 * 3)
        .map(|f| f.iter().map(|x| (x * 255.0).round() as u8).collect())
        .collect()
}

/// The palette colour most of the bottom row has in the first frame: the floor of a clip whose prompt
/// does not name one.
fn floor_of(frame: &[u8]) -> Option<sorrel_toyworld::Colour> {
    let row = &frame[31 * 32 * 3..];
    let mut votes = std::collections::HashMap::new();
    for px in row.chunks(3) {
        if let Some(c) = sorrel_toyworld::Colour::classify([px[0], px[1], px[2]], 80.0) {
            *votes.entry(c).or_insert(0) += 1;
        }
    }
    votes.into_iter().max_by_key(|v| v.1).map(|v| v.0)
}

/// The README's prompts and plain sentences like them, as a new user types them (no size word, other
/// words than the grammar's), over 8 seeds each: the named colour, one object, the named motion.
#[test]
fn prompts_people_type_draw_what_they_say() {
    use sorrel_toyworld::{Colour, Motion, Scene, Shape, Size};
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "a red ball bounces on a blue floor",
            Colour::Red,
            Shape::Ball,
            Motion::Bounce,
            Some(Colour::Blue),
        ),
        (
            "a red ball moves to the right",
            Colour::Red,
            Shape::Ball,
            Motion::Right,
            None,
        ),
        (
            "a blue box moves to the left",
            Colour::Blue,
            Shape::Box,
            Motion::Left,
            None,
        ),
        (
            "A green cube slides left on the yellow ground.",
            Colour::Green,
            Shape::Box,
            Motion::Left,
            Some(Colour::Yellow),
        ),
    ];
    let mut report = Vec::new();
    let mut right = 0;
    for (prompt, colour, shape, motion, floor) in cases {
        for seed in 0..8 {
            let out = tmp.path().join(format!("{seed}.npy"));
            let seed_s = seed.to_string();
            let o = sorrel(
                &[
                    "generate",
                    prompt,
                    "--seed",
                    &seed_s,
                    "-q",
                    "--no-watermark",
                    "-o",
                    out.to_str().unwrap(),
                ],
                tmp.path(),
            );
            assert!(o.status.success(), "{}", stderr(&o));
            let frames = rgb_frames(&out);
            let floor_seen = floor_of(&frames[0]);
            let scene = Scene {
                count: 1,
                colour,
                shape,
                size: Size::Small,
                motion,
                floor: floor.or(floor_seen).unwrap_or(Colour::Blue),
                starts: vec![],
                amount: 0.0,
            };
            let s = sorrel_toyworld::score_clip(&frames, 32, &scene);
            let ok =
                s.colour && s.count && s.direction && floor.is_none_or(|f| floor_seen == Some(f));
            right += usize::from(ok);
            report.push(format!(
                "{prompt} / seed {seed}: {s:?}, floor {floor_seen:?}"
            ));
        }
    }
    // Measured on the shipped model: see docs/models/toyworld.md ("Prompts people type").
    eprintln!("{right} of 32 right");
    assert!(
        right >= PEOPLE_PROMPTS_RIGHT,
        "{right} of 32 right:\n{}",
        report.join("\n")
    );
}

/// Of the 32 clips of `prompts_people_type_draw_what_they_say`, how many the shipped model gets right
/// (colour, count, direction and the named floor), less one for a borderline clip on another CPU: 21 (the
/// README's bounce 6 of 8; the green cube 7; the two prompts that name no floor 6 and 2). The fifth
/// version got 0, the sixth 16, the seventh 18, the eighth 20.
const PEOPLE_PROMPTS_RIGHT: usize = 20;

#[test]
fn unknown_words_are_warned_about_and_bad_requests_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.mp4");
    let o_s = out.to_str().unwrap();
    let o = sorrel(
        &[
            "generate",
            "a purple ball bouncing on a blue floor",
            "-o",
            o_s,
            "-q",
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the tokenizer does not know: purple"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_file(&out).unwrap();
    for (args, needle) in [
        (vec!["generate", "  ", "-o", o_s], "the prompt is empty"),
        (
            vec!["generate", "a red ball", "--size", "1024x1024", "-o", o_s],
            "too large for sorrel-toyworld",
        ),
        (
            vec!["generate", "a red ball", "--seconds", "100000", "-o", o_s],
            "at most 600 s",
        ),
        (
            vec!["generate", "a red ball", "--seconds", "0", "-o", o_s],
            "positive length",
        ),
        (
            vec!["generate", "a red ball", "--seconds", "1e9", "-o", o_s],
            "eleven days",
        ),
        (
            vec!["generate", "a red ball", "--frames", "7", "-o", o_s],
            "multiple of 2",
        ),
        (
            vec!["generate", "a red ball", "--size", "36x36", "-o", o_s],
            "multiple of 8",
        ),
    ] {
        let o = sorrel(&args, tmp.path());
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
        assert!(!out.exists(), "{args:?} left an output file");
    }
}

fn frames_of(npy: &Path) -> usize {
    let (_, v) = sorrel_testkit::read_npy_f32(npy);
    v.len() / (32 * 32 * 3)
}

#[test]
fn every_mode_runs_on_the_embedded_model_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    let run = |args: &[&str]| {
        let o = sorrel(args, tmp.path());
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        stderr(&o)
    };
    let prompt = "a red ball moves to the right on a blue floor";
    // Longer than one window: rolled out.
    run(&[
        "generate",
        prompt,
        "--seconds",
        "3",
        "-q",
        "-o",
        &p("long.npy"),
    ]);
    assert_eq!(frames_of(tmp.path().join("long.npy").as_path()), 24);
    // Image to video from a rendered first frame of another size: scaled, and said so.
    let scene = sorrel_toyworld::Scene {
        count: 1,
        colour: sorrel_toyworld::Colour::Red,
        shape: sorrel_toyworld::Shape::Ball,
        size: sorrel_toyworld::Size::Big,
        motion: sorrel_toyworld::Motion::Right,
        floor: sorrel_toyworld::Colour::Blue,
        starts: vec![(0.3, 0.5)],
        amount: 0.4,
    };
    let world = sorrel_toyworld::WorldSize {
        size: 64,
        frames: 8,
    };
    let first = sorrel_toyworld::render(&scene, world).frames.swap_remove(0);
    image::RgbImage::from_raw(64, 64, first)
        .unwrap()
        .save(p("first.png"))
        .unwrap();
    let err = run(&[
        "generate",
        prompt,
        "--image",
        &p("first.png"),
        "-o",
        &p("i2v.mp4"),
    ]);
    assert!(
        err.contains("--image is 64x64; it is scaled to cover 32x32"),
        "{err}"
    );
    assert_eq!(ffprobe(&tmp.path().join("i2v.mp4")).frames, 8);
    // Extension both ways and joining: the whole clip comes out, the given frames around the new ones.
    run(&[
        "generate",
        prompt,
        "--extend",
        &p("i2v.mp4"),
        "--seconds",
        "1",
        "-q",
        "-o",
        &p("fwd.npy"),
    ]);
    assert_eq!(frames_of(tmp.path().join("fwd.npy").as_path()), 16);
    run(&[
        "generate",
        prompt,
        "--extend-backward",
        &p("i2v.mp4"),
        "--frames",
        "6",
        "-q",
        "-o",
        &p("back.npy"),
    ]);
    assert_eq!(frames_of(tmp.path().join("back.npy").as_path()), 14);
    // Without --prompt the embedded model joins uncaptioned (the clips show the scene): no sentence of
    // words it does not know.
    let o = sorrel(
        &[
            "connect",
            &p("i2v.mp4"),
            &p("i2v.mp4"),
            "--frames",
            "4",
            "-q",
            "-o",
            &p("join.npy"),
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("does not know"), "{}", stderr(&o));
    assert_eq!(frames_of(tmp.path().join("join.npy").as_path()), 20);
    let o = sorrel(
        &[
            "connect",
            &p("i2v.mp4"),
            &p("i2v.mp4"),
            "--frames",
            "3",
            "-o",
            &p("bad.npy"),
        ],
        tmp.path(),
    );
    assert!(
        !o.status.success() && stderr(&o).contains("pairs of 2"),
        "{}",
        stderr(&o)
    );
    assert!(!tmp.path().join("bad.npy").exists());
}

#[test]
fn the_embedded_model_matches_diffusers_on_its_own_weights() {
    // tools/reference/run_toyworld_model.py ran diffusers' WanPipeline on models/sorrel-toyworld from
    // this noise; Sorrel starts from the same noise.
    let fixture = sorrel_testkit::fixture("toyworld").join("diffusers.safetensors");
    let mut r = candle_core::safetensors::load(&fixture, &candle_core::Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let noise = tmp.path().join("noise.safetensors");
    candle_core::safetensors::save(
        &[("latents".to_string(), r.remove("latents").unwrap())]
            .into_iter()
            .collect(),
        &noise,
    )
    .unwrap();
    let out = tmp.path().join("clip.npy");
    let o = sorrel(
        &[
            "generate",
            "two small red balls bounce on a blue floor",
            "--init-latents",
            noise.to_str().unwrap(),
            "--no-watermark",
            "-q",
            "-o",
            out.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, got) = sorrel_testkit::read_npy_f32(&out);
    let want = &r["frames"];
    let got = candle_core::Tensor::from_vec(got, want.dims(), &candle_core::Device::Cpu).unwrap();
    let err = sorrel_testkit::max_abs_diff(&got, want);
    // f32 on both sides; only the order of sums differs, amplified over 25 steps with guidance 1.5: the same
    // 2e-3 bound (half a level of 8-bit colour) as the random-weight fixtures' parity tests.
    eprintln!("text to video: {err:.2e} from diffusers");
    assert!(err <= 2e-3, "frames differ from diffusers by {err}");
}

#[test]
fn extension_and_image_to_video_windows_match_diffusers_parts_on_the_embedded_model() {
    // tools/reference/run_toyworld_rollout.py continued the last 4 frames of the diffusers fixture's clip by
    // one window (4 new frames) with diffusers' transformer, scheduler and VAE, from this noise.
    let fixture = sorrel_testkit::fixture("toyworld").join("rollout.safetensors");
    let r = candle_core::safetensors::load(&fixture, &candle_core::Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let clip = tmp.path().join("context.apng");
    common::write_apng(&r["context"], &clip);
    let noise = tmp.path().join("noise.safetensors");
    candle_core::safetensors::save(
        &[("latents".to_string(), r["latents"].clone())]
            .into_iter()
            .collect(),
        &noise,
    )
    .unwrap();
    let out = tmp.path().join("clip.npy");
    let o = sorrel(
        &[
            "generate",
            "a red ball moves to the right on a blue floor",
            "--extend",
            clip.to_str().unwrap(),
            "--frames",
            "4",
            "--init-latents",
            noise.to_str().unwrap(),
            "--no-watermark",
            "-q",
            "-o",
            out.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, got) = sorrel_testkit::read_npy_f32(&out);
    // The whole clip: the 4 given frames, then the 4 new ones.
    let px = 32 * 32 * 3;
    assert_eq!(got.len(), 8 * px);
    let want = &r["frames"];
    let got = candle_core::Tensor::from_vec(
        got[4 * px..].to_vec(),
        want.dims(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let err = sorrel_testkit::max_abs_diff(&got, want);
    // The same bound as the text-to-video parity above: f32 on both sides, 25 guided steps.
    eprintln!("extension window: {err:.2e} from diffusers");
    assert!(err <= 2e-3, "new frames differ from diffusers by {err}");

    // Image to video from the clip's first frame: the picture is frame 0, the 7 after it match.
    let picture = tmp.path().join("first.png");
    let (_, h, w, _) = r["image"].unsqueeze(0).unwrap().dims4().unwrap();
    image::RgbImage::from_raw(
        w as u32,
        h as u32,
        r["image"].flatten_all().unwrap().to_vec1::<u8>().unwrap(),
    )
    .unwrap()
    .save(&picture)
    .unwrap();
    candle_core::safetensors::save(
        &[("latents".to_string(), r["image.latents"].clone())]
            .into_iter()
            .collect(),
        &noise,
    )
    .unwrap();
    let o = sorrel(
        &[
            "generate",
            "a red ball moves to the right on a blue floor",
            "--image",
            picture.to_str().unwrap(),
            "--init-latents",
            noise.to_str().unwrap(),
            "--no-watermark",
            "-q",
            "-o",
            out.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, got) = sorrel_testkit::read_npy_f32(&out);
    assert_eq!(got.len(), 8 * px);
    let first: Vec<u8> = got[..px]
        .iter()
        .map(|v| (v * 255.0).round() as u8)
        .collect();
    assert_eq!(
        first,
        r["image"].flatten_all().unwrap().to_vec1::<u8>().unwrap()
    );
    let want = &r["image.frames"];
    let got =
        candle_core::Tensor::from_vec(got[px..].to_vec(), want.dims(), &candle_core::Device::Cpu)
            .unwrap();
    let err = sorrel_testkit::max_abs_diff(&got, want);
    eprintln!("image-to-video window: {err:.2e} from diffusers");
    assert!(
        err <= 2e-3,
        "image-to-video frames differ from diffusers by {err}"
    );
}

/// What the shipped VAE's round trip of these 16 prompts' rendered scenes scores (`autoencoded` in the
/// eval report): it keeps colours, counts, motion and constant objects, and loses some box corners.
const AUTOENCODED: [(&str, f64); 5] = [
    ("colour", 100.0),
    ("shape", 81.25),
    ("count", 100.0),
    ("direction", 100.0),
    ("permanence", 100.0),
];

/// (JSON pointer into `sorrel eval --json`, the shipped model's score on the test's subset, margin: one
/// prompt of 16, one rollout of 4, two windows of 40, four window boundaries of 72, one bounce window of 10).
const MODE_ROWS: [(&str, f64, f64); 19] = [
    ("/seen/colour", 100.0, 6.25),
    ("/seen/shape", 87.5, 6.25),
    ("/seen/count", 100.0, 6.25),
    ("/seen/direction", 100.0, 6.25),
    ("/seen/permanence", 100.0, 6.25),
    ("/paraphrase/colour", 100.0, 6.25),
    ("/paraphrase/count", 87.5, 6.25),
    ("/paraphrase/direction", 100.0, 6.25),
    // 11 of 16 (the eighth version 15; over 100 clips 90 % against 92 %).
    ("/image/kept", 68.75, 6.25),
    ("/image/scores/direction", 100.0, 6.25),
    ("/join/matches", 93.75, 6.25),
    ("/join/count", 100.0, 6.25),
    // All 4 rollouts keep their objects for 10 s; one of 4 is 25 points.
    ("/rollout/kept", 100.0, 25.0),
    ("/rollout/count_windows", 100.0, 5.0),
    ("/rollout/colour_windows", 100.0, 5.0),
    ("/rollout/size_windows", 100.0, 5.0),
    ("/rollout/continuous", 98.6, 5.6),
    ("/rollout/plausible_windows", 90.0, 10.0),
    // 6 of 19 travelling windows; two windows of 19 is 10.5 points.
    ("/rollout/moving_windows", 31.6, 10.6),
];

#[test]
fn eval_of_a_fixed_subset_keeps_the_shipped_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("eval.json");
    let o = sorrel(
        &[
            "eval",
            "--clips",
            "16",
            "--rollouts",
            "4",
            "--rollout-seconds",
            "10",
            "-q",
            "--json",
            json.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    // Every mode's row on a fixed subset (16 prompts each; 4 rollouts of 10 s, 40 windows), at least the
    // shipped model's scores less the margin: one prompt of 16 (6.25 points), two windows of 40 (5 points).
    for (pointer, reached, margin) in MODE_ROWS {
        let got = r
            .pointer(pointer)
            .and_then(|v| v.as_f64())
            .unwrap_or_else(|| panic!("{pointer} missing from the report"));
        assert!(
            got >= reached - margin,
            "{pointer}: {got} % (the shipped model: {reached} %)"
        );
    }
    for measure in ["colour", "shape", "count", "direction", "permanence"] {
        let truth = r["ground_truth"][measure].as_f64().unwrap();
        assert_eq!(
            truth, 100.0,
            "the scorer fails the ground truth on {measure}"
        );
    }
    // The ground truth through the shipped VAE, which bounds what generation can reach; same margin.
    for (measure, reached) in AUTOENCODED {
        let got = r["autoencoded"][measure].as_f64().unwrap();
        assert!(
            got >= reached - 6.25,
            "{measure} through the VAE: {got} % (the shipped VAE: {reached} %)"
        );
    }
    // The world's own rollouts through the VAE: the scorer passes them (kept all along, travelling), and
    // the bounce windows' ceiling (18 of 20 on this VAE) is reported.
    let ceiling = &r["rollout"]["through_vae"];
    assert_eq!(ceiling[0].as_f64(), Some(100.0), "{ceiling}");
    assert!(ceiling[1].as_f64().unwrap() >= 85.0, "{ceiling}");
    assert_eq!(ceiling[2].as_f64(), Some(100.0), "{ceiling}");
    assert_eq!(r["clips"].as_array().unwrap().len(), 16);
}

#[test]
fn train_runs_every_stage_refines_a_folder_written_without_the_decoder_stage_and_continues_one() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--smoke", "-q"];
        args.extend_from_slice(extra);
        sorrel(&args, tmp.path())
    };
    let o = train(&[
        "--decoder-steps",
        "0",
        "--out",
        &p("plain"),
        "--work",
        &p("w1"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = train(&[
        "--refine",
        &p("plain"),
        "--out",
        &p("refined"),
        "--work",
        &p("w2"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = std::fs::read_to_string(tmp.path().join("w2/loss.csv")).unwrap();
    assert!(log.contains("decoder,4,"), "{log}");
    let defaults: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tmp.path().join("refined/sorrel_defaults.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(defaults["recipe"]["decoder_steps"], 4);
    // A folder already refined is refused with the reason, and nothing is written.
    let o = train(&[
        "--refine",
        &p("refined"),
        "--out",
        &p("again"),
        "--work",
        &p("w3"),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already refined"), "{}", stderr(&o));
    assert!(!tmp.path().join("again").exists());
    // Continuing a folder with the ways of giving frames weighted: the weights are what the folder records.
    let o = train(&[
        "--from",
        &p("plain"),
        "--out",
        &p("cont"),
        "--work",
        &p("w4"),
        "--context-share",
        "1",
        "--context-kinds",
        "0,3,0,1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let defaults: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tmp.path().join("cont/sorrel_defaults.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        defaults["recipe"]["context_kinds"],
        serde_json::json!([0.0, 3.0, 0.0, 1.0])
    );
    // Weights that are not four numbers of at least 0, not all 0, are refused before anything is written.
    for (i, kinds) in ["1,2", "1,-1,1,1", "0,0,0,0"].into_iter().enumerate() {
        let out = p(&format!("bad{i}"));
        let o = train(&[
            "--from",
            &p("plain"),
            "--out",
            &out,
            "--work",
            &p(&format!("wb{i}")),
            "--context-kinds",
            kinds,
        ]);
        assert!(!o.status.success(), "{kinds} was taken");
        assert!(stderr(&o).contains("context"), "{kinds}: {}", stderr(&o));
        assert!(!std::path::Path::new(&out).exists());
    }
}
