//! `sorrel generate --image / --last-image / --video` end to end: the written frames against diffusers' (the
//! fixtures of `tools/reference/make_mode_fixtures.py`), and bad input (clear message, non-zero exit, no file).

use std::path::Path;

mod common;

use candle_core::{Device, Tensor};
use common::{assert_fails, sorrel, stderr, write_apng};
use sorrel_testkit::{fixture, reference, reference_metadata};

/// Writes an (H, W, 3) u8 tensor as a PNG.
fn write_png(t: &Tensor, path: &Path) {
    let (h, w, _) = t.dims3().unwrap();
    let rgb = t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    image::RgbImage::from_raw(w as u32, h as u32, rgb)
        .unwrap()
        .save(path)
        .unwrap();
}

fn write_latents(t: &Tensor, path: &Path) {
    let map = std::collections::HashMap::from([("latents".to_string(), t.clone())]);
    candle_core::safetensors::save(&map, path).unwrap();
}

/// The worst channel difference, in 1/255 steps, between written PNG frames and diffusers' frames rounded as
/// diffusers rounds them to 8 bits.
fn worst_png_difference(dir: &Path, want: &Tensor) -> i32 {
    let (f, h, w, _) = want.dims4().unwrap();
    let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut worst = 0;
    for i in 0..f {
        let img = image::open(dir.join(format!("frame_{i:04}.png")))
            .unwrap()
            .into_rgb8();
        assert_eq!((img.width() as usize, img.height() as usize), (w, h));
        for (j, &v) in img.as_raw().iter().enumerate() {
            let r = (want[i * h * w * 3 + j] * 255.0).round() as i32;
            worst = worst.max((v as i32 - r).abs());
        }
    }
    assert!(
        !dir.join(format!("frame_{f:04}.png")).exists(),
        "no extra frames"
    );
    worst
}

/// The common arguments of a fixture's run (prompt, size, steps, guidance, text length, noise), no watermark:
/// parity is about the model's numbers.
fn run_args(name: &str, model: &Path, init: &Path, out: &Path) -> Vec<String> {
    let m = reference_metadata(name);
    [
        "generate",
        &m["prompt"],
        "--model",
        &model.to_string_lossy(),
        "--negative-prompt",
        &m["negative_prompt"],
        "--size",
        &format!("{}x{}", m["width"], m["height"]),
        "--frames",
        &m["num_frames"],
        "--steps",
        &m["steps"],
        "--guidance",
        &m["guidance_scale"],
        "--max-sequence-length",
        &m["max_sequence_length"],
        "--init-latents",
        &init.to_string_lossy(),
        "-q",
        "--no-watermark",
        "-o",
        &out.to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn check_cli(name: &str, model: &Path, noise_key: &str, extra: &[String]) {
    check_cli_run(name, model, noise_key, "frames", extra);
}

/// As [`check_cli`], with the reference frames under `frames_key`.
fn check_cli_run(name: &str, model: &Path, noise_key: &str, frames_key: &str, extra: &[String]) {
    let r = reference(name);
    let tmp = tempfile::tempdir().unwrap();
    let init = tmp.path().join("noise.safetensors");
    write_latents(&r[noise_key], &init);
    let out = tmp.path().join("frames");
    let mut args = run_args(name, model, &init, &out);
    args.extend(extra.iter().cloned());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = sorrel(&refs);
    assert!(o.status.success(), "{name}: {}", stderr(&o));
    let worst = worst_png_difference(&out, &r[frames_key].squeeze(0).unwrap());
    println!("{name}: worst PNG channel difference {worst}/255");
    // The bound: within 1/255 per channel (a value on a rounding boundary may round either way).
    assert!(
        worst <= 1,
        "{name}: frames differ from diffusers by {worst}/255"
    );
}

#[test]
fn cli_image_to_video_matches_diffusers() {
    let name = "wan-tiny-i2v";
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("first.png");
    write_png(&reference(name)["image"], &image);
    let model = fixture(name).join("pipeline");
    check_cli(
        name,
        &model,
        "latents_init",
        &["--image".into(), image.to_string_lossy().into()],
    );
}

#[test]
fn cli_wan22_ti2v_image_to_video_matches_diffusers() {
    let name = "wan22-tiny-ti2v";
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("first.png");
    write_png(&reference(name)["i2v.image"], &image);
    let model = fixture(name).join("pipeline");
    let extra = ["--image".into(), image.to_string_lossy().into()];
    check_cli_run(name, &model, "i2v.latents_init", "i2v.frames", &extra);
    // The MP4 plays at Wan2.2 TI2V's own 24 fps. The tiny model's frames are noise, which needs a
    // moderate quality to fit H.264's frame buffer at 96x64.
    let mp4 = tmp.path().join("clip.mp4");
    let o = sorrel(&[
        "generate",
        "a cat",
        "--model",
        &model.to_string_lossy(),
        "--image",
        &image.to_string_lossy(),
        "--size",
        "96x64",
        "--frames",
        "13",
        "--steps",
        "2",
        "--quality",
        "50",
        "-q",
        "-o",
        &mp4.to_string_lossy(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let p = sorrel_testkit::ffprobe(&mp4);
    assert_eq!((p.frames, p.width, p.height), (13, 96, 64), "{p:?}");
    assert_eq!(p.r_frame_rate, "24/1", "{p:?}");
}

#[test]
fn cli_first_last_frame_matches_diffusers() {
    let name = "wan-tiny-flf2v";
    let r = reference(name);
    let tmp = tempfile::tempdir().unwrap();
    let (first, last) = (tmp.path().join("first.png"), tmp.path().join("last.png"));
    write_png(&r["image"], &first);
    write_png(&r["last_image"], &last);
    let model = fixture(name).join("pipeline");
    let extra = [
        "--image".into(),
        first.to_string_lossy().into(),
        "--last-image".into(),
        last.to_string_lossy().into(),
    ];
    check_cli(name, &model, "latents_init", &extra);
}

#[test]
fn cli_video_to_video_matches_diffusers() {
    let name = "wan-tiny-v2v";
    let tmp = tempfile::tempdir().unwrap();
    let video = tmp.path().join("input.apng");
    write_apng(&reference(name)["video"], &video);
    let model = fixture("wan-tiny-alt").join("pipeline");
    let extra = [
        "--video".into(),
        video.to_string_lossy().into(),
        "--strength".into(),
        reference_metadata(name)["strength"].clone(),
    ];
    check_cli(name, &model, "noise", &extra);
}

#[test]
fn bad_mode_input_is_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("clip.mp4");
    let o = out.to_string_lossy().to_string();
    let t2v = fixture("wan-tiny-alt")
        .join("pipeline")
        .to_string_lossy()
        .to_string();
    let i2v = fixture("wan-tiny-i2v")
        .join("pipeline")
        .to_string_lossy()
        .to_string();
    let pic = tmp.path().join("pic.png");
    write_png(
        &Tensor::zeros((32, 48, 3), candle_core::DType::U8, &Device::Cpu).unwrap(),
        &pic,
    );
    let p = pic.to_string_lossy().to_string();
    let text = tmp.path().join("notes.png");
    std::fs::write(&text, "not a picture").unwrap();
    let t = text.to_string_lossy().to_string();
    let clip = tmp.path().join("short.apng");
    write_apng(
        &reference("wan-tiny-v2v")["video"].narrow(0, 0, 5).unwrap(),
        &clip,
    );
    let c = clip.to_string_lossy().to_string();
    let base = |model: &str| -> Vec<String> {
        [
            "generate", "a cat", "--model", model, "--size", "48x32", "--frames", "13", "--steps",
            "2", "-q", "-o", &o,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let case = |model: &str, extra: &[&str], needle: &str| {
        let mut a = base(model);
        a.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        assert_fails(&refs, needle, &out);
    };
    // An image that is not an image.
    case(&i2v, &["--image", &t], "--image");
    case(&i2v, &["--image", &t], "not a picture Sorrel can read");
    // A last frame without a first.
    case(&i2v, &["--last-image", &p], "--image");
    // A mode the model cannot do names the models that can.
    case(&t2v, &["--image", &p], "cannot do image-to-video");
    case(&i2v, &["--image", &p, "--last-image", &p], "FLF2V");
    case(&i2v, &["--video", &c], "cannot do video-to-video");
    // Strength outside (0, 1].
    case(
        &t2v,
        &["--video", &c, "--strength", "1.5"],
        "outside (0, 1]",
    );
    case(&t2v, &["--video", &c, "--strength", "0"], "outside (0, 1]");
    // A video shorter than the frames asked for.
    case(&t2v, &["--video", &c], "has 5 frames but 13");
    // Both an image and a video.
    case(&i2v, &["--image", &p, "--video", &c], "cannot be used with");
}

/// (F, H, W) u8 masks as an animated PNG of grey frames.
fn write_mask_apng(t: &Tensor, path: &Path) {
    let rgb = t.unsqueeze(3).unwrap().repeat((1, 1, 1, 3)).unwrap();
    write_apng(&rgb, path);
}

#[test]
fn cli_vace_composition_with_a_reference_matches_diffusers() {
    let name = "wan-tiny-vace";
    let r = reference(name);
    let tmp = tempfile::tempdir().unwrap();
    let (video, mask, refp) = (
        tmp.path().join("video.apng"),
        tmp.path().join("mask.apng"),
        tmp.path().join("ref.png"),
    );
    write_apng(&r["extend.video"], &video);
    write_mask_apng(&r["extend.mask"], &mask);
    write_png(&r["extend.reference0"], &refp);
    let extra: Vec<String> = [
        "--video",
        &video.to_string_lossy(),
        "--mask",
        &mask.to_string_lossy(),
        "--reference",
        &refp.to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let noise = r["extend.latents_init"].clone();
    let want = r["extend.frames"].clone();
    let model = fixture(name).join("pipeline");
    let tmp2 = tempfile::tempdir().unwrap();
    let init = tmp2.path().join("noise.safetensors");
    write_latents(&noise, &init);
    let out = tmp2.path().join("frames");
    let mut args = run_args(name, &model, &init, &out);
    args.extend(extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = sorrel(&refs);
    assert!(o.status.success(), "{}", stderr(&o));
    let worst = worst_png_difference(&out, &want.squeeze(0).unwrap());
    println!("{name} extend: worst PNG channel difference {worst}/255");
    assert!(
        worst <= 1,
        "VACE frames differ from diffusers by {worst}/255"
    );
}

/// The frames of a PNG sequence folder, RGB8.
fn read_frames(dir: &Path) -> Vec<Vec<u8>> {
    (0..)
        .map(|i| dir.join(format!("frame_{i:04}.png")))
        .take_while(|p| p.exists())
        .map(|p| image::open(p).unwrap().into_rgb8().into_raw())
        .collect()
}

fn u8_frames(t: &Tensor) -> Vec<Vec<u8>> {
    (0..t.dim(0).unwrap())
        .map(|i| {
            t.get(i)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<u8>()
                .unwrap()
        })
        .collect()
}

#[test]
fn extend_and_connect_write_the_whole_clip_with_the_inputs_untouched() {
    let r = reference("wan-tiny-vace");
    let clip = r["inpaint.video"].clone(); // 13 frames of 48x32
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a.apng"), tmp.path().join("b.apng"));
    write_apng(&clip.narrow(0, 0, 6).unwrap(), &a);
    write_apng(&clip.narrow(0, 6, 7).unwrap(), &b);
    let model = fixture("wan-tiny-vace")
        .join("pipeline")
        .to_string_lossy()
        .to_string();
    let given = u8_frames(&clip);
    let run = |args: &[&str], out: &Path| {
        let o = sorrel(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        read_frames(out)
    };
    let common = ["--steps", "2", "-q", "--no-watermark", "--model", &model];

    // Forward: the 6 frames of a, then 5 new ones.
    let out = tmp.path().join("fwd");
    let mut args = vec![
        "generate",
        "a cat",
        "--extend",
        a.to_str().unwrap(),
        "--frames",
        "5",
    ];
    args.extend(common);
    args.extend(["-o", out.to_str().unwrap()]);
    let f = run(&args, &out);
    assert_eq!(f.len(), 11);
    assert_eq!(
        &f[..6],
        &given[..6],
        "the given frames come through as they were"
    );

    // Backward: 3 new frames, then the 7 of b.
    let out = tmp.path().join("back");
    let mut args = vec![
        "generate",
        "a cat",
        "--extend-backward",
        b.to_str().unwrap(),
        "--frames",
        "3",
    ];
    args.extend(common);
    args.extend(["-o", out.to_str().unwrap()]);
    let f = run(&args, &out);
    assert_eq!(f.len(), 10);
    assert_eq!(&f[3..], &given[6..]);

    // Connect: a, 4 new frames, b.
    let out = tmp.path().join("joined");
    let mut args = vec![
        "connect",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--frames",
        "4",
    ];
    args.extend(common);
    args.extend(["-o", out.to_str().unwrap()]);
    let f = run(&args, &out);
    assert_eq!(f.len(), 6 + 4 + 7);
    assert_eq!(&f[..6], &given[..6]);
    assert_eq!(&f[10..], &given[6..]);
}

/// A diffusion-forcing model extends a clip forward window by window: the clip comes through untouched, then the
/// new frames (a second at 24 fps: 24, whole latent frames of 4). Backward extension and connecting are refused.
#[test]
fn skyreels_extends_a_clip_forward() {
    let r = reference("skyreels-tiny-df");
    let clip = r["v2v.video"].clone(); // 13 frames of 48x32
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.apng");
    write_apng(&clip, &a);
    let model = fixture("skyreels-tiny-df").join("pipeline");
    let model = model.to_str().unwrap();
    let out = tmp.path().join("fwd");
    let o = sorrel(&[
        "generate",
        "a cat and a dog baking a cake",
        "--extend",
        a.to_str().unwrap(),
        "--seconds",
        "1",
        "--window-frames",
        "17",
        "--overlap-frames",
        "9",
        "--steps",
        "2",
        "-q",
        "--no-watermark",
        "--model",
        model,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let f = read_frames(&out);
    assert_eq!(f.len(), 13 + 24);
    assert_eq!(
        &f[..13],
        &u8_frames(&clip)[..],
        "the given frames come through as they were"
    );
    assert_ne!(f[13], f[12], "new frames follow the clip");

    for (args, needle) in [
        (
            vec![
                "generate",
                "a cat",
                "--extend-backward",
                a.to_str().unwrap(),
            ],
            "forward only",
        ),
        (
            vec!["connect", a.to_str().unwrap(), a.to_str().unwrap()],
            "forward only",
        ),
        (
            vec![
                "generate",
                "a cat",
                "--extend",
                a.to_str().unwrap(),
                "--frames",
                "25",
            ],
            "multiple of 4",
        ),
    ] {
        let mut args = args.clone();
        args.extend(["--model", model, "-o"]);
        let bad = tmp.path().join("bad.mp4");
        args.push(bad.to_str().unwrap());
        assert_fails(&args, needle, &bad);
    }
}

#[test]
fn bad_composition_input_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("clip.mp4");
    let o = out.to_string_lossy().to_string();
    let t2v = fixture("wan-tiny-alt")
        .join("pipeline")
        .to_string_lossy()
        .to_string();
    let vace = fixture("wan-tiny-vace")
        .join("pipeline")
        .to_string_lossy()
        .to_string();
    let r = reference("wan-tiny-vace");
    let clip = tmp.path().join("clip.apng");
    write_apng(&r["inpaint.video"], &clip);
    let small_mask = tmp.path().join("small.png");
    write_png(
        &Tensor::zeros((16, 16, 3), candle_core::DType::U8, &Device::Cpu).unwrap(),
        &small_mask,
    );
    let short_mask = tmp.path().join("short.apng");
    write_mask_apng(&r["inpaint.mask"].narrow(0, 0, 4).unwrap(), &short_mask);
    let (c, sm, shm) = (
        clip.to_string_lossy().to_string(),
        small_mask.to_string_lossy().to_string(),
        short_mask.to_string_lossy().to_string(),
    );
    let case = |model: &str, extra: &[&str], needle: &str| {
        let mut a: Vec<&str> = vec![
            "generate", "a cat", "--model", model, "--steps", "2", "-q", "-o", &o,
        ];
        a.extend(extra);
        assert_fails(&a, needle, &out);
    };
    // A mask without a video.
    case(&vace, &["--mask", &sm], "--video");
    // A mask of another size than the video, and one shorter than it.
    case(
        &vace,
        &["--video", &c, "--mask", &sm, "--size", "48x32"],
        "mask frame 0 is 16x16",
    );
    case(
        &vace,
        &[
            "--video", &c, "--mask", &shm, "--size", "48x32", "--frames", "13",
        ],
        "the mask has 4 frames",
    );
    // Compositions on a model without VACE name the models that can.
    case(&t2v, &["--extend", &c, "--frames", "4"], "Wan2.1-VACE");
    case(&t2v, &["--reference", &sm], "cannot do references");
    // Nothing to add.
    case(
        &vace,
        &["--extend", &c, "--frames", "0"],
        "at least 1 frame",
    );
}

/// The tiny diffusion-forcing model for `seconds` at 160x96 (windows of 17 frames overlapping by 9) into `out`.
fn skyreels_command(out: &Path, seconds: &str) -> std::process::Command {
    let model = fixture("skyreels-tiny-df").join("pipeline");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sorrel"));
    cmd.args([
        "generate",
        "a cat and a dog baking a cake",
        "--model",
        &model.to_string_lossy(),
        "--size",
        "160x96",
        "--seconds",
        seconds,
        "--steps",
        "2",
        "--window-frames",
        "17",
        "--overlap-frames",
        "9",
        "--quality",
        "50",
        "--spritesheet",
        &out.with_extension("sheet.png").to_string_lossy(),
        "-q",
        "-o",
        &out.to_string_lossy(),
    ]);
    cmd
}

/// Runs [`skyreels_command`], returning the process's peak RSS in bytes.
fn skyreels_run(out: &Path, seconds: &str) -> u64 {
    let (o, peak) = sorrel_testkit::run_measuring_peak_rss(&mut skyreels_command(out, seconds));
    assert!(o.status.success(), "{}", stderr(&o));
    peak
}

/// A diffusion-forcing model makes a video longer than its window in one command, and its memory is set by
/// the window, not the length: 25 s at its 24 fps is 601 frames (rounded up to the 4k+1 the VAE makes), 74
/// windows of 17 frames overlapping by 9, each window's frames encoded into the MP4 as it finishes. A 1-second
/// run (25 frames, 2 windows) is the baseline.
///
/// At 160x96 the 601 frames are 111 MB as floats (28 MB as 8-bit pictures); the writer held at least that
/// much before it took a stream. Measured streaming (2026-12-06): 68.5 MB peak for 25 frames, 82.8 MB for 601.
/// What still grows is the compressed stream, which the MP4 muxer and the C2PA signer hold whole, a few copies
/// of the file (5.0 MB here: the random tiny model draws noise, the worst case for H.264). The bound, 40 MB, is
/// well under one float copy of the frames.
#[test]
fn skyreels_long_video_streams_to_the_file_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let (short, long) = (tmp.path().join("short.mp4"), tmp.path().join("long.mp4"));
    let short_peak = skyreels_run(&short, "1");
    let long_peak = skyreels_run(&long, "25");
    let mb = |b: u64| b as f64 / 1e6;
    eprintln!(
        "peak RSS: 25 frames {:.1} MB, 601 frames {:.1} MB",
        mb(short_peak),
        mb(long_peak)
    );
    assert!(
        long_peak < short_peak + 40_000_000,
        "601 frames peaked at {:.1} MB against {:.1} MB for 25: memory grows with the length",
        mb(long_peak),
        mb(short_peak)
    );
    for (path, frames) in [(&short, 25), (&long, 601)] {
        let p = sorrel_testkit::ffprobe(path);
        assert_eq!((p.frames, p.width, p.height), (frames, 160, 96), "{p:?}");
        assert_eq!(p.r_frame_rate, "24/1", "{p:?}");
        let d = p.stream_duration.unwrap();
        assert!((d - frames as f64 / 24.0).abs() < 1e-3, "duration {d}");
    }
    // The sprite sheet of the streamed video: 16 tiles of 160x96 in 4 columns.
    let sheet = image::open(long.with_extension("sheet.png")).unwrap();
    assert_eq!((sheet.width(), sheet.height()), (640, 384));

    // Ctrl-C in the middle of a long run (windows done, frames encoded, nothing written) leaves no file. The
    // run is 120 s of video (about 25 s of work here), so 4 s in is well inside it whatever the machine's load.
    let dir = tmp.path().join("interrupted");
    std::fs::create_dir(&dir).unwrap();
    let mut cmd = skyreels_command(&dir.join("cut.mp4"), "120");
    // A shell that starts the tests in the background without job control (`cmd &`) makes them ignore
    // SIGINT, and children inherit that; a user's Ctrl-C reaches a process with the default action.
    // SAFETY: between fork and exec only `signal`, which is async-signal-safe, runs.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = cmd.stderr(std::process::Stdio::null()).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended before it could be interrupted"
    );
    // SAFETY: kill sends a signal to the child started above, which has not been reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    assert!(!child.wait().unwrap().success());
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "an interrupted run left {left:?}");
}
