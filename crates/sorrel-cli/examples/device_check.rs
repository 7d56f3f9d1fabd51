//! The GPU check's Rust half, run by `tools/device/check.sh` on the GPU machine (which has no Rust toolchain:
//! `tools/device/build.sh` builds this with `--features cuda` and the script takes it along).
//!
//! `device_check parity DEVICE [FIXTURES]`: the committed diffusers fixtures (`tests/fixtures`) generated on
//! the CPU and on DEVICE, fp32 and bf16; prints one JSON line per run with its distance from the CPU's frames
//! and from diffusers' (fp32 on the GPU must be within 2e-3 of diffusers, as on the CPU; bf16 is reported),
//! and exits 1 if an fp32 run is not.
//!
//! `device_check bench DEVICE TRANSFORMER_DIR INPUTS.safetensors STEPS bf16|f32`: STEPS denoising steps of the
//! transformer with guidance (a conditional and an unconditional forward each, as the pipeline runs them at
//! this size) on inputs `tools/device/bench_diffusers.py` saved (`x`, `t`, `context`, `negative_context`);
//! prints one JSON line with the load time, each step's seconds and the output's distance from diffusers'
//! first step (`out_first`, where present).

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use candle_core::{DType, Device, Tensor};
use sorrel_core::device::DeviceChoice;
use sorrel_core::TensorSource;
use sorrel_models::wan::config::WanTransformerConfig;
use sorrel_models::wan::transformer::WanTransformer3DModel;
use sorrel_pipeline::{Conditioning, GenerateRequest, LoadOptions, Picture, WanPipeline};
use sorrel_testkit::{max_abs, max_abs_diff};

fn main() -> Result<()> {
    // SAFETY: first thing in `main`, before any thread exists.
    unsafe { sorrel_core::threads::pin_thread_counts() };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let device = |s: &str| -> Result<Device> { Ok(s.parse::<DeviceChoice>()?.open()?) };
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["parity", dev] => parity(&device(dev)?, Path::new("tests/fixtures")),
        ["parity", dev, fixtures] => parity(&device(dev)?, Path::new(fixtures)),
        ["bench", dev, dir, inputs, steps, dtype] => bench(
            &device(dev)?,
            Path::new(dir),
            Path::new(inputs),
            steps.parse().context("STEPS is a number")?,
            match dtype {
                "bf16" => DType::BF16,
                "f32" => DType::F32,
                other => bail!("dtype `{other}`: use bf16 or f32"),
            },
        ),
        _ => bail!(
            "usage: device_check parity DEVICE [FIXTURES] | device_check bench DEVICE TRANSFORMER_DIR \
             INPUTS.safetensors STEPS bf16|f32"
        ),
    }
}

/// One fixture run: the folder, the prefix of its tensors in `reference.safetensors`, image conditioning.
struct Case {
    name: &'static str,
    prefix: &'static str,
    image: bool,
}

const CASES: &[Case] = &[
    Case {
        name: "wan-tiny-unipc",
        prefix: "",
        image: false,
    },
    Case {
        name: "wan-tiny-alt",
        prefix: "",
        image: false,
    },
    Case {
        name: "wan-tiny-i2v",
        prefix: "",
        image: true,
    },
    Case {
        name: "wan22-tiny-ti2v",
        prefix: "t2v.",
        image: false,
    },
];

fn parity(dev: &Device, fixtures: &Path) -> Result<()> {
    let mut failed = Vec::new();
    for case in CASES {
        let dir = fixtures.join(case.name);
        let file = dir.join("reference.safetensors");
        let r = candle_core::safetensors::load(&file, &Device::Cpu)
            .with_context(|| format!("reading {}", file.display()))?;
        let meta = sorrel_testkit::file_metadata(&file);
        let want = r[&format!("{}frames", case.prefix)].squeeze(0)?;
        let req = request(&meta, &r, case)?;
        let cpu = run(&dir, &Device::Cpu, DType::F32, &req)?;
        for dtype in [DType::F32, DType::BF16] {
            let t0 = Instant::now();
            let got = run(&dir, dev, dtype, &req)?;
            let (from_cpu, from_diffusers) = (max_abs_diff(&got, &cpu), max_abs_diff(&got, &want));
            let ok = dtype != DType::F32 || from_diffusers <= 2e-3;
            println!(
                "{}",
                serde_json::json!({
                    "check": "parity", "fixture": case.name, "device": sorrel_core::device::describe(dev),
                    "dtype": format!("{dtype:?}"), "max_abs_from_cpu": from_cpu,
                    "max_abs_from_diffusers": from_diffusers,
                    "cpu_from_diffusers": max_abs_diff(&cpu, &want),
                    "bound": if dtype == DType::F32 { Some(2e-3) } else { None },
                    "ok": ok, "seconds": t0.elapsed().as_secs_f64(),
                })
            );
            if !ok {
                failed.push(format!("{} {dtype:?}", case.name));
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "frames beyond 2e-3 of diffusers on the GPU: {}",
            failed.join(", ")
        );
    }
    Ok(())
}

/// The request that reproduces the fixture's diffusers run from its starting noise.
fn request(
    meta: &HashMap<String, String>,
    r: &HashMap<String, Tensor>,
    case: &Case,
) -> Result<GenerateRequest> {
    let num = |k: &str| -> Result<usize> {
        meta.get(k)
            .with_context(|| format!("metadata `{k}`"))?
            .parse()
            .map_err(Into::into)
    };
    let conditioning = if case.image {
        let t = &r["image"];
        let (h, w, _) = t.dims3()?;
        Conditioning::Image {
            first: Picture {
                width: w,
                height: h,
                rgb: t.flatten_all()?.to_vec1::<u8>()?,
            },
            last: None,
        }
    } else {
        Conditioning::None
    };
    Ok(GenerateRequest {
        prompt: meta["prompt"].clone(),
        negative_prompt: meta["negative_prompt"].clone(),
        width: num("width")?,
        height: num("height")?,
        frames: num("num_frames")?,
        steps: num("steps")?,
        guidance: meta["guidance_scale"].parse()?,
        max_sequence_length: Some(num("max_sequence_length")?),
        init_latents: Some(r[&format!("{}latents_init", case.prefix)].clone()),
        conditioning,
        ..GenerateRequest::default()
    })
}

fn run(dir: &Path, dev: &Device, dtype: DType, req: &GenerateRequest) -> Result<Tensor> {
    let opts = LoadOptions {
        dtype,
        device: dev.clone(),
        ..LoadOptions::default()
    };
    let pipe = WanPipeline::load(&dir.join("pipeline"), &opts)?;
    let video = pipe.generate(req, &mut |_| true)?;
    Ok(video.frames.to_device(&Device::Cpu)?.to_dtype(DType::F32)?)
}

fn bench(dev: &Device, dir: &Path, inputs: &Path, steps: usize, dtype: DType) -> Result<()> {
    let t0 = Instant::now();
    let cfg = WanTransformerConfig::from_diffusers_file(&dir.join("config.json"))?;
    let src = TensorSource::open_dir(dir, "diffusion_pytorch_model")?;
    let model = WanTransformer3DModel::new(&cfg, src.into_var_builder(dtype, dev))?;
    synchronize(dev)?;
    let load = t0.elapsed().as_secs_f64();
    let saved = candle_core::safetensors::load(inputs, dev)?;
    let take = |k: &str| -> Result<Tensor> {
        Ok(saved
            .get(k)
            .with_context(|| format!("{} has no `{k}`", inputs.display()))?
            .clone())
    };
    let (x, t) = (
        take("x")?.to_dtype(DType::F32)?,
        take("t")?.to_dtype(DType::F32)?,
    );
    let cond = model.embed_context(&take("context")?.to_dtype(dtype)?, None)?;
    let uncond = model.embed_context(&take("negative_context")?.to_dtype(dtype)?, None)?;
    let guidance = 5.0;
    let mut times = Vec::new();
    let mut first = None;
    // One step unmeasured first, as the reference does: kernels load and the allocator fills on first use.
    for i in 0..=steps {
        synchronize(dev)?;
        let t1 = Instant::now();
        let c = model
            .forward_with_context(&x.to_dtype(dtype)?, &t, &cond)?
            .to_dtype(DType::F32)?;
        let u = model
            .forward_with_context(&x.to_dtype(dtype)?, &t, &uncond)?
            .to_dtype(DType::F32)?;
        let pred = (&u + ((c - &u)? * guidance)?)?;
        synchronize(dev)?;
        if i > 0 {
            times.push(t1.elapsed().as_secs_f64());
        }
        first.get_or_insert(pred);
    }
    let first = first.context("no step ran")?.to_device(&Device::Cpu)?;
    let err = match saved.get("out_first") {
        Some(want) => {
            let want = want.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
            Some(max_abs_diff(&first, &want) / max_abs(&want).max(f32::MIN_POSITIVE))
        }
        None => None,
    };
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "check": "bench", "program": "sorrel", "device": sorrel_core::device::describe(dev),
            "dtype": format!("{dtype:?}"), "load_seconds": load, "step_seconds": times,
            "median_step_seconds": sorted.get(sorted.len() / 2),
            "tokens": x.dims().iter().skip(2).product::<usize>() / (cfg.patch_size.iter().product::<usize>()),
            "relative_max_abs_from_diffusers": err,
        })
    );
    Ok(())
}

/// Waits for the device's queued work, so that times are the work's and not the queueing's.
fn synchronize(dev: &Device) -> Result<()> {
    Ok(dev.synchronize()?)
}
