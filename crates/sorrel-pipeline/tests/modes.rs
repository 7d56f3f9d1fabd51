//! The modes beyond text-to-video against diffusers (fp32, 48x32, 13 frames): video-to-video at strength 0.7,
//! image-to-video and first/last-frame, each stage (CLIP features, conditioning latents and mask, one
//! transformer forward of each class) and the frames. Fixtures: `tools/reference/make_mode_fixtures.py`.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use sorrel_pipeline::{Conditioning, GenerateRequest, LoadOptions, Mode, Picture, WanPipeline};
mod common;
use common::{check_steps, picture};

use sorrel_testkit::{
    fixture, max_abs, max_abs_diff, mean_abs_diff, reference, reference_metadata,
};

fn request(
    meta: &HashMap<String, String>,
    noise: &Tensor,
    conditioning: Conditioning,
) -> GenerateRequest {
    GenerateRequest {
        conditioning,
        ..common::request_from(meta, noise)
    }
}

fn load(dir: &str) -> WanPipeline {
    WanPipeline::load(&fixture(dir), &LoadOptions::default()).unwrap()
}

#[test]
fn video_to_video_matches_diffusers() {
    let name = "wan-tiny-v2v";
    let (r, meta) = (reference(name), reference_metadata(name));
    let pipe = load(&format!("{}/../{}", name, meta["pipeline"]));
    assert!(pipe.info.can(Mode::VideoToVideo));
    let video = r["video"].clone();
    let frames: Vec<Picture> = (0..video.dim(0).unwrap())
        .map(|i| picture(&video.get(i).unwrap()))
        .collect();
    // VAE encode of the input clip, normalised as the pipeline does.
    let refs: Vec<&Picture> = frames.iter().collect();
    let lat = pipe.encode_pictures(&refs, (48, 32)).unwrap();
    let err = max_abs_diff(&lat, &r["video_latents"]);
    println!("v2v: encoded latents max abs err {err:e}");
    assert!(err <= 1e-4, "encoded video latents differ by {err}");
    let strength: f64 = meta["strength"].parse().unwrap();
    let req = request(&meta, &r["noise"], Conditioning::Video { frames, strength });
    let steps = check_steps(name, &pipe, &req, &r["frames"], &r, "");
    assert_eq!(
        steps,
        meta["steps_run"].parse::<usize>().unwrap(),
        "steps run at strength {strength}"
    );
}

/// CLIP features, the condition, one transformer forward and the frames of an image-conditioned fixture.
fn check_image_mode(name: &str, last: bool) {
    let (r, meta) = (reference(name), reference_metadata(name));
    let pipe = load(&format!("{name}/pipeline"));
    let first = picture(&r["image"]);
    let last = last.then(|| picture(&r["last_image"]));
    let mode = if last.is_some() {
        Mode::FirstLastFrame
    } else {
        Mode::ImageToVideo
    };
    assert_eq!(pipe.info.modes, vec![mode]);

    let pics: Vec<&Picture> = std::iter::once(&first).chain(last.as_ref()).collect();
    let feats = pipe.image_features(&pics).unwrap();
    let want = &r["clip.hidden_states_penultimate"];
    let err = max_abs_diff(&feats, want);
    println!(
        "{name}: CLIP penultimate hidden states max abs err {err:e} (scale {})",
        max_abs(want)
    );
    assert!(err <= 1e-4, "{name}: CLIP features differ by {err}");

    let req = request(
        &meta,
        &r["latents_init"],
        Conditioning::Image {
            first: first.clone(),
            last: last.clone(),
        },
    );
    let cond = pipe.image_condition(&first, last.as_ref(), &req).unwrap();
    let err = max_abs_diff(&cond, &r["condition"]);
    println!("{name}: condition (mask + encoded video) max abs err {err:e}");
    assert!(err <= 1e-4, "{name}: condition differs by {err}");

    let ctx = pipe
        .transformer()
        .unwrap()
        .embed_context(&r["unit.transformer.text"], Some(want))
        .unwrap();
    let t = Tensor::new(&[750f32], &candle_core::Device::Cpu).unwrap();
    let out = pipe
        .transformer()
        .unwrap()
        .forward_with_context(&r["unit.transformer.in"], &t, &ctx)
        .unwrap();
    let want_out = &r["unit.transformer.out"];
    let err = max_abs_diff(&out, want_out);
    println!(
        "{name}: transformer forward max abs err {err:e} (scale {})",
        max_abs(want_out)
    );
    assert!(
        err <= 1e-4 * max_abs(want_out).max(1.0),
        "{name}: transformer differs by {err}"
    );

    let steps = check_steps(name, &pipe, &req, &r["frames"], &r, "");
    assert_eq!(steps, meta["steps"].parse::<usize>().unwrap());
}

#[test]
fn image_to_video_matches_diffusers() {
    check_image_mode("wan-tiny-i2v", false);
}

#[test]
fn first_last_frame_matches_diffusers() {
    check_image_mode("wan-tiny-flf2v", true);
}

#[test]
fn a_picture_of_another_size_is_fitted_and_keeps_its_proportions() {
    // 96x32 (3:1) into 48x32 (3:2): scaled to 96x32 -> no change in height, centre third of the width kept.
    let (w, h) = (96, 32);
    let rgb: Vec<u8> = (0..h)
        .flat_map(|_| (0..w).flat_map(move |x| [if (24..72).contains(&x) { 0 } else { 255 }, 0, 0]))
        .collect();
    let out = sorrel_pipeline::fit(
        &Picture {
            width: w,
            height: h,
            rgb,
        },
        48,
        32,
    );
    assert_eq!(out.len(), 48 * 32 * 3);
    // Columns 24..72 of the source are black: the crop keeps the middle and never stretches it.
    let reds = out.chunks_exact(3).filter(|p| p[0] > 128).count();
    assert_eq!(reds, 0, "the centre crop should hold only the black middle");
}

#[test]
fn bad_input_is_refused_with_what_to_change() {
    let t2v = WanPipeline::describe(&fixture("wan-tiny-alt/pipeline")).unwrap();
    let i2v = WanPipeline::describe(&fixture("wan-tiny-i2v/pipeline")).unwrap();
    let pic = Picture {
        width: 48,
        height: 32,
        rgb: vec![0; 48 * 32 * 3],
    };
    let base = GenerateRequest {
        prompt: "a cat".into(),
        width: 48,
        height: 32,
        frames: 13,
        steps: 5,
        ..GenerateRequest::default()
    };
    let err = |req: &GenerateRequest, info: &sorrel_pipeline::ModelInfo| {
        req.check()
            .and_then(|_| req.check_for(info))
            .unwrap_err()
            .to_string()
    };
    // An image for a text-only model names the models that can.
    let with_image = GenerateRequest {
        conditioning: Conditioning::Image {
            first: pic.clone(),
            last: None,
        },
        ..base.clone()
    };
    let e = err(&with_image, &t2v);
    assert!(
        e.contains("cannot do image-to-video") && e.contains("I2V"),
        "{e}"
    );
    // A last frame on a one-image model.
    let e = err(
        &GenerateRequest {
            conditioning: Conditioning::Image {
                first: pic.clone(),
                last: Some(pic.clone()),
            },
            ..base.clone()
        },
        &i2v,
    );
    assert!(e.contains("first/last-frame") && e.contains("FLF2V"), "{e}");
    // One frame cannot hold a first and a last frame.
    let flf = WanPipeline::describe(&fixture("wan-tiny-flf2v/pipeline")).unwrap();
    let e = err(
        &GenerateRequest {
            frames: 1,
            conditioning: Conditioning::Image {
                first: pic.clone(),
                last: Some(pic.clone()),
            },
            ..base.clone()
        },
        &flf,
    );
    assert!(e.contains("cannot hold both"), "{e}");
    // Video to video on an image-to-video model.
    let video = |n: usize, strength: f64| GenerateRequest {
        conditioning: Conditioning::Video {
            frames: vec![pic.clone(); n],
            strength,
        },
        ..base.clone()
    };
    assert!(err(&video(13, 0.5), &i2v).contains("cannot do video-to-video"));
    // Strength outside (0, 1], and one so small no step runs.
    for s in [0.0, -0.1, 1.5, f64::NAN] {
        let e = err(&video(13, s), &t2v);
        assert!(e.contains("outside (0, 1]"), "{s}: {e}");
    }
    assert!(err(&video(13, 0.1), &t2v).contains("runs no denoising step"));
    // A video shorter than the frames asked for.
    let e = err(&video(9, 0.5), &t2v);
    assert!(e.contains("has 9 frames but 13"), "{e}");
    // Pixels that do not fill the stated size.
    let e = err(
        &GenerateRequest {
            conditioning: Conditioning::Image {
                first: Picture {
                    width: 48,
                    height: 32,
                    rgb: vec![0; 10],
                },
                last: None,
            },
            ..base.clone()
        },
        &i2v,
    );
    assert!(e.contains("not a 48x32 RGB picture"), "{e}");
}

#[test]
fn text_to_video_models_keep_their_modes_and_bf16_image_to_video_runs() {
    let info = WanPipeline::describe(&fixture("wan-tiny-alt/pipeline")).unwrap();
    assert_eq!(info.modes, vec![Mode::TextToVideo, Mode::VideoToVideo]);
    assert_eq!(info.pipeline_class, "WanPipeline");
    let name = "wan-tiny-i2v";
    let (r, meta) = (reference(name), reference_metadata(name));
    let pipe = WanPipeline::load(
        &fixture("wan-tiny-i2v/pipeline"),
        &LoadOptions {
            dtype: DType::BF16,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let req = request(
        &meta,
        &r["latents_init"],
        Conditioning::Image {
            first: picture(&r["image"]),
            last: None,
        },
    );
    // One transformer forward (the denoiser's unit of work): diffusers' own bf16 forward of this fixture
    // (`tools/reference/bf16_drift.py`: transformer and text encoder in bf16 with the modules diffusers keeps
    // in fp32 kept fp32) lands 0.020292 (max) and 0.003708 (mean) from the fp32 output. Sorrel's bf16 must be
    // no further.
    let tr = pipe.transformer().unwrap();
    let ctx = tr
        .embed_context(
            &r["unit.transformer.text"],
            Some(&r["clip.hidden_states_penultimate"]),
        )
        .unwrap();
    let t = Tensor::new(&[750f32], &candle_core::Device::Cpu).unwrap();
    let out = tr
        .forward_with_context(&r["unit.transformer.in"], &t, &ctx)
        .unwrap();
    let want = &r["unit.transformer.out"];
    let (err, mean) = (max_abs_diff(&out, want), mean_abs_diff(&out, want));
    println!("{name}: bf16 transformer forward max abs err {err}, mean {mean} (diffusers bf16: 0.020292, 0.003708)");
    assert!(
        err <= 0.020292 && mean <= 0.003708,
        "bf16 image-to-video forward further from fp32 than diffusers' bf16: {err}, {mean}"
    );
    // Whole generations: the steps of this tiny random model amplify any rounding difference (diffusers' own
    // bf16 frames land 0.121 (max) from its fp32 ones, or 0.369 when its norms are cast to bf16 too; its
    // first step's latents 5.6e-3), so they only catch gross errors.
    let mut steps = Vec::new();
    let frames = pipe
        .generate_observed(&req, &mut |_| true, &mut |i, latents| {
            steps.push(max_abs_diff(latents, &r[&format!("step{i}.latents_after")]));
        })
        .unwrap()
        .frames;
    let err = max_abs_diff(&frames, &r["frames"].squeeze(0).unwrap());
    println!("{name}: bf16 latents after each step, max abs err {steps:?}; frames {err}");
    assert!(
        steps[0] < 0.01,
        "bf16 image-to-video's first step far from fp32: {}",
        steps[0]
    );
    assert!(err < 0.2, "bf16 image-to-video frames far from fp32: {err}");
}

/// (F, H, W) u8 masks as pictures whose red channel is the mask.
fn masks(t: &Tensor) -> Vec<Picture> {
    (0..t.dim(0).unwrap())
        .map(|i| {
            let m = t.get(i).unwrap();
            let (h, w) = m.dims2().unwrap();
            let v = m.flatten_all().unwrap().to_vec1::<u8>().unwrap();
            Picture {
                width: w,
                height: h,
                rgb: v.iter().flat_map(|&x| [x, x, x]).collect(),
            }
        })
        .collect()
}

fn frames_of(t: &Tensor) -> Vec<Picture> {
    (0..t.dim(0).unwrap())
        .map(|i| picture(&t.get(i).unwrap()))
        .collect()
}

fn check_vace_run(run: &str, references: &[&str]) {
    let name = "wan-tiny-vace";
    let (r, meta) = (reference(name), reference_metadata(name));
    let pipe = load(&format!("{name}/pipeline"));
    let key = |k: &str| format!("{run}.{k}");
    let req = request(
        &meta,
        &r[&key("latents_init")],
        Conditioning::Compose {
            video: Some(frames_of(&r[&key("video")])),
            mask: Some(masks(&r[&key("mask")])),
            references: references.iter().map(|k| picture(&r[&key(k)])).collect(),
        },
    );
    let control = pipe.vace_control(&req).unwrap();
    let err = max_abs_diff(&control, &r[&key("control")]);
    println!("{name} {run}: control latents max abs err {err:e}");
    assert!(err <= 1e-4, "{run}: VACE control differs by {err}");
    let steps = check_steps(
        &format!("{name} {run}"),
        &pipe,
        &req,
        &r[&key("frames")],
        &r,
        &format!("{run}."),
    );
    assert_eq!(steps, meta["steps"].parse::<usize>().unwrap());
}

#[test]
fn vace_transformer_forward_matches_diffusers() {
    let name = "wan-tiny-vace";
    let r = reference(name);
    let pipe = load(&format!("{name}/pipeline"));
    assert_eq!(pipe.transformer().unwrap().vace_layer_count(), Some(2));
    let mut ctx = pipe
        .transformer()
        .unwrap()
        .embed_context(&r["unit.transformer.text"], None)
        .unwrap();
    ctx.control = Some(sorrel_models::wan::transformer::Control {
        latents: r["unit.transformer.control"].clone(),
        scales: vec![1.0, 0.5],
    });
    let t = Tensor::new(&[750f32], &candle_core::Device::Cpu).unwrap();
    let out = pipe
        .transformer()
        .unwrap()
        .forward_with_context(&r["unit.transformer.in"], &t, &ctx)
        .unwrap();
    let want = &r["unit.transformer.out"];
    let err = max_abs_diff(&out, want);
    println!(
        "{name}: transformer forward max abs err {err:e} (scale {})",
        max_abs(want)
    );
    assert!(
        err <= 1e-4 * max_abs(want).max(1.0),
        "VACE transformer differs by {err}"
    );
}

#[test]
fn vace_extension_with_a_reference_matches_diffusers() {
    // 5 known frames, 8 generated after them, and a 24x24 reference fitted on the white canvas.
    check_vace_run("extend", &["reference0"]);
}

#[test]
fn vace_inpainting_matches_diffusers() {
    check_vace_run("inpaint", &[]);
}
