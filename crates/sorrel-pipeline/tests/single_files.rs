//! ComfyUI's repackaged single files (`--transformer`, `--text-encoder`, `--vae`): wan-tiny-alt's weights as an
//! fp16 transformer under `model.diffusion_model.` with the original names, an fp8-e4m3 "scaled" text encoder
//! and the VAE in the original release's names (`tools/reference/make_single_file_fixtures.py`), against
//! diffusers run with exactly the numbers those files decode to.

use std::path::{Path, PathBuf};

use sorrel_pipeline::{LoadOptions, WanPipeline};
mod common;

use sorrel_testkit::{fixture, max_abs_diff, reference_metadata};

fn comfy(name: &str) -> PathBuf {
    fixture("comfy").join(name)
}

fn options() -> LoadOptions {
    LoadOptions {
        transformer: Some(comfy("transformer.safetensors")),
        text_encoder: Some(comfy("text_encoder.safetensors")),
        vae: Some(comfy("vae.safetensors")),
        ..LoadOptions::default()
    }
}

fn generate(dir: &Path, opts: &LoadOptions) -> candle_core::Tensor {
    let meta = reference_metadata("wan-tiny-alt");
    let init = sorrel_testkit::reference("wan-tiny-alt")["latents_init"].clone();
    let mut req = common::request_from(&meta, &init);
    req.flow_shift = Some(meta["flow_shift"].parse().unwrap());
    WanPipeline::load(dir, opts)
        .unwrap()
        .generate(&req, &mut |_| true)
        .unwrap()
        .frames
}

#[test]
fn comfyui_single_files_match_diffusers() {
    let want = sorrel_testkit::reference("comfy")["frames"]
        .squeeze(0)
        .unwrap();
    let f32_frames = sorrel_testkit::reference("wan-tiny-alt")["frames"]
        .squeeze(0)
        .unwrap();
    let frames = generate(&fixture("wan-tiny-alt").join("pipeline"), &options());
    let err = max_abs_diff(&frames, &want);
    println!(
        "single files: frames max abs err {err:e} against diffusers with the same numbers; fp8/fp16 moved \
         them {:.4} from the f32 weights' frames",
        max_abs_diff(&want, &f32_frames)
    );
    assert!(err <= 2e-3, "frames differ from diffusers by {err}");
    // The same files replace the original release folder's weights too.
    let frames = generate(&fixture("wan-tiny-alt").join("original"), &options());
    assert!(max_abs_diff(&frames, &want) <= 2e-3);
}

#[test]
fn a_file_of_another_component_is_refused() {
    let err = |opts: LoadOptions| match WanPipeline::load(
        &fixture("wan-tiny-alt").join("pipeline"),
        &opts,
    ) {
        Ok(_) => panic!("should be refused"),
        Err(e) => e.to_string(),
    };
    let e = err(LoadOptions {
        vae: Some(comfy("text_encoder.safetensors")),
        ..LoadOptions::default()
    });
    assert!(e.contains("is not a Wan VAE"), "{e}");
    let e = err(LoadOptions {
        text_encoder: Some(comfy("vae.safetensors")),
        ..LoadOptions::default()
    });
    assert!(e.contains("is not a Wan text encoder"), "{e}");
    let e = err(LoadOptions {
        transformer: Some(comfy("vae.safetensors")),
        ..LoadOptions::default()
    });
    assert!(e.contains("is not a Wan transformer"), "{e}");
    // A transformer whose width is not a whole number of the folder's heads (24 wide, heads of 16).
    let e = err(LoadOptions {
        transformer: Some(
            fixture("wan-tiny-unipc").join("original/diffusion_pytorch_model.safetensors"),
        ),
        ..LoadOptions::default()
    });
    assert!(e.contains("not a whole number of 16-channel heads"), "{e}");
}

#[test]
fn an_image_encoder_single_file_gives_diffusers_clip_features() {
    // wan-tiny-i2v's CLIP vision tower named as in ComfyUI's clip_vision_h.safetensors (under `vision_model.`).
    let src = fixture("wan-tiny-i2v").join("pipeline/image_encoder/model.safetensors");
    let renamed: std::collections::HashMap<String, candle_core::Tensor> =
        candle_core::safetensors::load(&src, &candle_core::Device::Cpu)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (format!("vision_model.{k}"), v))
            .collect();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("clip_vision.safetensors");
    candle_core::safetensors::save(&renamed, &file).unwrap();
    let pipe = WanPipeline::load(
        &fixture("wan-tiny-i2v").join("pipeline"),
        &LoadOptions {
            image_encoder: Some(file),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let r = sorrel_testkit::reference("wan-tiny-i2v");
    let img = &r["image"];
    let (h, w, _) = img.dims3().unwrap();
    let pic = sorrel_pipeline::Picture {
        width: w,
        height: h,
        rgb: img.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
    };
    let feats = pipe.image_features(&[&pic]).unwrap();
    let err = max_abs_diff(&feats, &r["clip.hidden_states_penultimate"]);
    assert!(err <= 1e-4, "CLIP features differ from diffusers by {err}");
}
