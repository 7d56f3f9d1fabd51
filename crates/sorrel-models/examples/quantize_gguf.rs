//! Writes a Wan transformer (diffusers folder: config.json + safetensors) as a GGUF file the way ComfyUI-GGUF
//! lays Wan models out: original Wan names, matrices whose rows divide into the type's blocks quantized, the
//! rest (patch embedding, norms, biases, modulation tables) in F32, 5-D tensors flattened with their shape in
//! `comfy.gguf.orig_shape.NAME`. For benchmarks and tests; the quantizers are candle's port of ggml's.
//!
//! `cargo run --release -p sorrel-models --example quantize_gguf -- TRANSFORMER_DIR OUT.gguf q8_0|q4_k|...`

use std::path::PathBuf;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device};
use sorrel_models::wan::convert::transformer_key_to_original;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, out, ty] = args.as_slice() else {
        anyhow::bail!("usage: quantize_gguf TRANSFORMER_DIR OUT.gguf q8_0|q4_0|q4_1|q5_0|q5_1|q4_k|q5_k|q6_k|f16");
    };
    let dtype = match ty.to_ascii_lowercase().as_str() {
        "q8_0" => GgmlDType::Q8_0,
        "q4_0" => GgmlDType::Q4_0,
        "q4_1" => GgmlDType::Q4_1,
        "q5_0" => GgmlDType::Q5_0,
        "q5_1" => GgmlDType::Q5_1,
        "q4_k" => GgmlDType::Q4K,
        "q5_k" => GgmlDType::Q5K,
        "q6_k" => GgmlDType::Q6K,
        "f16" => GgmlDType::F16,
        other => anyhow::bail!("unknown type {other}"),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    let mut tensors = Vec::new();
    let mut shapes = Vec::new();
    for f in &files {
        for (name, t) in candle_core::safetensors::load(f, &Device::Cpu)? {
            let t = t.to_dtype(DType::F32)?;
            let orig = transformer_key_to_original(&name);
            let dims = t.dims().to_vec();
            let flattened = dims.len() > 4;
            let t = if flattened {
                shapes.push((
                    format!("comfy.gguf.orig_shape.{orig}"),
                    gguf_file::Value::Array(
                        dims.iter()
                            .map(|d| gguf_file::Value::I32(*d as i32))
                            .collect(),
                    ),
                ));
                t.flatten_from(1)?
            } else {
                t
            };
            // The patch embedding (a convolution, stored flattened) stays F32, as in ComfyUI-GGUF's files.
            let q = if !flattened && t.rank() == 2 && t.dims()[1] % dtype.block_size() == 0 {
                QTensor::quantize(&t, dtype)?
            } else {
                QTensor::quantize(&t, GgmlDType::F32)?
            };
            tensors.push((orig, q));
        }
    }
    let arch = gguf_file::Value::String("wan".into());
    let mut metadata: Vec<(&str, &gguf_file::Value)> = vec![("general.architecture", &arch)];
    metadata.extend(shapes.iter().map(|(k, v)| (k.as_str(), v)));
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, q)| (n.as_str(), q)).collect();
    let tmp = format!("{out}.part");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    gguf_file::write(&mut w, &metadata, &refs)?;
    drop(w);
    std::fs::rename(&tmp, out)?;
    println!("{out}: {} tensors, {ty}", refs.len());
    Ok(())
}
