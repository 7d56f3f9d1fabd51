//! Checkpoint files (safetensors, sharded or not, and torch `.pth` pickles) behind one name lookup, with
//! optional key renaming, exposed to model code as a candle [`VarBuilder`].
//!
//! Why not candle's own backends: their errors say "cannot find tensor X" without the file, and the
//! original Wan release needs a rename table applied to `.pth` files as well as safetensors. This backend
//! names the file, the looked-up key and both shapes in every error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, QuantizedWeights};
use crate::lora::LoraSet;

/// Maps a name the model code asks for (diffusers/transformers naming) to the name stored in the file.
pub type Renamer = Arc<dyn Fn(&str) -> String + Send + Sync>;

enum Store {
    Safetensors(MmapedSafetensors),
    /// `.pth` pickles are read whole: candle's lazy reader reopens the zip for every tensor.
    Map(HashMap<String, Tensor>),
    /// A GGUF file: plain tensors dequantize as they load; quantized matrices also reach
    /// [`crate::ops::dense`] through [`crate::gguf::with_quantized`].
    Gguf(Arc<GgufFile>),
}

/// A set of weight files read as one namespace.
pub struct TensorSource {
    store: Store,
    files: Vec<PathBuf>,
    rename: Option<Renamer>,
    lora: Option<Arc<LoraSet>>,
}

fn display_files(files: &[PathBuf]) -> String {
    match files {
        [one] => one.display().to_string(),
        many => format!("{} (and {} more shards)", many[0].display(), many.len() - 1),
    }
}

impl TensorSource {
    /// Opens one or more `.safetensors` shards (memory-mapped) or a single `.pth` file.
    pub fn open(files: &[PathBuf]) -> Result<Self> {
        if files.is_empty() {
            return Err(Error::model("no weight files were given"));
        }
        for f in files {
            if !f.is_file() {
                return Err(Error::model(format!(
                    "weight file {} does not exist: check the model folder (see `sorrel generate --help`)",
                    f.display()
                )));
            }
        }
        if files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "gguf"))
        {
            if files.len() != 1 {
                return Err(Error::model(
                    "sharded GGUF files are not supported; pass one .gguf file",
                ));
            }
            return Ok(Self {
                store: Store::Gguf(Arc::new(GgufFile::open(&files[0])?)),
                files: files.to_vec(),
                rename: None,
                lora: None,
            });
        }
        let is_pth = files.iter().all(|f| {
            f.extension()
                .is_some_and(|e| e == "pth" || e == "pt" || e == "bin")
        });
        let store = if is_pth {
            if files.len() != 1 {
                return Err(Error::model(
                    "sharded .pth checkpoints are not supported; convert them to safetensors",
                ));
            }
            let list = candle_core::pickle::read_all(&files[0]).map_err(|e| {
                Error::model(format!(
                    "{} is not a readable PyTorch checkpoint ({e}); expected a state dict saved with torch.save",
                    files[0].display()
                ))
            })?;
            Store::Map(list.into_iter().collect())
        } else {
            // SAFETY: the files are memory-mapped read-only; Sorrel never writes to a checkpoint while it is
            // loaded. A concurrent writer from another process could change the bytes under us, as with any mmap.
            let st = unsafe { MmapedSafetensors::multi(files) }.map_err(|e| {
                Error::model(format!(
                    "{} is not a valid safetensors file ({e}); re-download it or convert it",
                    display_files(files)
                ))
            })?;
            Store::Safetensors(st)
        };
        Ok(Self {
            store,
            files: files.to_vec(),
            rename: None,
            lora: None,
        })
    }

    /// Opens every `*.safetensors` in `dir` whose name starts with `stem` (handles `-00001-of-00003` shards).
    pub fn open_dir(dir: &Path, stem: &str) -> Result<Self> {
        let rd = std::fs::read_dir(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                n.starts_with(stem) && n.ends_with(".safetensors")
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::model(format!(
                "no {stem}*.safetensors file in {}: the folder is incomplete or not a diffusers model folder",
                dir.display()
            )));
        }
        Self::open(&files)
    }

    /// Looks every requested name up through `f` first (for checkpoints with other key names).
    pub fn with_rename(mut self, f: Renamer) -> Self {
        self.rename = Some(f);
        self
    }

    /// Adds these adapters' changes to every weight as it loads (see [`LoraSet`]).
    pub fn with_lora(mut self, lora: Arc<LoraSet>) -> Self {
        self.lora = (!lora.is_empty()).then_some(lora);
        self
    }

    /// Every key stored in the files (after no renaming).
    pub fn keys(&self) -> Vec<String> {
        match &self.store {
            Store::Safetensors(st) => st.tensors().into_iter().map(|(k, _)| k).collect(),
            Store::Map(m) => m.keys().cloned().collect(),
            Store::Gguf(g) => g.names(),
        }
    }

    /// For a GGUF file, its quantized matrices with this source's name mapping, for
    /// [`crate::gguf::with_quantized`]; `None` for other files.
    pub fn quantized_weights(&self) -> Option<QuantizedWeights> {
        match &self.store {
            Store::Gguf(g) => Some(QuantizedWeights {
                file: g.clone(),
                rename: self.rename.clone(),
                lora: self.lora.clone(),
            }),
            _ => None,
        }
    }

    /// The storage dtype of a stored tensor (by stored name), if present.
    pub fn stored_dtype(&self, stored: &str) -> Option<DType> {
        match &self.store {
            Store::Safetensors(st) => st.get(stored).ok().and_then(|v| {
                use safetensors::Dtype as D;
                match v.dtype() {
                    D::F32 => Some(DType::F32),
                    D::F16 => Some(DType::F16),
                    D::BF16 => Some(DType::BF16),
                    D::F64 => Some(DType::F64),
                    // Handed out as f32, multiplied by their `scale_weight` (see `load`).
                    D::F8_E4M3 => Some(DType::F32),
                    _ => None,
                }
            }),
            Store::Map(m) => m.get(stored).map(|t| t.dtype()),
            // GGUF tensors are handed out dequantized to f32.
            Store::Gguf(g) => g.contains(stored).then_some(DType::F32),
        }
    }

    /// The shape of the tensor the model calls `name` (after renaming), without reading its data.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let stored = self.stored_name(name);
        match &self.store {
            Store::Safetensors(st) => st.get(&stored).ok().map(|v| v.shape().to_vec()),
            Store::Map(m) => m.get(&stored).map(|t| t.dims().to_vec()),
            Store::Gguf(g) => g.shape(&stored),
        }
    }

    fn stored_name(&self, name: &str) -> String {
        match &self.rename {
            Some(f) => f(name),
            None => name.to_string(),
        }
    }

    fn load(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        let stored = self.stored_name(name);
        let found = match &self.store {
            Store::Safetensors(st) => match st.get(&stored) {
                Ok(view) => {
                    let t = st.load(&stored, dev)?;
                    release_pages(view.data());
                    Some(t)
                }
                Err(_) => None,
            },
            Store::Map(m) => m.get(&stored).map(|t| t.to_device(dev)).transpose()?,
            Store::Gguf(g) => {
                if g.contains(&stored) {
                    Some(g.dequantized(&stored, dev)?)
                } else {
                    None
                }
            }
        };
        let found = match found {
            Some(t) if t.dtype() == DType::F8E4M3 => Some(self.unscale_fp8(&stored, t, dev)?),
            other => other,
        };
        let found = match (found, &self.lora) {
            (Some(t), Some(lora)) => Some(lora.patch(name, t)?),
            (found, _) => found,
        };
        found.ok_or_else(|| {
            let alias = if stored != name { format!(" (stored as `{stored}`)") } else { String::new() };
            candle_core::Error::Msg(format!(
                "tensor `{name}`{alias} is missing from {}: the checkpoint is incomplete or belongs to a \
                 different model than its config.json describes",
                display_files(&self.files)
            ))
        })
    }

    /// An fp8-e4m3 weight as f32. ComfyUI's "scaled" fp8 files store `W / s` with `s` beside it as
    /// `NAME.scale_weight` (one number per matrix); plain fp8 files have no scale.
    fn unscale_fp8(&self, stored: &str, t: Tensor, dev: &Device) -> candle_core::Result<Tensor> {
        let t = t.to_dtype(DType::F32)?;
        let Some(scale_name) = stored
            .strip_suffix(".weight")
            .map(|s| format!("{s}.scale_weight"))
        else {
            return Ok(t);
        };
        let scale = match &self.store {
            Store::Safetensors(st) if st.get(&scale_name).is_ok() => st.load(&scale_name, dev)?,
            Store::Map(m) if m.contains_key(&scale_name) => m[&scale_name].to_device(dev)?,
            _ => return Ok(t),
        };
        let scale = scale.to_dtype(DType::F32)?.flatten_all()?;
        match scale.dims1()? {
            1 => t.broadcast_mul(&scale.reshape(())?),
            n => Err(candle_core::Error::Msg(format!(
                "`{scale_name}` in {} holds {n} numbers; Sorrel reads one scale per fp8 matrix (ComfyUI's \
                 scaled fp8)",
                display_files(&self.files)
            ))),
        }
    }

    /// A candle `VarBuilder` reading from this source, converting every tensor to `dtype` on `device`.
    pub fn into_var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }
}

/// Tells the kernel this process is done with a loaded tensor's pages of the memory map. candle copies each
/// tensor out of the map, and the map lives until the whole model is built, so without this every page read
/// stays resident beside its copy and loading peaks at twice the checkpoint (11.1 GB for the 5.7 GB 1.3B
/// transformer). Released, the pages leave this process's resident memory and stay in the page cache; a
/// later read of the same bytes (a renamed or LoRA'd weight read twice) faults them in again from the file.
/// Why by hand: neither candle's `MmapedSafetensors` nor memmap2 offer releasing a range through it.
fn release_pages(bytes: &[u8]) {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            p if p > 0 => p as usize,
            _ => return,
        };
        let start = bytes.as_ptr() as usize;
        let begin = start / page * page;
        let end = (start + bytes.len()).div_ceil(page) * page;
        // SAFETY: the map starts on a page and covers the file's last page whole, so the range, rounded out to
        // pages, lies within the read-only file mapping `bytes` came from. MADV_DONTNEED on a file mapping
        // that is never written drops only this process's page-table entries; the bytes stay in the file and
        // page cache, and a later read sees them unchanged. No reference into the range is used after this
        // call except through such reads. A failure only means the pages stay resident.
        unsafe {
            libc::madvise(begin as *mut libc::c_void, end - begin, libc::MADV_DONTNEED);
        }
    }
    #[cfg(not(unix))]
    let _ = bytes;
}

impl SimpleBackend for TensorSource {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.load(name, dev)?;
        if t.shape() != &s {
            return Err(candle_core::Error::Msg(format!(
                "shape mismatch for tensor `{name}` in {}: the file has {:?} but config.json implies {:?}; \
                 the weights and config.json do not belong together",
                display_files(&self.files),
                t.dims(),
                s.dims()
            )));
        }
        t.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        let stored = self.stored_name(name);
        match &self.store {
            Store::Safetensors(st) => st.get(&stored).is_ok(),
            Store::Map(m) => m.contains_key(&stored),
            Store::Gguf(g) => g.contains(&stored),
        }
    }
}
