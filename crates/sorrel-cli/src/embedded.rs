//! The embedded default model (`models/sorrel-toyworld`, trained by `sorrel train`), compiled into the binary
//! so `sorrel generate "..."` works anywhere with no download. Its files are written once to a cache folder
//! (named by a hash of their bytes, written beside it and renamed into place) because the loader reads
//! model folders.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use anyhow::{Context, Result};

macro_rules! files {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/sorrel-toyworld/", $path)) as &[u8])),*]
    };
}

/// (relative path, bytes) of every file of the model folder.
const FILES: &[(&str, &[u8])] = files![
    "model_index.json",
    "sorrel_defaults.json",
    "scheduler/scheduler_config.json",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
];

/// Name shown in logs and credentials.
pub const NAME: &str = "sorrel-toyworld";

fn cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("SORREL_CACHE_DIR") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("sorrel")
}

/// The embedded model as a folder on disk, written on first use.
pub fn model_dir() -> Result<PathBuf> {
    let mut h = std::hash::DefaultHasher::new();
    for (p, b) in FILES {
        p.hash(&mut h);
        b.hash(&mut h);
    }
    let root = cache_root().join("models");
    let dir = root.join(format!("{NAME}-{:016x}", h.finish()));
    if dir.join(".complete").is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&root).with_context(|| {
        format!(
            "cannot create the model cache {} (set SORREL_CACHE_DIR to a writable folder)",
            root.display()
        )
    })?;
    let tmp = tempfile::Builder::new()
        .prefix(".partial-")
        .tempdir_in(&root)
        .with_context(|| format!("cannot write to the model cache {}", root.display()))?;
    for (rel, bytes) in FILES {
        let p = tmp.path().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, bytes).with_context(|| format!("cannot write {}", p.display()))?;
    }
    std::fs::write(tmp.path().join(".complete"), b"")?;
    let kept = tmp.keep();
    // Another process may have finished the same folder first; then its copy is used and ours removed.
    if std::fs::rename(&kept, &dir).is_err() && dir.join(".complete").is_file() {
        let _ = std::fs::remove_dir_all(&kept);
    } else if !dir.join(".complete").is_file() {
        anyhow::bail!("cannot place the embedded model at {}", dir.display());
    }
    Ok(dir)
}
