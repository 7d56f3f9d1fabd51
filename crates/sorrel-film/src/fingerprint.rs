//! Stable identities of a model's files, for the shot cache: a shot made by other weights is never reused.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};
use sorrel_core::{Error, Result};

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Hashes a weights file's length and its first and last MiB (hashing 28 GB of a 14B model for every film
/// would cost more than a shot; another file of the same shapes differs in those bytes).
pub fn hash_ends(h: &mut Sha256, p: &Path) -> Result<()> {
    let mut f = std::fs::File::open(p).map_err(io(p))?;
    let len = f.metadata().map_err(io(p))?.len();
    h.update(len.to_le_bytes());
    let mut buf = vec![0u8; (1 << 20).min(len as usize)];
    f.read_exact(&mut buf).map_err(io(p))?;
    h.update(&buf);
    f.seek(SeekFrom::Start(len - buf.len() as u64))
        .map_err(io(p))?;
    f.read_exact(&mut buf).map_err(io(p))?;
    h.update(&buf);
    Ok(())
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A model folder's identity: every JSON config whole, and each weights file by [`hash_ends`] (a retrained
/// model of the same shapes differs in those bytes).
pub fn model_fingerprint(dir: &Path) -> Result<String> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io(&d))? {
            let p = e.map_err(io(&d))?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut h = Sha256::new();
    for p in files {
        let rel = p
            .strip_prefix(dir)
            .unwrap_or(&p)
            .to_string_lossy()
            .into_owned();
        h.update(rel.as_bytes());
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "json" {
            h.update(std::fs::read(&p).map_err(io(&p))?);
        } else if ["safetensors", "pth", "gguf", "bin"].contains(&ext) {
            hash_ends(&mut h, &p)?;
        }
    }
    Ok(hex(&h.finalize()))
}
