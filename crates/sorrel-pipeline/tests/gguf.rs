//! GGUF transformers (`--transformer FILE.gguf`) on the wan-tiny-wide fixture (model width 256, so every
//! block size divides its matrices), written by gguf-py the way ComfyUI-GGUF writes Wan models
//! (`tools/reference/make_gguf_fixtures.py`): F32 gives diffusers' frames; each quantized type's distance
//! from them is measured and bounded.

use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use sorrel_pipeline::{LoadOptions, LoraSpec, WanPipeline};
mod common;

use sorrel_testkit::{fixture, max_abs_diff, reference_metadata};

fn dir() -> PathBuf {
    fixture("wan-tiny-wide")
}

fn load(transformer: &Path, loras: Vec<LoraSpec>) -> sorrel_core::Result<WanPipeline> {
    WanPipeline::load(
        &dir().join("pipeline"),
        &LoadOptions {
            transformer: Some(transformer.to_path_buf()),
            loras,
            ..LoadOptions::default()
        },
    )
}

fn generate(transformer: &Path) -> Tensor {
    generate_with(transformer, vec![])
}

fn generate_with(transformer: &Path, loras: Vec<LoraSpec>) -> Tensor {
    let meta = reference_metadata("wan-tiny-wide");
    let init = candle_core::safetensors::load(dir().join("init_latents.safetensors"), &Device::Cpu)
        .unwrap()["latents"]
        .clone();
    let req = common::request_from(&meta, &init);
    load(transformer, loras)
        .unwrap()
        .generate(&req, &mut |_| true)
        .unwrap()
        .frames
}

fn psnr(a: &Tensor, b: &Tensor) -> f64 {
    let mse = (sorrel_testkit::rms_diff(a, b) as f64).powi(2);
    10.0 * (1.0 / mse.max(1e-20)).log10()
}

/// Writes `out` from the GGUF file `src`: every tensor (expanded to f32) through `map`, which returns the
/// tensors to write in its place; the metadata carried over.
fn rewrite(src: &Path, out: &Path, map: impl Fn(&str, Tensor) -> Vec<(String, QTensor)>) {
    let mut f = std::fs::File::open(src).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let mut tensors = vec![];
    for (name, info) in &content.tensor_infos {
        let t = info
            .read(&mut f, content.tensor_data_offset, &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        tensors.extend(map(name, t));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, q)| (n.as_str(), q)).collect();
    gguf_file::write(&mut std::fs::File::create(out).unwrap(), &metadata, &refs).unwrap();
}

fn plain(t: &Tensor) -> QTensor {
    QTensor::quantize(t, GgmlDType::F32).unwrap()
}

/// The F32 file requantized with candle's port of ggml's quantizers (gguf-py cannot write K-quants):
/// matrices whose rows divide into `dtype`'s blocks, the rest kept F32.
fn requantize(dtype: GgmlDType, out: &Path) {
    rewrite(&dir().join("transformer-F32.gguf"), out, |name, t| {
        let dims = t.dims();
        let q = if dims.len() == 2 && dims[1] % dtype.block_size() == 0 && !name.contains("patch") {
            QTensor::quantize(&t, dtype).unwrap()
        } else {
            plain(&t)
        };
        vec![(name.to_string(), q)]
    });
}

#[test]
fn every_type_against_diffusers_frames() {
    let want = sorrel_testkit::reference("wan-tiny-wide")["frames"]
        .squeeze(0)
        .unwrap();
    let f32 = generate(&dir().join("transformer-F32.gguf"));
    let err = max_abs_diff(&f32, &want);
    println!("F32: frames max abs err {err:e} against diffusers");
    // The T2V parity bound: F32 GGUF is the same numbers as the safetensors weights.
    assert!(
        err <= 2e-3,
        "F32 GGUF frames differ from diffusers by {err}"
    );

    // gguf-py's Q8_0 and Q4_0 files against diffusers run with the same weights as gguf-py dequantizes
    // them: the same numbers, so the parity bound holds. How far quantizing moves the frames is reported.
    for name in ["Q8_0", "Q4_0"] {
        let frames = generate(&dir().join(format!("transformer-{name}.gguf")));
        let theirs = sorrel_testkit::reference("wan-tiny-wide")[&format!("frames.{name}")]
            .squeeze(0)
            .unwrap();
        let err = max_abs_diff(&frames, &theirs);
        println!(
            "{name}: frames max abs err {err:e} against diffusers with the dequantized weights; {:.1} dB from \
             the f32 frames (diffusers: {:.1} dB)",
            psnr(&frames, &want),
            psnr(&theirs, &want)
        );
        assert!(
            err <= 2e-3,
            "{name}: frames differ from diffusers' by {err}"
        );
    }
    // K-quants (written here with candle's port of ggml's quantizers; gguf-py cannot write them): no diffusers
    // run to match, so the distance from the f32 frames is bounded below what was measured (printed) by a few
    // dB, and must rise with the bits, as a correct dequantization makes it.
    let tmp = tempfile::tempdir().unwrap();
    let mut last = 0.0;
    for (dtype, name, bound) in [
        (GgmlDType::Q4K, "Q4_K", MIN_DB[0]),
        (GgmlDType::Q5K, "Q5_K", MIN_DB[1]),
        (GgmlDType::Q6K, "Q6_K", MIN_DB[2]),
    ] {
        let p = tmp.path().join(format!("transformer-{name}.gguf"));
        requantize(dtype, &p);
        let frames = generate(&p);
        let db = psnr(&frames, &want);
        println!("{name}: frames {db:.1} dB from the f32 frames");
        assert!(db >= bound, "{name}: {db:.1} dB is under {bound} dB");
        assert!(
            db > last,
            "{name} should be closer than the type with fewer bits"
        );
        last = db;
    }
}

/// Lowest PSNR (dB) of Q4_K, Q5_K, Q6_K frames from the f32 frames on this fixture: 3 dB under the measured
/// 22.1, 23.1 and 31.3 (this tiny random model amplifies weight error: Q8_0 gives 37.4 dB, in diffusers too).
const MIN_DB: [f64; 3] = [19.0, 20.0, 28.0];

fn load_err(transformer: &Path, loras: Vec<LoraSpec>) -> String {
    match load(transformer, loras) {
        Ok(_) => panic!("{} should have been refused", transformer.display()),
        Err(e) => e.to_string(),
    }
}

/// A GGUF v3 file with one 256-element tensor of ggml type `ty` and `count` as its tensor count.
fn tiny_gguf(path: &Path, ty: u32, count: u64) {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(count.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.push(b'x');
    b.extend(1u32.to_le_bytes());
    b.extend(256u64.to_le_bytes());
    b.extend(ty.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.resize(b.len().div_ceil(32) * 32 + 1024, 0);
    std::fs::write(path, b).unwrap();
}

#[test]
fn bad_gguf_files_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    // A header that claims 2^60 tensors: refused from the file's size, nothing allocated.
    let huge = tmp.path().join("huge.gguf");
    tiny_gguf(&huge, 0, 1 << 60);
    let e = load_err(&huge, vec![]);
    assert!(
        e.contains("not valid GGUF") && e.contains("huge.gguf"),
        "{e}"
    );
    // A type Sorrel does not read is named.
    let iq = tmp.path().join("iq4.gguf");
    tiny_gguf(&iq, 23, 1);
    let e = load_err(&iq, vec![]);
    assert!(e.contains("IQ4_XS") && e.contains("does not read"), "{e}");
    // Not GGUF at all.
    let junk = tmp.path().join("junk.gguf");
    std::fs::write(&junk, b"not a gguf file at all, just text").unwrap();
    let e = load_err(&junk, vec![]);
    assert!(e.contains("not valid GGUF"), "{e}");
    // Cut short: the header reads, the tensors do not.
    let bytes = std::fs::read(dir().join("transformer-Q8_0.gguf")).unwrap();
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&cut, vec![]);
    assert!(e.contains("truncated or damaged"), "{e}");
    // A GGUF of another model (no Wan tensors).
    let other = tmp.path().join("other.gguf");
    tiny_gguf(&other, 0, 1);
    let e = load_err(&other, vec![]);
    assert!(e.contains("is not a Wan transformer"), "{e}");
}

#[test]
fn the_file_sets_the_transformer_size() {
    // A two-layer file beside the one-layer folder (as a 14B GGUF beside a 1.3B folder's text encoder and
    // VAE): block 1 is block 0 again. The sizes come from the file's tensors.
    let src = dir().join("transformer-F32.gguf");
    let tmp = tempfile::tempdir().unwrap();
    let two = tmp.path().join("two-layers.gguf");
    rewrite(&src, &two, |name, t| {
        let mut out = vec![(name.to_string(), plain(&t))];
        if let Some(rest) = name.strip_prefix("blocks.0.") {
            out.push((format!("blocks.1.{rest}"), plain(&t)));
        }
        out
    });
    let pipe = load(&two, vec![]).unwrap();
    assert_eq!(pipe.transformer_config().num_layers, 2);
    let one = load(&src, vec![]).unwrap();
    assert_eq!(one.transformer_config().num_layers, 1);
}

#[test]
fn loras_apply_beside_quantized_weights() {
    // A LoRA on the Q8_0 file, applied beside the quantized matrices, against the same LoRA merged into the
    // same weights expanded to an F32 file (the merged path is checked against diffusers in tests/lora.rs).
    let tmp = tempfile::tempdir().unwrap();
    let mut lora = std::collections::HashMap::new();
    // Seeded, so every run checks the same adapter.
    let randn = |seed: u64, shape: &[usize]| {
        (sorrel_pipeline::noise::gaussian(seed, shape, &Device::Cpu).unwrap() * 0.05).unwrap()
    };
    for (i, (module, out_dim, in_dim)) in [
        ("blocks.0.attn1.to_q", 256, 256),
        ("blocks.0.attn2.to_v", 256, 256),
        ("blocks.0.ffn.net.0.proj", 256, 256),
        ("proj_out", 64, 256),
    ]
    .into_iter()
    .enumerate()
    {
        let a = randn(2 * i as u64, &[4, in_dim]);
        let b = randn(2 * i as u64 + 1, &[out_dim, 4]);
        lora.insert(format!("transformer.{module}.lora_A.weight"), a);
        lora.insert(format!("transformer.{module}.lora_B.weight"), b);
    }
    let lora_path = tmp.path().join("lora.safetensors");
    candle_core::safetensors::save(&lora, &lora_path).unwrap();
    let spec = |scale| LoraSpec {
        path: lora_path.clone(),
        scale,
    };

    // The Q8_0 file's weights, expanded, as an F32 file.
    let q8 = dir().join("transformer-Q8_0.gguf");
    let expanded = tmp.path().join("expanded.gguf");
    rewrite(&q8, &expanded, |name, t| {
        vec![(name.to_string(), plain(&t))]
    });

    // One forward: the same sums in another order (the low-rank product beside the matrix, or merged in it).
    let forward = |file: &Path| {
        let pipe = load(file, vec![spec(1.0)]).unwrap();
        let tr = pipe.transformer().unwrap();
        let x = sorrel_pipeline::noise::gaussian(7, &[1, 16, 2, 4, 6], &Device::Cpu).unwrap();
        let ctx = sorrel_pipeline::noise::gaussian(8, &[1, 12, 32], &Device::Cpu).unwrap();
        tr.forward(&x, &Tensor::new(&[500f32], &Device::Cpu).unwrap(), &ctx)
            .unwrap()
    };
    let one = max_abs_diff(&forward(&q8), &forward(&expanded));
    println!("LoRA beside Q8_0: one forward {one:e} from merged into its expanded weights");
    // 1e-5: one fp32 forward in another summation order.
    assert!(
        one <= 1e-5,
        "a forward with the LoRA beside quantized weights differs from merged by {one}"
    );
    // The whole pipeline: guidance 5 over the steps amplifies those last-bit differences (with unseeded
    // adapters they ranged from 1.6e-5 to 3.6e-4), so the frames are held to the whole-pipeline bound that
    // every fp32 pipeline comparison uses.
    let beside = generate_with(&q8, vec![spec(1.0)]);
    let merged = generate_with(&expanded, vec![spec(1.0)]);
    let plain = generate(&q8);
    let (err, moved) = (
        max_abs_diff(&beside, &merged),
        max_abs_diff(&beside, &plain),
    );
    println!("LoRA beside Q8_0: frames {err:e} from merged; the LoRA moves frames {moved:.3}");
    assert!(moved > 0.05, "the LoRA barely changes the frames ({moved})");
    assert!(
        err <= common::FRAMES_BOUND,
        "LoRA beside quantized weights differs from merged by {err}"
    );
    // Scale 0 leaves the quantized model exactly as it was.
    assert_eq!(
        max_abs_diff(&generate_with(&q8, vec![spec(0.0)]), &plain),
        0.0
    );
    // A LoRA for another model is still refused.
    let e = load_err(
        &q8,
        vec![LoraSpec {
            path: fixture("lora").join("peft.safetensors"),
            scale: 1.0,
        }],
    );
    assert!(e.contains("another size"), "{e}");
}

#[test]
fn quantizing_as_it_loads_gives_the_quantized_files_frames() {
    // `--quant q8_0` on the F32 file quantizes with candle's Q8_0, the algorithm gguf-py's Q8_0 file was
    // written with: the frames match diffusers run with that file's dequantized weights.
    let pipe = WanPipeline::load(
        &dir().join("pipeline"),
        &LoadOptions {
            transformer: Some(dir().join("transformer-F32.gguf")),
            quant: Some(GgmlDType::Q8_0),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let meta = reference_metadata("wan-tiny-wide");
    let init = candle_core::safetensors::load(dir().join("init_latents.safetensors"), &Device::Cpu)
        .unwrap()["latents"]
        .clone();
    let frames = pipe
        .generate(&common::request_from(&meta, &init), &mut |_| true)
        .unwrap()
        .frames;
    let theirs = sorrel_testkit::reference("wan-tiny-wide")["frames.Q8_0"]
        .squeeze(0)
        .unwrap();
    let err = max_abs_diff(&frames, &theirs);
    println!(
        "--quant q8_0: frames max abs err {err:e} against diffusers with gguf-py's Q8_0 weights"
    );
    assert!(err <= 2e-3, "{err}");
    assert!(sorrel_core::gguf::parse_quant("iq4_xs")
        .unwrap_err()
        .to_string()
        .contains("q8_0"));
}
