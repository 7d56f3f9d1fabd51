//! SkyReels-V2 diffusion forcing against diffusers 0.42.1 (fp32, 48x32): the step matrix for several
//! settings, a 41-frame video in four overlapping windows with addnoise_condition (synchronous), and one
//! asynchronous window (ar_step 1, causal blocks of 2 latent frames, block-causal attention), image to video and
//! extension of a clip (each in three windows), replaying
//! diffusers' own noise draws. Fixtures: `tools/reference/make_skyreels_fixtures.py`.

use std::collections::HashMap;

use candle_core::Tensor;
use sorrel_core::Result;
use sorrel_pipeline::forcing::schedule::step_matrix;
use sorrel_pipeline::forcing::ForcingNoise;
use sorrel_pipeline::{Event, Forcing, GenerateRequest, LoadOptions, Mode, WanPipeline};
use sorrel_testkit::{fixture, max_abs, max_abs_diff, reference, reference_metadata};

const NAME: &str = "skyreels-tiny-df";

/// diffusers' draws, in the order its pipeline made them.
struct Replay<'a> {
    r: &'a HashMap<String, Tensor>,
    prefix: &'a str,
    conditions: usize,
}

impl ForcingNoise for Replay<'_> {
    fn window(&mut self, k: usize, shape: &[usize]) -> Result<Tensor> {
        let t = self.r[&format!("{}.window{k}.noise", self.prefix)].clone();
        assert_eq!(t.dims(), shape, "window {k}'s noise");
        Ok(t)
    }
    fn condition(&mut self, shape: &[usize]) -> Result<Tensor> {
        let t = self.r[&format!("{}.addnoise{}", self.prefix, self.conditions)].clone();
        self.conditions += 1;
        assert_eq!(t.dims(), shape, "addnoise draw {}", self.conditions);
        Ok(t)
    }
}

fn to_vec2(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

#[test]
fn step_matrices_match_diffusers() {
    let r = reference(NAME);
    let mut n = 0;
    while let Some(settings) = r.get(&format!("matrix.{n}.settings")) {
        let s: Vec<usize> = settings
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|&v| v as usize)
            .collect();
        let template = r[&format!("matrix.{n}.template")].to_vec1::<f32>().unwrap();
        let m = step_matrix(s[0], &template, s[2], s[3], s[4], s[5]).unwrap();
        assert_eq!(
            m.timesteps,
            to_vec2(&r[&format!("matrix.{n}.steps")]),
            "{s:?}"
        );
        let update: Vec<Vec<bool>> = to_vec2(&r[&format!("matrix.{n}.update")])
            .iter()
            .map(|row| row.iter().map(|&v| v == 1.0).collect())
            .collect();
        assert_eq!(m.update, update, "{s:?}");
        let intervals: Vec<(usize, usize)> = to_vec2(&r[&format!("matrix.{n}.interval")])
            .iter()
            .map(|p| (p[0] as usize, p[1] as usize))
            .collect();
        assert_eq!(m.intervals, intervals, "{s:?}");
        n += 1;
    }
    assert_eq!(n, 5, "matrix settings in the fixture");
}

#[test]
fn asynchronous_steps_below_the_minimum_are_refused() {
    // 20 latent frames in blocks of 5 with 10 in view: each block must trail by at least 30 / 2 = 15.
    let template: Vec<f32> = (0..30).map(|i| 999.0 - 33.0 * i as f32).collect();
    let e = step_matrix(20, &template, 10, 5, 0, 5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 15"), "{e}");
}

fn request(prefix: &str) -> GenerateRequest {
    let m = reference_metadata(NAME);
    let get = |k: &str| m[&format!("{prefix}.{k}")].clone();
    let num = |k: &str| get(k).parse::<usize>().unwrap();
    GenerateRequest {
        prompt: m["prompt"].clone(),
        negative_prompt: m["negative_prompt"].clone(),
        width: m["width"].parse().unwrap(),
        height: m["height"].parse().unwrap(),
        frames: num("num_frames"),
        steps: num("num_inference_steps"),
        guidance: get("guidance_scale").parse().unwrap(),
        max_sequence_length: Some(num("max_sequence_length")),
        forcing: Forcing {
            window_frames: Some(num("base_num_frames")),
            overlap_frames: m
                .get(&format!("{prefix}.overlap_history"))
                .map(|v| v.parse().unwrap()),
            addnoise: m
                .get(&format!("{prefix}.addnoise_condition"))
                .map(|v| v.parse().unwrap()),
            ar_step: num("ar_step"),
            causal_block: m
                .get(&format!("{prefix}.causal_block_size"))
                .map(|v| v.parse().unwrap()),
            sample_fps: Some(get("fps").parse().unwrap()),
        },
        ..GenerateRequest::default()
    }
}

/// Generates with diffusers' draws (from the fixture's picture when it has one); returns the frames' error and
/// the iterations run.
fn run(prefix: &str) -> (f32, usize) {
    let r = reference(NAME);
    let pipe = WanPipeline::load(
        &fixture(&format!("{NAME}/pipeline")),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(
        pipe.info.modes,
        vec![Mode::TextToVideo, Mode::ImageToVideo, Mode::Continue]
    );
    let mut req = request(prefix);
    // Image to video: the fixture's picture is the first frame.
    if let Some(image) = r.get(&format!("{prefix}.image")) {
        let (h, w, _) = image.dims3().unwrap();
        req.conditioning = sorrel_pipeline::Conditioning::Image {
            first: sorrel_pipeline::Picture {
                width: w,
                height: h,
                rgb: image.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
            },
            last: None,
        };
    }
    // Extension: the fixture's clip is continued; diffusers' num_frames counts the repeated frames too.
    if let Some(video) = r.get(&format!("{prefix}.video")) {
        let (f, h, w, _) = video.dims4().unwrap();
        let before = (0..f)
            .map(|i| sorrel_pipeline::Picture {
                width: w,
                height: h,
                rgb: video
                    .get(i)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<u8>()
                    .unwrap(),
            })
            .collect();
        req.frames -= req.forcing.overlap_frames.unwrap();
        req.conditioning = sorrel_pipeline::Conditioning::Continue {
            before,
            after: vec![],
        };
    }
    req.check_for(&pipe.info).unwrap();
    let mut noise = Replay {
        r: &r,
        prefix,
        conditions: 0,
    };
    let mut iterations = 0;
    let mut worst = 0f32;
    let video = pipe
        .generate_forcing(
            &req,
            &mut |e| {
                iterations += matches!(e, Event::Step { .. }) as usize;
                true
            },
            &mut noise,
            &mut |i, latents| {
                worst = worst.max(max_abs_diff(
                    latents,
                    &r[&format!("{prefix}.row{i}.latents")],
                ));
            },
        )
        .unwrap();
    println!("{prefix}: latents after each iteration, worst max abs err {worst:e}");
    // 1e-4: per-step latents in fp32, as the other pipeline tests bound them.
    assert!(
        worst <= 1e-4,
        "{prefix}: an iteration's latents differ by {worst}"
    );
    let draws = (0..)
        .take_while(|i| r.contains_key(&format!("{prefix}.addnoise{i}")))
        .count();
    assert_eq!(noise.conditions, draws, "{prefix}: addnoise draws");
    let mut want = r[&format!("{prefix}.frames")].squeeze(0).unwrap();
    // diffusers returns an extension after the clip and the repeated frames decoded again: the new frames are
    // its last ones.
    let made = video.frames.dim(0).unwrap();
    if r.contains_key(&format!("{prefix}.video")) {
        let all = want.dim(0).unwrap();
        want = want.narrow(0, all - made, made).unwrap();
    }
    assert_eq!(video.frames.dims(), want.dims());
    assert!(max_abs(&want) > 0.1);
    (max_abs_diff(&video.frames, &want), iterations)
}

/// The bound for a whole pipeline in fp32, as the text-to-video tests use.
const FRAMES_BOUND: f32 = 2e-3;

#[test]
fn long_video_in_overlapping_windows_matches_diffusers() {
    let (err, iterations) = run("long");
    println!("long (4 windows, addnoise 20): frames max abs err {err:e}");
    assert!(err <= FRAMES_BOUND, "frames differ from diffusers by {err}");
    // Two transformer calls (guidance) per iteration.
    let calls = (0..)
        .take_while(|i| reference(NAME).contains_key(&format!("long.call{i}.out")))
        .count();
    assert_eq!(iterations * 2, calls);
}

#[test]
fn image_to_video_in_windows_matches_diffusers() {
    let (err, iterations) = run("i2v");
    println!("i2v (3 windows, addnoise 20): frames max abs err {err:e}");
    assert!(err <= FRAMES_BOUND, "frames differ from diffusers by {err}");
    assert_eq!(iterations, 9);
}

/// Extension: a 13-frame clip continued by 24 frames, its last 9 frames (3 latent) repeated at the start of the
/// first of three windows.
#[test]
fn extension_in_windows_matches_diffusers() {
    let (err, iterations) = run("v2v");
    println!("v2v (3 windows, addnoise 20): frames max abs err {err:e}");
    assert!(err <= FRAMES_BOUND, "frames differ from diffusers by {err}");
    assert_eq!(iterations, 9);
}

#[test]
fn asynchronous_window_matches_diffusers() {
    let (err, iterations) = run("async");
    println!("async (ar_step 1, causal blocks of 2): frames max abs err {err:e}");
    assert!(err <= FRAMES_BOUND, "frames differ from diffusers by {err}");
    assert_eq!(iterations, 5);
}

#[test]
fn window_settings_the_model_cannot_run_are_refused() {
    let info = WanPipeline::describe(&fixture(&format!("{NAME}/pipeline"))).unwrap();
    assert_eq!(info.diffusion_forcing, Some(1));
    // SkyReels-V2 DF's own rate and window.
    assert_eq!((info.defaults.fps, info.defaults.frames), (24, 97));
    let with = |frames: usize, forcing: Forcing| GenerateRequest {
        width: 48,
        height: 32,
        frames,
        forcing,
        ..GenerateRequest::default()
    };
    let refused = |req: GenerateRequest, needle: &str| {
        let e = req.check_for(&info).unwrap_err().to_string();
        assert!(e.contains(needle), "expected {needle:?} in: {e}");
    };
    let window = |w: usize, o: usize| Forcing {
        window_frames: Some(w),
        overlap_frames: Some(o),
        ..Forcing::default()
    };
    // Windows that cannot make progress.
    refused(
        with(41, window(17, 17)),
        "overlap must be at least 1 and less than the window",
    );
    // Lengths the VAE does not make.
    refused(with(41, window(18, 9)), "--window-frames 18");
    refused(with(41, window(17, 10)), "--overlap-frames 10");
    // Causal blocks that do not divide a window (11 latent frames in windows of 5).
    refused(
        with(
            41,
            Forcing {
                causal_block: Some(2),
                ..window(17, 9)
            },
        ),
        "not whole causal blocks of 2",
    );
    // Longer than the model allows (ten minutes at 24 fps).
    refused(with(24 * 601 + 1, window(17, 9)), "longer than");
    // A last frame: this model starts from a first frame only.
    let pic = sorrel_pipeline::Picture {
        width: 48,
        height: 32,
        rgb: vec![0; 48 * 32 * 3],
    };
    refused(
        GenerateRequest {
            conditioning: sorrel_pipeline::Conditioning::Image {
                first: pic.clone(),
                last: Some(pic.clone()),
            },
            ..with(17, Forcing::default())
        },
        "cannot do first/last-frame",
    );
    // Extension: forward only, from a clip at least as long as the overlap, by whole latent frames.
    let clip = |n: usize| vec![pic.clone(); n];
    let extend = |new: usize, before: Vec<_>, after: Vec<_>| GenerateRequest {
        conditioning: sorrel_pipeline::Conditioning::Continue { before, after },
        ..with(new, window(17, 9))
    };
    refused(extend(24, clip(13), clip(13)), "forward only");
    refused(extend(24, vec![], clip(13)), "forward only");
    refused(extend(24, clip(5), vec![]), "fewer than the 9");
    refused(
        extend(25, clip(13), vec![]),
        "multiple of 4 (e.g. 24 or 28)",
    );
    extend(24, clip(13), vec![]).check_for(&info).unwrap();
    // And a good one passes.
    with(41, window(17, 9)).check_for(&info).unwrap();
}
