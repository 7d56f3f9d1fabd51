//! LoRA adapters merged into a model's weights as they load: `W' = W + scale * factor * up @ down`, plus the
//! full-weight (`.diff`) and bias (`.diff_b`, PEFT's `lora_B.bias`) deltas some Wan LoRAs carry.
//!
//! Three key layouts are read, told apart by their names, the way diffusers' Wan LoRA loader tells them apart:
//! - diffusers/PEFT: `transformer.blocks.0.attn1.to_q.lora_A.weight` / `.lora_B.weight`; the factor is the
//!   saved `lora_adapter_metadata`'s `lora_alpha / r`, or 1 without metadata (PEFT's default alpha is the rank);
//! - the original Wan names as ComfyUI and lightx2v save them: `diffusion_model.blocks.0.self_attn.q.lora_down.weight`
//!   (or `lora_A`), with an optional `.alpha`;
//! - kohya / musubi-tuner: `lora_unet_blocks_0_self_attn_q.lora_down.weight` with `.alpha`.
//!
//! With an `.alpha` the factor is `alpha / rank`. Module names are compared with dots turned into underscores,
//! so one table serves every layout; the model names each weight it asks for in diffusers form and an alias
//! (the original Wan name) that the caller supplies.
//!
//! Why by hand: candle has no LoRA support, and PEFT is Python. Merging at load keeps the forward pass as it
//! is (no extra matrix products per step), which is what ComfyUI does too. Matrices that stay quantized
//! (GGUF) cannot absorb a change, so they take theirs beside them ([`LoraSet::low_rank`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::weights::Renamer;

/// The largest adapter file read (see `Lora::open`).
const MAX_LORA_BYTES: u64 = 8_000_000_000;

/// One `--lora FILE[:SCALE]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// The adapter's safetensors file.
    pub path: PathBuf,
    /// How strongly to apply it (1 = as trained, 0 = not at all).
    pub scale: f64,
}

impl FromStr for LoraSpec {
    type Err = String;

    /// `FILE` or `FILE:SCALE`; a colon followed by something that is not a number stays part of the path.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.is_empty() {
            return Err("a LoRA needs a file: --lora FILE[:SCALE]".into());
        }
        if let Some((path, scale)) = s.rsplit_once(':') {
            if let Ok(scale) = scale.parse::<f64>() {
                if !scale.is_finite() {
                    return Err(format!(
                        "LoRA scale `{scale}` in `{s}` is not a finite number"
                    ));
                }
                if path.is_empty() {
                    return Err(format!("`{s}` names no file: --lora FILE[:SCALE]"));
                }
                return Ok(Self {
                    path: path.into(),
                    scale,
                });
            }
        }
        Ok(Self {
            path: s.into(),
            scale: 1.0,
        })
    }
}

impl LoraSpec {
    /// `NAME:SCALE` with the file's name only, for records that should not leak local paths (content
    /// credentials).
    pub fn label(&self) -> String {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string());
        format!("{name}:{}", self.scale)
    }
}

impl std::fmt::Display for LoraSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.scale)
    }
}

/// The tensors one adapter holds for one module (a linear layer, a norm, a convolution).
#[derive(Default)]
struct Module {
    /// The name as stored, for messages.
    stored: String,
    down: Option<Tensor>,
    up: Option<Tensor>,
    alpha: Option<f64>,
    diff: Option<Tensor>,
    diff_b: Option<Tensor>,
    /// PEFT's `lora_bias`: the up projection's bias, scaled like the matrices (unlike `diff_b`).
    lora_bias: Option<Tensor>,
}

/// Which part of a module a tensor is.
enum Part {
    Down,
    Up,
    Alpha,
    Diff,
    DiffB,
    LoraBias,
}

const PARTS: [(&str, u8); 8] = [
    (".lora_A.weight", 0),
    (".lora_down.weight", 0),
    (".lora_B.weight", 1),
    (".lora_up.weight", 1),
    (".alpha", 2),
    (".diff_b", 4),
    (".lora_B.bias", 5),
    (".diff", 3),
];

/// Prefixes that name the model the adapter belongs to rather than the module.
const PREFIXES: [&str; 5] = [
    "base_model.model.",
    "model.diffusion_model.",
    "diffusion_model.",
    "transformer.",
    "lora_unet_",
];

fn split_key(key: &str) -> Option<(&str, Part)> {
    PARTS.iter().find_map(|(suffix, p)| {
        key.strip_suffix(suffix).map(|m| {
            let part = match p {
                0 => Part::Down,
                1 => Part::Up,
                2 => Part::Alpha,
                3 => Part::Diff,
                4 => Part::DiffB,
                _ => Part::LoraBias,
            };
            (m, part)
        })
    })
}

/// A module name in the one form every layout shares: no model prefix, dots as underscores.
fn normalise(module: &str) -> String {
    let mut m = module;
    for p in PREFIXES {
        if let Some(rest) = m.strip_prefix(p) {
            m = rest;
        }
    }
    m.replace('.', "_")
}

/// One adapter file, read whole (adapters are megabytes, not gigabytes).
struct Lora {
    path: PathBuf,
    scale: f64,
    modules: HashMap<String, Module>,
    /// PEFT's `lora_alpha` from the file's metadata, for modules with no `.alpha` of their own.
    peft_alpha: Option<f64>,
    /// Without alphas or metadata, PEFT sets `lora_alpha` to the most common rank: a module of another
    /// rank is then scaled by `common / rank`.
    common_rank: usize,
}

fn lora_err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::model(format!("LoRA {}: {msg}", path.display()))
}

impl Lora {
    fn open(spec: &LoraSpec) -> Result<Self> {
        let path = &spec.path;
        // The file is read whole; a multi-gigabyte one is a model, not an adapter (rank-128 LoRAs of the 14B
        // models are about 1 GB).
        let len = std::fs::metadata(path)
            .map_err(|e| lora_err(path, format_args!("cannot read the file ({e})")))?
            .len();
        if len > MAX_LORA_BYTES {
            return Err(lora_err(
                path,
                format_args!(
                    "{:.1} GB is too large for a LoRA adapter (at most {} GB): is it a model's weights?",
                    len as f64 / 1e9,
                    MAX_LORA_BYTES / 1_000_000_000
                ),
            ));
        }
        let bytes = std::fs::read(path)
            .map_err(|e| lora_err(path, format_args!("cannot read the file ({e})")))?;
        // The header first: a file that is not safetensors gets its own message, before any allocation.
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
            lora_err(
                path,
                format_args!("not a safetensors file ({e}); LoRAs are read from .safetensors only"),
            )
        })?;
        let peft_alpha = peft_alpha(path, meta.metadata().as_ref())?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| lora_err(path, e))?;
        let mut modules: HashMap<String, Module> = HashMap::new();
        for (key, t) in tensors {
            let Some((module, part)) = split_key(&key) else {
                return Err(lora_err(
                    path,
                    format_args!(
                        "tensor `{key}` is not part of a LoRA (expected names ending in lora_A/lora_B.weight, \
                         lora_down/lora_up.weight, alpha, diff or diff_b)"
                    ),
                ));
            };
            let t = t.to_dtype(DType::F32).map_err(|e| lora_err(path, e))?;
            let m = modules.entry(normalise(module)).or_default();
            if m.stored.is_empty() {
                m.stored = module.to_string();
            }
            match part {
                Part::Down => m.down = Some(t),
                Part::Up => m.up = Some(t),
                Part::Alpha => {
                    let a = t
                        .flatten_all()
                        .and_then(|t| t.to_vec1::<f32>())
                        .map_err(|e| lora_err(path, e))?;
                    match a.as_slice() {
                        [a] => m.alpha = Some(*a as f64),
                        _ => {
                            return Err(lora_err(
                                path,
                                format_args!(
                                    "`{key}` should hold one number, it holds {}",
                                    a.len()
                                ),
                            ))
                        }
                    }
                }
                Part::Diff => m.diff = Some(t),
                Part::DiffB => m.diff_b = Some(t),
                Part::LoraBias => m.lora_bias = Some(t),
            }
        }
        if modules.is_empty() {
            return Err(lora_err(path, "the file holds no tensors"));
        }
        let mut ranks: HashMap<usize, usize> = HashMap::new();
        for (name, m) in &modules {
            match (&m.down, &m.up) {
                (Some(d), Some(u)) => {
                    let (r_down, r_up) = (d.dims()[0], u.dims().get(1).copied().unwrap_or(0));
                    if r_down != r_up {
                        return Err(lora_err(
                            path,
                            format_args!(
                                "module `{}` has a down matrix of rank {r_down} but an up matrix of rank {r_up}",
                                m.stored
                            ),
                        ));
                    }
                    *ranks.entry(r_down).or_default() += 1;
                }
                (None, None) => {}
                _ => {
                    return Err(lora_err(
                        path,
                        format_args!(
                            "module `{}` has only one of its two matrices (down and up); the file is incomplete",
                            if m.stored.is_empty() { name } else { &m.stored }
                        ),
                    ))
                }
            }
        }
        // Most common rank, ties to the larger (PEFT takes the first most common; ranks rarely tie).
        let common_rank = ranks
            .iter()
            .max_by_key(|(r, n)| (**n, **r))
            .map(|(r, _)| *r)
            .unwrap_or(1);
        Ok(Self {
            path: path.clone(),
            scale: spec.scale,
            modules,
            peft_alpha,
            common_rank,
        })
    }

    /// The first of `keys` this adapter has a module for.
    fn module<'a>(&'a self, keys: &'a [String]) -> Option<(&'a String, &'a Module)> {
        keys.iter()
            .find_map(|k| self.modules.get(k).map(|m| (k, m)))
    }

    /// `alpha / rank` for one module.
    fn factor(&self, m: &Module, rank: usize) -> f64 {
        match (m.alpha, self.peft_alpha) {
            (Some(a), _) | (None, Some(a)) => a / rank as f64,
            (None, None) => self.common_rank as f64 / rank as f64,
        }
    }
}

/// The `lora_alpha` in diffusers' `lora_adapter_metadata` (saved by `save_lora_weights`), with or without its
/// `transformer.` prefix. Per-module alphas (`alpha_pattern`) are refused rather than silently ignored.
fn peft_alpha(path: &Path, meta: Option<&HashMap<String, String>>) -> Result<Option<f64>> {
    let Some(raw) = meta.and_then(|m| m.get("lora_adapter_metadata")) else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_str(raw).map_err(|e| {
        lora_err(
            path,
            format_args!("lora_adapter_metadata is not JSON ({e})"),
        )
    })?;
    let get = |k: &str| v.get(k).or_else(|| v.get(format!("transformer.{k}")));
    if get("alpha_pattern").is_some_and(|p| p.as_object().is_some_and(|o| !o.is_empty())) {
        return Err(lora_err(
            path,
            "its metadata sets a different alpha per module (alpha_pattern), which Sorrel does not read; \
             merge the LoRA into one alpha first",
        ));
    }
    Ok(get("lora_alpha").and_then(|a| a.as_f64()))
}

/// Adapters' changes to one matrix kept apart from it (see [`LoraSet::low_rank`]): `x W^T` becomes
/// `x W^T + x dense^T + sum (x down^T) up^T`.
#[derive(Debug, Clone, Default)]
pub struct LowRank {
    /// `(down (r, in), up (out, r))`, the scales folded into `up`.
    pub pairs: Vec<(Tensor, Tensor)>,
    /// The full-weight deltas (`.diff`), summed, (out, in).
    pub dense: Option<Tensor>,
}

impl LowRank {
    /// Whether there is nothing to add.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty() && self.dense.is_none()
    }

    /// The same changes on `dev` (read from the files onto the CPU, they go where the activations are).
    pub fn to_device(self, dev: &candle_core::Device) -> candle_core::Result<Self> {
        Ok(Self {
            pairs: self
                .pairs
                .into_iter()
                .map(|(d, u)| Ok((d.to_device(dev)?, u.to_device(dev)?)))
                .collect::<candle_core::Result<_>>()?,
            dense: self.dense.map(|w| w.to_device(dev)).transpose()?,
        })
    }

    /// The change to `x W^T` for x (rows, in), in x's dtype.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let mut y: Option<Tensor> = None;
        let mut add = |t: Tensor| -> candle_core::Result<()> {
            y = Some(match y.take() {
                Some(a) => (a + t)?,
                None => t,
            });
            Ok(())
        };
        for (d, u) in &self.pairs {
            let (d, u) = (d.to_dtype(x.dtype())?, u.to_dtype(x.dtype())?);
            add(x.matmul(&d.t()?)?.matmul(&u.t()?)?)?;
        }
        if let Some(w) = &self.dense {
            add(x.matmul(&w.to_dtype(x.dtype())?.t()?)?)?;
        }
        Ok(y)
    }
}

/// Adapters applied to one model's weights as the model asks for them.
pub struct LoraSet {
    loras: Vec<Lora>,
    /// The other name a weight may have in an adapter (the original Wan name for a diffusers name).
    alias: Option<Renamer>,
    /// (adapter, module, is_bias) for every part applied, to find what matched nothing.
    used: Mutex<HashSet<(usize, String, bool)>>,
}

impl LoraSet {
    /// Reads every adapter. `alias` maps a weight's name to its name in the other layout.
    pub fn open(specs: &[LoraSpec], alias: Option<Renamer>) -> Result<Self> {
        Ok(Self {
            loras: specs.iter().map(Lora::open).collect::<Result<_>>()?,
            alias,
            used: Mutex::new(HashSet::new()),
        })
    }

    /// Whether any adapter was given.
    pub fn is_empty(&self) -> bool {
        self.loras.is_empty()
    }

    /// The normalised module names `name` may have in an adapter, and whether it is a bias.
    fn keys_of(&self, name: &str) -> (Vec<String>, bool) {
        let (module, is_bias) = if let Some(m) = name.strip_suffix(".weight") {
            (m, false)
        } else if let Some(m) = name.strip_suffix(".bias") {
            (m, true)
        } else {
            (name, false)
        };
        let mut keys = vec![normalise(module)];
        if let Some(alias) = &self.alias {
            let other = alias(name);
            let other = other
                .strip_suffix(if is_bias { ".bias" } else { ".weight" })
                .unwrap_or(&other);
            keys.push(normalise(other));
        }
        (keys, is_bias)
    }

    /// Every adapter's change to the matrix `name` of shape (out, in) kept apart from it, for weights that
    /// stay quantized: the low-rank pairs `(down, scale * factor * up)` and the sum of the full deltas
    /// (`.diff`). Marks them applied, as [`LoraSet::patch`] does.
    pub fn low_rank(
        &self,
        name: &str,
        out_dim: usize,
        in_dim: usize,
    ) -> candle_core::Result<LowRank> {
        let (keys, _) = self.keys_of(name);
        let mut found = LowRank::default();
        for (i, lora) in self.loras.iter().enumerate() {
            let Some((key, m)) = lora.module(&keys) else {
                continue;
            };
            if m.down.is_none() && m.diff.is_none() {
                continue;
            }
            self.used
                .lock()
                .expect("LoRA bookkeeping lock")
                .insert((i, key.clone(), false));
            let wrong = |dims: &[usize]| {
                candle_core::Error::Msg(format!(
                    "LoRA {}: `{}` changes a {dims:?} matrix but the model's `{name}` is [{out_dim}, {in_dim}]: \
                     the LoRA was made for a model of another size",
                    lora.path.display(),
                    m.stored
                ))
            };
            if let (Some(d), Some(u)) = (&m.down, &m.up) {
                let (d, u) = (d.flatten_from(1)?, u.flatten_from(1)?);
                if u.dims()[0] != out_dim || d.dims()[1] != in_dim {
                    return Err(wrong(&[u.dims()[0], d.dims()[1]]));
                }
                if lora.scale != 0.0 {
                    let f = lora.factor(m, d.dims()[0]) * lora.scale;
                    found.pairs.push((d, (u * f)?));
                }
            }
            if let Some(diff) = &m.diff {
                if diff.elem_count() != out_dim * in_dim {
                    return Err(wrong(diff.dims()));
                }
                if lora.scale != 0.0 {
                    let diff = (diff.reshape((out_dim, in_dim))? * lora.scale)?;
                    found.dense = Some(match found.dense {
                        Some(d) => (d + diff)?,
                        None => diff,
                    });
                }
            }
        }
        Ok(found)
    }

    /// Adds every adapter's change to the weight the model calls `name` (`w` as stored, any float dtype);
    /// returns it in f32 when anything was added, unchanged otherwise.
    pub fn patch(&self, name: &str, w: Tensor) -> candle_core::Result<Tensor> {
        let (keys, is_bias) = self.keys_of(name);
        let mut w = w;
        for (i, lora) in self.loras.iter().enumerate() {
            let Some((key, m)) = lora.module(&keys) else {
                continue;
            };
            let delta = if is_bias {
                self.bias_delta(lora, m)?
            } else {
                self.weight_delta(lora, m, name, &w)?
            };
            let Some(delta) = delta else { continue };
            self.used
                .lock()
                .expect("LoRA bookkeeping lock")
                .insert((i, key.clone(), is_bias));
            if delta.elem_count() != w.elem_count() {
                return Err(candle_core::Error::Msg(format!(
                    "LoRA {}: its change to `{}` has shape {:?} but the model's `{name}` is {:?}: the LoRA was \
                     made for a model of another size",
                    lora.path.display(),
                    m.stored,
                    delta.dims(),
                    w.dims()
                )));
            }
            // A scale of 0 leaves the weight exactly as it was (after the shape checks above).
            if lora.scale == 0.0 {
                continue;
            }
            let delta = (delta.reshape(w.shape())?.to_device(w.device())? * lora.scale)?;
            w = (w.to_dtype(DType::F32)? + delta)?;
        }
        Ok(w)
    }

    /// `diff_b` plus `factor * lora_bias`.
    fn bias_delta(&self, lora: &Lora, m: &Module) -> candle_core::Result<Option<Tensor>> {
        let scaled = match (&m.lora_bias, &m.down) {
            (Some(b), Some(d)) => Some((b * lora.factor(m, d.dims()[0]))?),
            (Some(b), None) => Some(b.clone()),
            (None, _) => None,
        };
        Ok(match (scaled, &m.diff_b) {
            (Some(a), Some(b)) => Some((a + b)?),
            (a, b) => a.or_else(|| b.clone()),
        })
    }

    /// `factor * up @ down` (convolution adapters flattened to matrices), plus `diff`.
    fn weight_delta(
        &self,
        lora: &Lora,
        m: &Module,
        name: &str,
        w: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let mut delta = match (&m.down, &m.up) {
            (Some(d), Some(u)) => {
                let rank = d.dims()[0];
                let d2 = d.flatten_from(1)?;
                let u2 = u.flatten_from(1)?;
                if u2.dims()[1] != rank {
                    return Err(candle_core::Error::Msg(format!(
                        "LoRA {}: `{}`'s up matrix is a convolution with a kernel; only 1x1 up projections \
                         are supported",
                        lora.path.display(),
                        m.stored
                    )));
                }
                let out = u2.dims()[0] * d2.dims()[1];
                if out != w.elem_count() {
                    return Err(candle_core::Error::Msg(format!(
                        "LoRA {}: `{}` changes a {}x{} matrix but the model's `{name}` is {:?}: the LoRA was \
                         made for a model of another size",
                        lora.path.display(),
                        m.stored,
                        u2.dims()[0],
                        d2.dims()[1],
                        w.dims()
                    )));
                }
                Some((u2.matmul(&d2)? * lora.factor(m, rank))?)
            }
            _ => None,
        };
        if let Some(diff) = &m.diff {
            delta = Some(match delta {
                Some(d) => {
                    let diff = diff.reshape(d.shape())?;
                    (d + diff)?
                }
                None => diff.clone(),
            });
        }
        Ok(delta)
    }

    /// Fails, naming them, if some adapter modules matched no weight of the model: an adapter for another
    /// model, or for another part of it, must not be half-applied in silence.
    pub fn check_all_used(&self) -> Result<()> {
        let used = self.used.lock().expect("LoRA bookkeeping lock");
        for (i, lora) in self.loras.iter().enumerate() {
            let mut missing: Vec<&str> = lora
                .modules
                .iter()
                .filter(|(k, m)| {
                    let weight = m.down.is_some() || m.diff.is_some();
                    (weight && !used.contains(&(i, (*k).clone(), false)))
                        || ((m.diff_b.is_some() || m.lora_bias.is_some())
                            && !used.contains(&(i, (*k).clone(), true)))
                })
                .map(|(_, m)| m.stored.as_str())
                .collect();
            if missing.is_empty() {
                continue;
            }
            missing.sort();
            let shown: Vec<&str> = missing.iter().take(4).copied().collect();
            return Err(lora_err(
                &lora.path,
                format_args!(
                    "{} of its {} modules match no weight of this model ({}{}): it was made for another model \
                     (LoRAs for Wan2.1 transformers of the same size load)",
                    missing.len(),
                    lora.modules.len(),
                    shown.join(", "),
                    if missing.len() > shown.len() { ", ..." } else { "" }
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_file_and_scale() {
        let s: LoraSpec = "a/b.safetensors:0.5".parse().unwrap();
        assert_eq!(s.path, PathBuf::from("a/b.safetensors"));
        assert_eq!(s.scale, 0.5);
        let s: LoraSpec = "b.safetensors".parse().unwrap();
        assert_eq!(s.scale, 1.0);
        // A colon that is not followed by a number belongs to the path.
        let s: LoraSpec = "C:/x/b.safetensors".parse().unwrap();
        assert_eq!(s.path, PathBuf::from("C:/x/b.safetensors"));
        assert!("".parse::<LoraSpec>().is_err());
        assert!(":2".parse::<LoraSpec>().is_err());
        assert!("a.safetensors:inf".parse::<LoraSpec>().is_err());
    }

    #[test]
    fn every_layout_normalises_to_one_name() {
        for k in [
            "transformer.blocks.0.attn1.to_q",
            "blocks.0.attn1.to_q",
            "base_model.model.blocks.0.attn1.to_q",
        ] {
            assert_eq!(normalise(k), "blocks_0_attn1_to_q");
        }
        for k in [
            "diffusion_model.blocks.0.self_attn.q",
            "lora_unet_blocks_0_self_attn_q",
        ] {
            assert_eq!(normalise(k), "blocks_0_self_attn_q");
        }
    }
}
