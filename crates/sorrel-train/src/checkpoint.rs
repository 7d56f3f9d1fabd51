//! Checkpoints: the parameters, AdamW's moments and step, the EMA and the caller's own notes (data
//! position, config) in one safetensors file, written atomically, so that a resumed run continues exactly
//! as the uninterrupted one would.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::{AdamW, Ema, Result, TrainError};

const FORMAT: &str = "sorrel-checkpoint-1";

/// What a checkpoint says besides its tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Optimiser steps taken when it was written.
    pub step: u64,
    /// The caller's notes, as saved.
    pub notes: serde_json::Value,
}

fn fail(path: &Path, why: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// Writes `opt` (parameters and moments), `ema` and `notes` to `path` (temporary file, then rename).
pub fn save_checkpoint(
    path: &Path,
    opt: &AdamW,
    ema: Option<&Ema>,
    notes: &serde_json::Value,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for s in &opt.slots {
        tensors.push((format!("param/{}", s.name), s.var.as_tensor().detach()));
        tensors.push((format!("adam_m/{}", s.name), s.m.clone()));
        tensors.push((format!("adam_v/{}", s.name), s.v.clone()));
    }
    if let Some(ema) = ema {
        for (name, t) in &ema.shadow {
            tensors.push((format!("ema/{name}"), t.clone()));
        }
    }
    let metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("step".to_string(), opt.step.to_string()),
        ("notes".to_string(), notes.to_string()),
    ]);
    let bytes = safetensors::serialize(tensors, Some(metadata))
        .map_err(|e| fail(path, format!("cannot serialise: {e}")))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let io = |e: std::io::Error| fail(path, format!("cannot write: {e}"));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    std::io::Write::write_all(&mut tmp, &bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// Restores `opt` (parameters, moments, step) and `ema` from `path`; returns its step and notes. Fails,
/// naming the tensor, when the checkpoint belongs to another model.
pub fn load_checkpoint(path: &Path, opt: &mut AdamW, ema: Option<&mut Ema>) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|e| fail(path, format!("cannot read: {e}")))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| fail(path, format!("not a safetensors file ({e})")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(fail(
            path,
            "not a Sorrel training checkpoint (written by `sorrel train`); pass the checkpoint file, not \
             the exported model",
        ));
    }
    let step: u64 = meta
        .get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| fail(path, "the step count is missing"))?;
    let notes = meta
        .get("notes")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(serde_json::Value::Null);
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
    let mut take = |key: String, like: &Tensor| -> Result<Tensor> {
        let t = tensors.remove(&key).ok_or_else(|| {
            fail(
                path,
                format!("it has no tensor `{key}`: it was written for another model configuration"),
            )
        })?;
        if t.shape() != like.shape() {
            return Err(fail(
                path,
                format!(
                    "`{key}` is {:?} but the model has {:?}: it was written for another model configuration",
                    t.dims(),
                    like.dims()
                ),
            ));
        }
        Ok(t.to_device(like.device())?.to_dtype(like.dtype())?)
    };
    for s in opt.slots.iter_mut() {
        let p = take(format!("param/{}", s.name), s.var.as_tensor())?;
        s.var.set(&p)?;
        s.m = take(format!("adam_m/{}", s.name), &s.m)?;
        s.v = take(format!("adam_v/{}", s.name), &s.v)?;
    }
    if let Some(ema) = ema {
        for (name, t) in ema.shadow.iter_mut() {
            *t = take(format!("ema/{name}"), t)?;
        }
    }
    opt.step = step;
    Ok(Checkpoint { step, notes })
}
