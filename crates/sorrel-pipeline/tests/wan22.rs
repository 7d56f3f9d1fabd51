//! Wan2.2 against diffusers 0.42.1 (fp32): TI2V on its own VAE (96x64, 13 frames, 4 steps) as text-to-video and
//! as image-to-video (first latent frame held at t = 0), the latents after every step and the frames; and the
//! requests a Wan2.2 model refuses. Fixtures: `tools/reference/make_wan22_fixtures.py`.

use sorrel_pipeline::{Conditioning, GenerateRequest, LoadOptions, Mode, WanPipeline};
use sorrel_testkit::{fixture, max_abs_diff, reference, reference_metadata};

mod common;
use common::{check_steps, picture};

const TI2V: &str = "wan22-tiny-ti2v";

fn load(dir: &str) -> WanPipeline {
    WanPipeline::load(&fixture(dir), &LoadOptions::default()).unwrap()
}

#[test]
fn ti2v_folder_is_described_as_wan22() {
    let info = WanPipeline::describe(&fixture(&format!("{TI2V}/pipeline"))).unwrap();
    assert!(info.expand_timesteps);
    assert_eq!(
        info.modes,
        vec![Mode::TextToVideo, Mode::ImageToVideo, Mode::VideoToVideo]
    );
    assert_eq!(info.compression, (16, 4));
    // Wan2.2 TI2V-5B's own size, length and rate.
    let d = &info.defaults;
    assert_eq!((d.width, d.height, d.frames, d.fps), (1280, 704, 121, 24));
}

#[test]
fn ti2v_text_to_video_matches_diffusers() {
    let (r, meta) = (reference(TI2V), reference_metadata(TI2V));
    let pipe = load(&format!("{TI2V}/pipeline"));
    let req = common::request_from(&meta, &r["t2v.latents_init"]);
    let steps = check_steps("ti2v t2v", &pipe, &req, &r["t2v.frames"], &r, "t2v.");
    assert_eq!(steps, req.steps);
}

#[test]
fn ti2v_image_to_video_matches_diffusers() {
    let (r, meta) = (reference(TI2V), reference_metadata(TI2V));
    let pipe = load(&format!("{TI2V}/pipeline"));
    let first = picture(&r["i2v.image"]);
    let cond = pipe.encode_pictures(&[&first], (96, 64)).unwrap();
    let err = max_abs_diff(&cond, &r["i2v.condition"]);
    println!("ti2v i2v: first-frame latents max abs err {err:e}");
    assert!(err <= 1e-4, "first-frame latents differ by {err}");
    let req = GenerateRequest {
        conditioning: Conditioning::Image { first, last: None },
        ..common::request_from(&meta, &r["i2v.latents_init"])
    };
    check_steps("ti2v i2v", &pipe, &req, &r["i2v.frames"], &r, "i2v.");
}

#[test]
fn wan22_sizes_must_be_multiples_of_32() {
    let info = WanPipeline::describe(&fixture(&format!("{TI2V}/pipeline"))).unwrap();
    let req = GenerateRequest {
        width: 96,
        height: 48,
        frames: 13,
        ..GenerateRequest::default()
    };
    let e = req.check_for(&info).unwrap_err().to_string();
    assert!(
        e.contains("96x48") && e.contains("height of 32"),
        "unexpected error: {e}"
    );
}

#[test]
fn ti2v_refuses_a_last_frame() {
    let (r, _) = (reference(TI2V), ());
    let info = WanPipeline::describe(&fixture(&format!("{TI2V}/pipeline"))).unwrap();
    let pic = picture(&r["i2v.image"]);
    let req = GenerateRequest {
        width: 96,
        height: 64,
        frames: 13,
        conditioning: Conditioning::Image {
            first: pic.clone(),
            last: Some(pic),
        },
        ..GenerateRequest::default()
    };
    let e = req.check_for(&info).unwrap_err().to_string();
    assert!(e.contains("cannot do first/last-frame"), "unexpected: {e}");
}

const A14B: &str = "wan22-tiny-a14b";
const A14B_I2V: &str = "wan22-tiny-a14b-i2v";

#[test]
fn a14b_folders_are_described_as_two_experts() {
    let t2v = WanPipeline::describe(&fixture(&format!("{A14B}/pipeline"))).unwrap();
    assert_eq!(t2v.boundary_ratio, Some(0.875));
    assert_eq!(t2v.modes, vec![Mode::TextToVideo, Mode::VideoToVideo]);
    let d = &t2v.defaults;
    assert_eq!((d.width, d.height, d.frames, d.fps), (1280, 720, 81, 16));
    assert_eq!((d.steps, d.guidance, d.guidance_2), (40, 4.0, Some(3.0)));
    let i2v = WanPipeline::describe(&fixture(&format!("{A14B_I2V}/pipeline"))).unwrap();
    assert_eq!(i2v.boundary_ratio, Some(0.9));
    assert_eq!(i2v.modes, vec![Mode::ImageToVideo]);
    assert_eq!(
        (i2v.defaults.guidance, i2v.defaults.guidance_2),
        (3.5, None)
    );
}

/// Runs a two-expert fixture, checking every step and the frames, and that the loop switched experts once,
/// where diffusers did.
fn check_two_experts(name: &str, conditioning: Conditioning) {
    let (r, meta) = (reference(name), reference_metadata(name));
    let pipe = load(&format!("{name}/pipeline"));
    let req = GenerateRequest {
        conditioning,
        guidance_2: meta.get("guidance_scale_2").map(|g| g.parse().unwrap()),
        ..common::request_from(&meta, &r["latents_init"])
    };
    check_steps(name, &pipe, &req, &r["frames"], &r, "");
    // Where the switch fell, by the stages and steps a second run reports.
    let mut events = Vec::new();
    pipe.generate(&req, &mut |e| {
        events.push(format!("{e:?}"));
        true
    })
    .unwrap();
    let switch = events
        .iter()
        .position(|e| e.contains("switching to the low-noise expert"))
        .expect("the loop switched experts");
    let steps_before = events[..switch]
        .iter()
        .filter(|e| e.starts_with("Step"))
        .count();
    let want = (0..req.steps)
        .position(|i| r[&format!("step{i}.expert")].to_vec1::<f32>().unwrap()[0] == 1.0)
        .unwrap();
    assert_eq!(
        steps_before, want,
        "{name}: switched after {steps_before} steps"
    );
    assert_eq!(events.iter().filter(|e| e.contains("switching")).count(), 1);
}

#[test]
fn a14b_text_to_video_matches_diffusers() {
    check_two_experts(A14B, Conditioning::None);
}

#[test]
fn a14b_image_to_video_matches_diffusers() {
    let r = reference(A14B_I2V);
    let first = picture(&r["image"]);
    check_two_experts(A14B_I2V, Conditioning::Image { first, last: None });
}
