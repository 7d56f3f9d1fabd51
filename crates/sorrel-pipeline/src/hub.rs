//! Models named by their Hugging Face id (`Wan-AI/Wan2.1-T2V-1.3B-Diffusers`, optionally `@revision`), found
//! in the Hugging Face cache that `huggingface_hub` and diffusers fill, so Sorrel and diffusers share one copy.
//!
//! The cache layout (`models--OWNER--NAME/{refs,snapshots,blobs}`) and its environment variables
//! (`HF_HUB_CACHE`, `HF_HOME`, `HF_HUB_OFFLINE`) are huggingface_hub's; this module only reads them, with no
//! network. Downloading lives with the command line (`sorrel models pull`).

use std::path::{Path, PathBuf};

/// A model id on the Hugging Face hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    /// The user or organisation (`Wan-AI`).
    pub owner: String,
    /// The repository (`Wan2.1-T2V-1.3B-Diffusers`).
    pub name: String,
    /// A branch, tag or commit; `None` means `main`.
    pub revision: Option<String>,
}

fn valid_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && !s.starts_with(['.', '-'])
        && !s.contains("..")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl HubId {
    /// `OWNER/NAME` or `OWNER/NAME@REVISION` in the hub's own character set; anything else (a path with more
    /// parts, spaces, a leading dot) is not an id.
    pub fn parse(s: &str) -> Option<Self> {
        let (repo, revision) = match s.split_once('@') {
            Some((repo, rev)) => {
                let ok = !rev.is_empty()
                    && rev
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
                if !ok {
                    return None;
                }
                (repo, Some(rev.to_string()))
            }
            None => (s, None),
        };
        let (owner, name) = repo.split_once('/')?;
        (valid_part(owner) && valid_part(name)).then(|| Self {
            owner: owner.into(),
            name: name.into(),
            revision,
        })
    }

    /// `OWNER/NAME`.
    pub fn repo_id(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }

    /// The revision asked for, `main` by default.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    /// The repository's folder in the cache.
    pub fn cache_folder(&self, cache: &Path) -> PathBuf {
        cache.join(format!("models--{}--{}", self.owner, self.name))
    }
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.revision {
            Some(r) => write!(f, "{}@{r}", self.repo_id()),
            None => f.write_str(&self.repo_id()),
        }
    }
}

/// The Hugging Face cache folder, as huggingface_hub finds it: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
pub fn cache_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = env("HF_HUB_CACHE") {
        return p;
    }
    if let Some(p) = env("HF_HOME") {
        return p.join("hub");
    }
    let base = env("XDG_CACHE_HOME").unwrap_or_else(|| {
        env("HOME")
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".cache")
    });
    base.join("huggingface").join("hub")
}

/// Whether `HF_HUB_OFFLINE` forbids network access (huggingface_hub's truthy values).
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "on" | "yes" | "true"
        )
    })
}

fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// The snapshot folder of `id` in `cache`, if that revision is there and holds a model Sorrel loads (a
/// diffusers `model_index.json` or the original release's files). No network.
pub fn find_cached(id: &HubId, cache: &Path) -> Option<PathBuf> {
    let repo = id.cache_folder(cache);
    let rev = id.revision();
    let commit = match std::fs::read_to_string(repo.join("refs").join(rev)) {
        Ok(c) => c.trim().to_string(),
        Err(_) if is_commit(rev) => rev.to_string(),
        Err(_) => return None,
    };
    let snap = repo.join("snapshots").join(commit);
    crate::WanPipeline::detect_layout(&snap).ok().map(|_| snap)
}

/// One model in the cache.
#[derive(Debug, Clone)]
pub struct CachedModel {
    /// Its id, with the revision when that is not `main`.
    pub id: HubId,
    /// The snapshot folder.
    pub dir: PathBuf,
}

/// Every model in `cache` whose snapshot Sorrel can load, by id and revision (refs first, then snapshots no
/// ref points to, by commit).
pub fn list_cached(cache: &Path) -> Vec<CachedModel> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(cache) else {
        return out;
    };
    let mut repos: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    repos.sort();
    for repo in repos {
        let Some(folder) = repo.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some((owner, name)) = folder
            .strip_prefix("models--")
            .and_then(|r| r.split_once("--"))
        else {
            continue;
        };
        let mut seen = std::collections::HashSet::new();
        let mut refs: Vec<(String, String)> = std::fs::read_dir(repo.join("refs"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let r = e.file_name().to_string_lossy().into_owned();
                let c = std::fs::read_to_string(e.path()).ok()?.trim().to_string();
                Some((r, c))
            })
            .collect();
        refs.sort();
        let mut snaps: Vec<String> = std::fs::read_dir(repo.join("snapshots"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        snaps.sort();
        let candidates = refs
            .into_iter()
            .map(|(r, c)| (Some(r), c))
            .chain(snaps.into_iter().map(|c| (None, c)));
        for (rev, commit) in candidates {
            let dir = repo.join("snapshots").join(&commit);
            if seen.contains(&commit) || crate::WanPipeline::detect_layout(&dir).is_err() {
                continue;
            }
            seen.insert(commit.clone());
            let revision = match rev {
                Some(r) if r == "main" => None,
                Some(r) => Some(r),
                None => Some(commit),
            };
            out.push(CachedModel {
                id: HubId {
                    owner: owner.into(),
                    name: name.into(),
                    revision,
                },
                dir,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_paths_do_not() {
        let id = HubId::parse("Wan-AI/Wan2.1-T2V-1.3B-Diffusers").unwrap();
        assert_eq!(id.repo_id(), "Wan-AI/Wan2.1-T2V-1.3B-Diffusers");
        assert_eq!(id.revision(), "main");
        let id = HubId::parse("Wan-AI/Wan2.1-T2V-1.3B-Diffusers@refs/pr/3").unwrap();
        assert_eq!(id.revision(), "refs/pr/3");
        for not in [
            "model",
            "./a/b",
            "/abs/path",
            "a/b/c",
            "../x",
            "a b/c",
            "a/b@",
            "a/.b",
        ] {
            assert!(HubId::parse(not).is_none(), "{not}");
        }
    }
}
