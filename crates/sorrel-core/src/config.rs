//! The one reader of JSON config files (`config.json`, `preprocessor_config.json`, ...): every error names the
//! file.

use std::path::Path;

use crate::error::{Error, Result};

/// Reads the JSON file at `path` into `T`.
pub fn read_config<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map_err(|e| Error::model(format!("{} is not a valid config: {e}", path.display())))
}
