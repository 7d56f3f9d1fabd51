//! The `sorrel` binary end to end: parity of written frames with diffusers, the original layout, and
//! every kind of bad input (clear message, non-zero exit, no output file).

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;

use candle_core::{Device, Tensor};
use common::{assert_fails, sorrel, stderr};
use sorrel_testkit::{copy_dir, ffprobe, fixture, read_npy_f32, reference};

/// The arguments that reproduce a fixture's diffusers run. Without the watermark: parity is about the
/// model's numbers, and the watermark deliberately moves pixels by a few levels (its own tests bound that).
fn fixture_args(name: &str, model: &Path) -> Vec<String> {
    let (prompt, negative, size, frames, steps, msl) = match name {
        "wan-tiny-unipc" | "wan-tiny-euler" => {
            ("dance monkey", "negative", "32x32", "9", "4", "16")
        }
        "wan-tiny-alt" => (
            "a cat and a dog baking a cake",
            "blurred static",
            "48x32",
            "13",
            "5",
            "24",
        ),
        _ => unreachable!(),
    };
    let init = fixture(name).join("init_latents.safetensors");
    [
        "generate",
        prompt,
        "--model",
        &model.to_string_lossy(),
        "--negative-prompt",
        negative,
        "--size",
        size,
        "--frames",
        frames,
        "--steps",
        steps,
        "--guidance",
        "5",
        "--max-sequence-length",
        msl,
        "--init-latents",
        &init.to_string_lossy(),
        "--quiet",
        "--no-watermark",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run_fixture(name: &str, model: &Path, out: &Path) -> Output {
    let args = fixture_args_to(name, model, &[], out);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    sorrel(&refs)
}

/// [`fixture_args`] with more flags and the output file.
fn fixture_args_to(name: &str, model: &Path, extra: &[&str], out: &Path) -> Vec<String> {
    let mut args = fixture_args(name, model);
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["-o".into(), out.display().to_string()]);
    args
}

/// diffusers' frames (F, H, W, 3) in [0, 1].
fn reference_frames(name: &str) -> Tensor {
    reference(name)["frames"].squeeze(0).unwrap()
}

fn read_png(path: &Path) -> (usize, usize, Vec<u8>) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    (
        info.width as usize,
        info.height as usize,
        buf[..info.buffer_size()].to_vec(),
    )
}

fn check_png_sequence(name: &str, model: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("frames");
    let o = run_fixture(name, model, &out);
    assert!(o.status.success(), "{name}: {}", stderr(&o));
    let want = reference_frames(name);
    let (f, h, w, _) = want.dims4().unwrap();
    let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut worst = 0i32;
    for i in 0..f {
        let (pw, ph, px) = read_png(&out.join(format!("frame_{i:04}.png")));
        assert_eq!((pw, ph), (w, h));
        for (j, &v) in px.iter().enumerate() {
            // diffusers' own 8-bit conversion of its frames: round(x * 255)
            let r = (want[i * h * w * 3 + j] * 255.0).round() as i32;
            worst = worst.max((v as i32 - r).abs());
        }
    }
    assert!(
        !out.join(format!("frame_{f:04}.png")).exists(),
        "no extra frames"
    );
    println!("{name}: worst PNG channel difference {worst}/255");
    // The bound: within 1/255 per channel (a value on a rounding boundary may round either way).
    assert!(
        worst <= 1,
        "{name}: PNG frames differ from diffusers by {worst}/255"
    );
}

#[test]
fn cli_png_sequence_matches_diffusers_unipc() {
    check_png_sequence(
        "wan-tiny-unipc",
        &fixture("wan-tiny-unipc").join("pipeline"),
    );
}

#[test]
fn cli_png_sequence_matches_diffusers_alt() {
    check_png_sequence("wan-tiny-alt", &fixture("wan-tiny-alt").join("pipeline"));
}

#[test]
fn cli_png_sequence_matches_diffusers_euler() {
    check_png_sequence(
        "wan-tiny-euler",
        &fixture("wan-tiny-euler").join("pipeline"),
    );
}

#[test]
fn cli_original_layout_matches_diffusers() {
    check_png_sequence(
        "wan-tiny-unipc",
        &fixture("wan-tiny-unipc").join("original"),
    );
}

#[test]
fn cli_original_layout_alt_with_flow_shift() {
    // The original release ships no scheduler config: the alt fixture's shift 5 is given on the command line.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("a.npy");
    let mut args = fixture_args("wan-tiny-alt", &fixture("wan-tiny-alt").join("original"));
    args.extend([
        "--flow-shift".into(),
        "5".into(),
        "-o".into(),
        out.to_string_lossy().to_string(),
    ]);
    let o = sorrel(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, data) = read_npy_f32(&out);
    let err = max_err_against_reference("wan-tiny-alt", &data);
    assert!(
        err <= 2e-3,
        "original-layout alt frames differ from diffusers by {err}"
    );
}

/// Largest absolute difference between `frames` (flattened F,H,W,3) and a fixture's diffusers frames.
fn max_err_against_reference(name: &str, frames: &[f32]) -> f32 {
    max_err(frames, &reference_frames(name))
}

/// Largest difference between written frames and a reference tensor of the same size.
fn max_err(frames: &[f32], want: &Tensor) -> f32 {
    let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(frames.len(), want.len(), "frame count or size differs");
    frames
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

#[test]
fn cli_npy_matches_diffusers_frames() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("clip.npy");
    let o = run_fixture(
        "wan-tiny-unipc",
        &fixture("wan-tiny-unipc").join("pipeline"),
        &out,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (header, data) = read_npy_f32(&out);
    assert!(
        header.contains("'descr': '<f4'") && header.contains("'shape': (9, 32, 32, 3)"),
        "{header}"
    );
    let err = max_err_against_reference("wan-tiny-unipc", &data);
    // Same bound as the library pipeline test.
    assert!(err <= 2e-3, "npy frames differ from diffusers by {err}");
}

#[test]
fn cli_bf16_vae_decodes_as_close_as_diffusers_bf16_vae() {
    // `--vae-dtype bf16`: the same denoising, the decode with bf16 weights and activations. Its frames (the
    // decode mapped from [-1, 1] to [0, 1], so half its error) may be as far from diffusers' fp32 frames as
    // diffusers' own bf16 decode is from its fp32 one, with the margin of the VAE's bf16 parity test (1.5x),
    // plus the fp32 pipeline's bound.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("clip.npy");
    let model = fixture("wan-tiny-unipc").join("pipeline");
    let args = fixture_args_to("wan-tiny-unipc", &model, &["--vae-dtype", "bf16"], &out);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = sorrel(&refs);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, data) = read_npy_f32(&out);
    let theirs = candle_core::safetensors::load(
        fixture("wan-tiny-unipc").join("vae_bf16.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let diffusers_bf16 = sorrel_testkit::max_abs_diff(
        &theirs["vae.decoded.bf16"],
        &reference("wan-tiny-unipc")["vae.decoded"],
    );
    let err = max_err_against_reference("wan-tiny-unipc", &data);
    let bound = 1.5 * diffusers_bf16 / 2.0 + 2e-3;
    assert!(
        err > 0.0 && err <= bound,
        "bf16 VAE frames differ from diffusers' fp32 frames by {err} (bound {bound})"
    );
}

#[test]
fn cli_lora_in_kohya_format_matches_diffusers() {
    // `--lora FILE:SCALE` as users type it, against diffusers' load_lora_weights + set_adapters (0.8).
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("clip.npy");
    let lora = format!(
        "{}:0.8",
        fixture("lora").join("kohya.safetensors").display()
    );
    let model = fixture("wan-tiny-alt").join("pipeline");
    let args = fixture_args_to("wan-tiny-alt", &model, &["--lora", &lora], &out);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = sorrel(&refs);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, data) = read_npy_f32(&out);
    let err = max_err(&data, &reference("lora")["frames.kohya"]);
    assert!(
        err <= 2e-3,
        "frames with the LoRA differ from diffusers by {err}"
    );
}

#[test]
fn cli_refuses_a_lora_for_another_model() {
    // The fixture LoRAs are for wan-tiny-alt (inner dim 48); wan-tiny-unipc's is 24.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("clip.mp4");
    let lora = fixture("lora")
        .join("peft.safetensors")
        .display()
        .to_string();
    let model = fixture("wan-tiny-unipc").join("pipeline");
    let args = fixture_args_to("wan-tiny-unipc", &model, &["--lora", &lora], &out);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_fails(&refs, "made for", &out);
}

#[test]
fn cli_gguf_transformer_matches_diffusers() {
    // `--transformer FILE.gguf` beside the folder's text encoder and VAE, as ComfyUI-GGUF users run it,
    // against diffusers with the same (dequantized) Q8_0 weights.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("clip.npy");
    let dir = fixture("wan-tiny-wide");
    let (model, gguf, init) = (
        dir.join("pipeline").display().to_string(),
        dir.join("transformer-Q8_0.gguf").display().to_string(),
        dir.join("init_latents.safetensors").display().to_string(),
    );
    let o = sorrel(&[
        "generate",
        "a cat and a dog baking a cake",
        "--model",
        &model,
        "--transformer",
        &gguf,
        "--negative-prompt",
        "blurred static",
        "--size",
        "48x32",
        "--frames",
        "9",
        "--steps",
        "4",
        "--guidance",
        "5",
        "--max-sequence-length",
        "16",
        "--init-latents",
        &init,
        "-q",
        "--no-watermark",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, data) = read_npy_f32(&out);
    let err = max_err(&data, &reference("wan-tiny-wide")["frames.Q8_0"]);
    assert!(err <= 2e-3, "Q8_0 frames differ from diffusers' by {err}");
}

// ------------------------------------------------------------------------------------------ bad input

fn tiny_args<'a>(model: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "generate",
        "dance monkey",
        "--model",
        model,
        "--size",
        "32x32",
        "--frames",
        "9",
        "--steps",
        "2",
        "-q",
        "-o",
        out,
    ]
}

#[test]
fn missing_model_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.npy");
    let o = out.to_string_lossy().to_string();
    assert_fails(&tiny_args("/nonexistent/model", &o), "no such folder", &out);
    // A folder that is not a model at all.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_fails(
        &tiny_args(&empty.to_string_lossy(), &o),
        "is not a Wan2.1 model folder",
        &out,
    );
}

#[test]
fn a_device_this_build_cannot_use_is_refused_with_the_way_out() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.npy");
    let o = out.to_string_lossy().to_string();
    let model = fixture("wan-tiny-unipc").join("pipeline");
    let model = model.to_string_lossy();
    let with = |device: &'static str| {
        let mut a = tiny_args(&model, &o);
        a.extend(["--device", device]);
        a
    };
    assert_fails(&with("tpu"), "cpu, cuda, cuda:N", &out);
    if !sorrel_core::device::cuda_built() {
        // The default build: a GPU asked for says how to build one that has it.
        assert_fails(&with("cuda:1"), "--features cuda", &out);
    }
}

/// A writable copy of the unipc fixture's pipeline (for a test to damage) and an output path beside it.
fn damageable_model() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    copy_dir(&fixture("wan-tiny-unipc").join("pipeline"), &model);
    let out = tmp.path().join("o.npy");
    (tmp, model, out)
}

/// `sorrel generate` on `model` must fail naming `needle`, and write nothing at `out`.
fn assert_model_fails(model: &Path, out: &Path, needle: &str) {
    assert_fails(
        &tiny_args(&model.to_string_lossy(), &out.to_string_lossy()),
        needle,
        out,
    );
}

#[test]
fn malformed_model_folder() {
    let (_tmp, model, out) = damageable_model();
    std::fs::write(model.join("transformer/config.json"), "{ not json").unwrap();
    assert_model_fails(
        &model,
        &out,
        "transformer/config.json is not a valid config",
    );
    // A subfolder missing entirely.
    copy_dir(
        &fixture("wan-tiny-unipc").join("pipeline/transformer"),
        &model.join("transformer"),
    );
    std::fs::remove_dir_all(model.join("vae")).unwrap();
    assert_model_fails(&model, &out, "vae is missing");
}

#[test]
fn missing_tensor_is_named() {
    let (_tmp, model, out) = damageable_model();
    let file = model.join("transformer/diffusion_pytorch_model.safetensors");
    let mut ts = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    ts.remove("blocks.1.attn2.to_k.weight").unwrap();
    candle_core::safetensors::save(&ts, &file).unwrap();
    assert_model_fails(
        &model,
        &out,
        "tensor `blocks.1.attn2.to_k.weight` is missing",
    );
}

#[test]
fn shape_mismatch_names_tensor_and_both_shapes() {
    let (_tmp, model, out) = damageable_model();
    let cfg_path = model.join("transformer/config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["ffn_dim"] = 48.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    assert_model_fails(
        &model,
        &out,
        "shape mismatch for tensor `blocks.0.ffn.net.0.proj.weight`",
    );
    assert_model_fails(&model, &out, "[32, 24] but config.json implies [48, 24]");
}

#[test]
fn bad_request_values() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("wan-tiny-unipc").join("pipeline");
    let m = model.to_string_lossy().to_string();
    let out = tmp.path().join("o.npy");
    let o = out.to_string_lossy().to_string();
    let with = |extra: &[&'static str]| {
        let mut a = tiny_args(&m, &o);
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let set = |i: usize, v: &str| {
        let mut a: Vec<String> = tiny_args(&m, &o).into_iter().map(String::from).collect();
        a[i] = v.to_string();
        a
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (set(5, "40x32"), "width must be a multiple of 16"),
        (set(5, "0x32"), "width and height must be positive"),
        (set(7, "10"), "frames must be 4k+1"),
        (set(9, "0"), "0 steps is not supported"),
        (with(&["--scheduler", "ddim"]), "unknown scheduler `ddim`"),
        (with(&["--dtype", "f8"]), "unknown dtype `f8`"),
        (
            with(&["--vae-dtype", "f16"]),
            "`f16` is not a VAE dtype: use f32 or bf16",
        ),
        (
            with(&["--guidance", "NaN"]),
            "guidance NaN is not supported",
        ),
        (with(&["--fps", "0"]), "--fps 0 is not supported"),
        (with(&["--fps", "1000"]), "--fps 1000 is not supported"),
        (with(&["--codec", "vp9"]), "unknown video codec \"vp9\""),
        (with(&["--thumbnail", "t.bmp"]), "use .png, .jpg or .webp"),
    ];
    for (args, needle) in cases {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_fails(&refs, needle, &out);
    }
    let mut a = tiny_args(&m, &o);
    a[5] = "3Ox32";
    assert_fails(&a, "is not a number", &out);
    let mut a = tiny_args(&m, &o);
    a[1] = "   ";
    assert_fails(&a, "the prompt is empty", &out);
}

#[test]
fn bad_output_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let m = fixture("wan-tiny-unipc")
        .join("pipeline")
        .to_string_lossy()
        .to_string();
    let out = tmp.path().join("clip.xyz");
    assert_fails(
        &tiny_args(&m, &out.to_string_lossy()),
        "unknown output extension .xyz",
        &out,
    );
    let out = tmp.path().join("missing-dir/clip.npy");
    assert_fails(
        &tiny_args(&m, &out.to_string_lossy()),
        "does not exist",
        &out,
    );
    // A read-only folder (root ignores permissions, so only check when they apply).
    let ro = tmp.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::write(ro.join("probe"), b"x").is_err() {
        let out = ro.join("clip.npy");
        assert_fails(&tiny_args(&m, &out.to_string_lossy()), "not writable", &out);
    }
}

#[test]
fn init_latents_of_the_wrong_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let m = fixture("wan-tiny-unipc")
        .join("pipeline")
        .to_string_lossy()
        .to_string();
    let out = tmp.path().join("o.npy");
    let o = out.to_string_lossy().to_string();
    let init = fixture("wan-tiny-unipc")
        .join("init_latents.safetensors")
        .to_string_lossy()
        .to_string();
    let mut a = tiny_args(&m, &o);
    a[5] = "64x32"; // the latents are for 32x32
    a.extend(["--init-latents", &init]);
    assert_fails(&a, "init latents have shape [1, 16, 3, 4, 4]", &out);
}

#[test]
fn writes_a_playable_mp4_at_the_native_rate_with_stills() {
    let tmp = tempfile::tempdir().unwrap();
    let m = fixture("wan-tiny-unipc")
        .join("pipeline")
        .to_string_lossy()
        .to_string();
    let out = tmp.path().join("clip.mp4");
    let thumb = tmp.path().join("thumb.jpg");
    let sheet = tmp.path().join("sheet.png");
    let mut args = tiny_args(&m, out.to_str().unwrap());
    args.extend([
        "--thumbnail",
        thumb.to_str().unwrap(),
        "--spritesheet",
        sheet.to_str().unwrap(),
    ]);
    let o = sorrel(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains("MP4 (H.264)") && said.contains("9 frames 32x32 at 16 fps"),
        "{said}"
    );
    // Wan2.1's native 16 fps: 9 frames last 0.5625 s, exactly.
    let p = ffprobe(&out);
    assert_eq!(
        (
            p.codec.as_str(),
            p.frames,
            p.r_frame_rate.as_str(),
            p.format_duration
        ),
        ("h264", 9, "16/1", Some(0.5625))
    );
    assert_eq!(ffprobe(&thumb).codec, "mjpeg");
    // 9 frames fit in 16 tiles: 4 columns, 3 rows of 32x32.
    let dec = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&sheet).unwrap(),
    ));
    let info = dec.read_info().unwrap().info().clone();
    assert_eq!((info.width, info.height), (128, 96));
}

#[test]
fn fps_codec_and_container_options_reach_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let m = fixture("wan-tiny-unipc")
        .join("pipeline")
        .to_string_lossy()
        .to_string();
    // (output, extra arguments, (codec, frames, rate, seconds)) as ffprobe must see them.
    type Case<'a> = (&'a str, &'a [&'a str], (&'a str, u64, &'a str, f64));
    let cases: [Case; 3] = [
        (
            "a.mp4",
            &["--fps", "8", "--codec", "av1"],
            ("av1", 9, "8/1", 1.125),
        ),
        ("b.webm", &["--fps", "24"], ("av1", 9, "24/1", 0.375)),
        ("c.gif", &["--fps", "10"], ("gif", 9, "10/1", 0.9)),
    ];
    for (name, extra, (codec, frames, rate, secs)) in cases {
        let out = tmp.path().join(name);
        let mut args = tiny_args(&m, out.to_str().unwrap());
        args.extend_from_slice(extra);
        let o = sorrel(&args);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let got = ffprobe(&out);
        assert_eq!(
            (got.codec.as_str(), got.frames, got.r_frame_rate.as_str()),
            (codec, frames, rate),
            "{name}"
        );
        let d = got.format_duration.unwrap();
        assert!((d - secs).abs() < 1e-9, "{name}: duration {d}");
    }
}
