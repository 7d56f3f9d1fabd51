//! GGUF weight files (the quantized Wan transformers of ComfyUI-GGUF and stable-diffusion.cpp), read with
//! candle's GGUF reader. Matrices stored in a quantized type stay quantized in memory and are expanded one
//! at a time for their product (see `ops::Dense`); every other tensor (F32, F16, BF16, and quantized ones asked for as plain tensors) is dequantized
//! as it loads.
//!
//! How quantized matrices reach the model: the model code builds its linear layers with
//! [`crate::ops::dense`], which takes a `VarBuilder` and so can only receive plain tensors. While a GGUF
//! model is built, [`with_quantized`] installs the file for the building thread, and `dense` takes the
//! quantized matrix from it by the layer's name. A thread-local rather than a second builder type keeps every
//! model constructor unchanged (candle-transformers duplicates each model for its quantized builder instead).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::weights::Renamer;

/// The ggml type names for the numbers candle does not read, so a refusal names the type.
fn ggml_type_name(id: u32) -> String {
    let name = match id {
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        _ => return format!("ggml type {id}"),
    };
    name.to_string()
}

/// Types whose matrices stay quantized (the rest are plain floats).
fn is_quantized(t: GgmlDType) -> bool {
    !matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// One open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: Mutex<BufReader<File>>,
    /// `comfy.gguf.orig_shape.NAME`: tensors of more than 4 dimensions (GGUF's limit) stored flattened.
    orig_shapes: HashMap<String, Vec<usize>>,
}

impl GgufFile {
    /// Reads the header (candle bounds every count and length by the file's size, so a corrupt header is an
    /// error, never a huge allocation) and keeps the file open for the tensors.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| {
            let msg = e.to_string();
            let unknown = msg.find("unknown dtype for tensor ").map(|i| {
                msg[i + "unknown dtype for tensor ".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect::<String>()
            });
            let why = match unknown {
                Some(id) => format!(
                    "it holds tensors of type {}, which Sorrel does not read (F32, F16, BF16, Q4_0, Q4_1, Q5_0, \
                     Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K); convert it to one of those",
                    id.parse::<u32>()
                        .map(ggml_type_name)
                        .unwrap_or_else(|_| id.clone())
                ),
                None => format!("its header is not valid GGUF ({msg}); the file is damaged or not GGUF"),
            };
            Error::model(format!("GGUF file {}: {why}", path.display()))
        })?;
        let mut orig_shapes = HashMap::new();
        for (k, v) in &content.metadata {
            let Some(name) = k.strip_prefix("comfy.gguf.orig_shape.") else {
                continue;
            };
            let dims = match v {
                Value::Array(a) => a
                    .iter()
                    .map(|d| d.to_u64().or_else(|_| d.to_i32().map(|x| x as u64)))
                    .collect::<candle_core::Result<Vec<u64>>>()
                    .ok(),
                _ => None,
            };
            let Some(dims) = dims else {
                return Err(Error::model(format!(
                    "GGUF file {}: metadata `{k}` is not a list of dimensions",
                    path.display()
                )));
            };
            orig_shapes.insert(
                name.to_string(),
                dims.into_iter().map(|d| d as usize).collect(),
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader: Mutex::new(reader),
            orig_shapes,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor name.
    pub fn names(&self) -> Vec<String> {
        self.content.tensor_infos.keys().cloned().collect()
    }

    /// Whether the file has this tensor.
    pub fn contains(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// The tensor's shape (its original one for tensors stored flattened).
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let info = self.content.tensor_infos.get(name)?;
        Some(
            self.orig_shapes
                .get(name)
                .cloned()
                .unwrap_or_else(|| info.shape.dims().to_vec()),
        )
    }

    /// The tensor's storage type.
    pub fn dtype(&self, name: &str) -> Option<GgmlDType> {
        self.content.tensor_infos.get(name).map(|i| i.ggml_dtype)
    }

    /// How many tensors of each type, for messages and `models list`.
    pub fn type_counts(&self) -> Vec<(String, usize)> {
        let mut m: HashMap<String, usize> = HashMap::new();
        for i in self.content.tensor_infos.values() {
            *m.entry(format!("{:?}", i.ggml_dtype)).or_default() += 1;
        }
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort();
        v
    }

    /// Reads `name` onto `dev` (on a GPU the quantized blocks go there as they are, and expand there).
    fn read(&self, name: &str, dev: &Device) -> candle_core::Result<QTensor> {
        let mut r = self
            .reader
            .lock()
            .map_err(|_| candle_core::Error::Msg("GGUF reader lock poisoned".into()))?;
        self.content.tensor(&mut *r, name, dev).map_err(|e| {
            candle_core::Error::Msg(format!(
                "GGUF file {}: cannot read tensor `{name}` ({e}); the file is truncated or damaged",
                self.path.display()
            ))
        })
    }

    /// The tensor as plain f32 numbers in its original shape.
    pub fn dequantized(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.read(name, &Device::Cpu)?.dequantize(dev)?;
        match self.orig_shapes.get(name) {
            Some(shape) => t.reshape(shape.as_slice()),
            None => Ok(t),
        }
    }

    /// The matrix `name` kept quantized on `dev`, if it is stored in a quantized type (plain floats return
    /// `None`: they load through the `VarBuilder` like any other weight).
    pub fn quantized(&self, name: &str, dev: &Device) -> candle_core::Result<Option<QTensor>> {
        match self.dtype(name) {
            Some(t) if is_quantized(t) => Ok(Some(self.read(name, dev)?)),
            _ => Ok(None),
        }
    }
}

/// A GGUF file with the name mapping the model's names go through (as the [`crate::TensorSource`] over it).
#[derive(Clone)]
pub struct QuantizedWeights {
    /// The file.
    pub file: Arc<GgufFile>,
    /// Model name -> stored name.
    pub rename: Option<Renamer>,
    /// Adapters to apply beside the quantized matrices (their other weights merge as usual).
    pub lora: Option<Arc<crate::lora::LoraSet>>,
}

thread_local! {
    static BUILDING: RefCell<Option<QuantizedWeights>> = const { RefCell::new(None) };
    static QUANTIZE_ON_LOAD: std::cell::Cell<Option<GgmlDType>> = const { std::cell::Cell::new(None) };
}

/// The quantized types `--quant` takes, by the names llama.cpp and ComfyUI-GGUF use.
pub fn parse_quant(s: &str) -> Result<GgmlDType> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "q8_0" => GgmlDType::Q8_0,
        "q5_0" => GgmlDType::Q5_0,
        "q5_1" => GgmlDType::Q5_1,
        "q4_0" => GgmlDType::Q4_0,
        "q4_1" => GgmlDType::Q4_1,
        "q6_k" => GgmlDType::Q6K,
        "q5_k" => GgmlDType::Q5K,
        "q4_k" => GgmlDType::Q4K,
        other => {
            return Err(Error::model(format!(
                "--quant {other}: not a type Sorrel quantizes to; use q8_0 (closest to the original), q6_k, q5_k, \
                 q5_0, q5_1, q4_k, q4_0 or q4_1"
            )))
        }
    })
}

/// Runs `f` (a model constructor) with every linear layer whose rows divide into `dtype`'s blocks
/// quantized as it loads (`--quant`): the layer's weight is read, quantized and dropped, so memory holds
/// the quantized model plus one layer.
pub fn with_quantize_on_load<R>(dtype: Option<GgmlDType>, f: impl FnOnce() -> R) -> R {
    let previous = QUANTIZE_ON_LOAD.with(|q| q.replace(dtype));
    let out = f();
    QUANTIZE_ON_LOAD.with(|q| q.set(previous));
    out
}

/// The type to quantize a linear layer of input width `in_dim` to as it loads, if `--quant` is on and its
/// rows divide into the type's blocks (others stay as they are, as in GGUF files).
pub(crate) fn quantize_on_load(in_dim: usize) -> Option<GgmlDType> {
    QUANTIZE_ON_LOAD
        .with(|q| q.get())
        .filter(|t| in_dim.is_multiple_of(t.block_size()))
}

/// Runs `f` (a model constructor) with `weights`' quantized matrices available to [`crate::ops::dense`] on
/// this thread.
pub fn with_quantized<R>(weights: Option<QuantizedWeights>, f: impl FnOnce() -> R) -> R {
    let previous = BUILDING.with(|b| b.replace(weights));
    let out = f();
    BUILDING.with(|b| *b.borrow_mut() = previous);
    out
}

/// The quantized matrix for the linear layer `prefix` (`prefix.weight`, shape (out, in)) and the adapters'
/// changes to it, if a GGUF model is being built and stores it quantized; on `dev`, the model's device.
pub(crate) fn quantized_weight(
    prefix: &str,
    out_dim: usize,
    in_dim: usize,
    dev: &Device,
) -> candle_core::Result<Option<(Arc<QTensor>, crate::lora::LowRank)>> {
    let Some(w) = BUILDING.with(|b| b.borrow().clone()) else {
        return Ok(None);
    };
    let name = format!("{prefix}.weight");
    let stored = match &w.rename {
        Some(f) => f(&name),
        None => name.clone(),
    };
    let Some(q) = w.file.quantized(&stored, dev)? else {
        return Ok(None);
    };
    if q.shape().dims() != [out_dim, in_dim] {
        return Err(candle_core::Error::Msg(format!(
            "shape mismatch for tensor `{name}` in {}: the file has {:?} but config.json implies {:?}; the \
             weights and config.json do not belong together",
            w.file.path().display(),
            q.shape().dims(),
            [out_dim, in_dim]
        )));
    }
    let low_rank = match &w.lora {
        Some(l) => l.low_rank(&name, out_dim, in_dim)?.to_device(dev)?,
        None => Default::default(),
    };
    Ok(Some((Arc::new(q), low_rank)))
}
