//! `--model` by Hugging Face id, and `sorrel models list|pull`: the cache is read with no network
//! (`sorrel_pipeline::hub`); what is missing is downloaded with the `hf-hub` crate into the same cache, so
//! diffusers and Sorrel share one copy. Downloads resume from hf-hub's `.sync.part` files, and a file only
//! appears in the cache (blob, then snapshot link) once it is complete.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hf_hub::api::tokio::{ApiBuilder, ApiError, Progress};
use hf_hub::{Repo, RepoType};
use indicatif::{ProgressBar, ProgressStyle};
use sorrel_pipeline::hub::{cache_dir, find_cached, list_cached, offline, HubId};
use sorrel_pipeline::WanPipeline;

/// `sorrel models`.
#[derive(clap::Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    command: ModelsCommand,
}

#[derive(clap::Subcommand)]
enum ModelsCommand {
    /// What models are on this machine (the embedded one and the Hugging Face cache) and what each can do.
    List,
    /// Download a model by Hugging Face id (OWNER/NAME[@REVISION]) into the Hugging Face cache, ahead of
    /// time; a second pull downloads nothing.
    Pull {
        /// e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers
        id: String,
        /// No progress bars.
        #[arg(long, short = 'q')]
        quiet: bool,
    },
}

/// Runs `sorrel models`.
pub fn run(args: ModelsArgs) -> Result<()> {
    match args.command {
        ModelsCommand::List => list(),
        ModelsCommand::Pull { id, quiet } => {
            let hub = HubId::parse(&id).with_context(|| {
                format!("`{id}` is not a Hugging Face model id: write OWNER/NAME or OWNER/NAME@REVISION")
            })?;
            let dir = pull(&hub, quiet)?;
            println!("{hub}: {}", dir.display());
            Ok(())
        }
    }
}

fn what_it_does(dir: &Path) -> String {
    match WanPipeline::describe(dir) {
        Ok(info) => {
            let d = &info.defaults;
            let modes: Vec<&str> = info
                .modes
                .iter()
                .map(|m| m.describe().split(" (").next().unwrap_or(""))
                .collect();
            format!(
                "{}x{}, {} frames at {} fps; {}",
                d.width,
                d.height,
                d.frames,
                d.fps,
                modes.join(", ")
            )
        }
        Err(e) => format!("cannot be loaded: {e}"),
    }
}

fn list() -> Result<()> {
    let embedded = crate::embedded::model_dir()?;
    println!("{:<48} {}", crate::embedded::NAME, what_it_does(&embedded));
    let cache = cache_dir();
    let models = list_cached(&cache);
    for m in &models {
        println!("{:<48} {}", m.id.to_string(), what_it_does(&m.dir));
    }
    if models.is_empty() {
        println!(
            "(no Wan models in the Hugging Face cache at {}; `sorrel models pull Wan-AI/Wan2.1-T2V-1.3B-Diffusers` \
             fetches one)",
            cache.display()
        );
    }
    Ok(())
}

/// The model folder `--model` names: a folder as it is, else a Hugging Face id from the cache, else (unless
/// `HF_HUB_OFFLINE` is set) downloaded into the cache.
pub fn resolve_model(arg: &Path, quiet: bool) -> Result<PathBuf> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    let text = arg.to_string_lossy();
    let Some(id) = HubId::parse(&text) else {
        bail!(
            "--model {text}: no such folder. Pass a Wan2.1 diffusers folder (with model_index.json), an \
             original Wan2.1 release folder, or a Hugging Face id such as Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
        );
    };
    let cache = cache_dir();
    if let Some(dir) = find_cached(&id, &cache) {
        return Ok(dir);
    }
    if offline() {
        bail!(
            "--model {id}: not a folder, and not in the Hugging Face cache at {} (HF_HUB_OFFLINE is set, so it is \
             not downloaded). Fetch it while online with `sorrel models pull {id}` (or `huggingface-cli download \
             {id}`), or point HF_HUB_CACHE/HF_HOME at the cache that has it",
            cache.display()
        );
    }
    pull(&id, quiet)
}

/// Files of a repository Sorrel needs: configs, weights, tokenizers. Pictures, videos and docs in model repos
/// are skipped, and so are `.bin`/`.pth` copies where a folder also has safetensors.
fn wanted(files: &[String]) -> Vec<String> {
    let has_safetensors = |dir: &str| {
        files
            .iter()
            .any(|f| f.ends_with(".safetensors") && Path::new(f).parent() == Some(Path::new(dir)))
    };
    files
        .iter()
        .filter(|f| {
            let p = Path::new(f.as_str());
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            let dir = p.parent().and_then(|d| d.to_str()).unwrap_or("");
            match ext {
                "json" | "safetensors" | "model" | "txt" | "tiktoken" => true,
                "pth" | "bin" | "pt" => !has_safetensors(dir),
                _ => false,
            }
        })
        .cloned()
        .collect()
}

/// One file's progress bar for hf-hub.
#[derive(Clone)]
struct Bar(ProgressBar);

impl Progress for Bar {
    async fn init(&mut self, size: usize, filename: &str) {
        self.0.set_length(size as u64);
        self.0.set_position(0);
        self.0.set_message(filename.to_string());
    }
    async fn update(&mut self, size: usize) {
        self.0.inc(size as u64);
    }
    async fn finish(&mut self) {}
}

fn explain(id: &HubId, e: ApiError) -> anyhow::Error {
    if let ApiError::RequestError(r) = &e {
        match r.status().map(|s| s.as_u16()) {
            Some(401) | Some(403) => {
                return anyhow::anyhow!(
                    "the Hugging Face hub refused access to {id} ({e}): accept the model's licence on its page \
                     and set HF_TOKEN (or run `huggingface-cli login`)"
                )
            }
            Some(404) => {
                return anyhow::anyhow!(
                    "the Hugging Face hub has no model {id} at revision {} ({e}): check the id and revision",
                    id.revision()
                )
            }
            _ => {}
        }
    }
    anyhow::anyhow!(
        "cannot download {id} ({e}); run again to resume, or set HF_HUB_OFFLINE=1 to use only the cache"
    )
}

/// Downloads what `id` needs into the cache and returns its snapshot folder; files already there are not
/// fetched again.
pub fn pull(id: &HubId, quiet: bool) -> Result<PathBuf> {
    if offline() {
        bail!("HF_HUB_OFFLINE is set: unset it to download {id}");
    }
    let cache = cache_dir();
    let id2 = id.clone();
    let cache2 = cache.clone();
    // A runtime of its own on a thread of its own: `serve` resolves models while its own runtime runs.
    let snapshot = std::thread::spawn(move || -> Result<PathBuf> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(download(&id2, &cache2, quiet))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the download thread panicked"))??;
    WanPipeline::detect_layout(&snapshot).with_context(|| {
        format!(
            "{id} was downloaded to {} but is not a Wan model Sorrel loads",
            snapshot.display()
        )
    })?;
    Ok(snapshot)
}

async fn download(id: &HubId, cache: &Path, quiet: bool) -> Result<PathBuf> {
    let token = std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| hf_hub::Cache::new(cache.to_path_buf()).token());
    let api = ApiBuilder::from_env()
        .with_cache_dir(cache.to_path_buf())
        .with_token(token)
        .with_progress(false)
        .build()
        .map_err(|e| explain(id, e))?;
    let repo = api.repo(Repo::with_revision(
        id.repo_id(),
        RepoType::Model,
        id.revision().to_string(),
    ));
    let info = repo.info().await.map_err(|e| explain(id, e))?;
    let snapshot = id.cache_folder(cache).join("snapshots").join(&info.sha);
    let files = wanted(
        &info
            .siblings
            .iter()
            .map(|s| s.rfilename.clone())
            .collect::<Vec<_>>(),
    );
    if files.is_empty() {
        bail!("{id} has no model files (configs or weights) to download");
    }
    let missing: Vec<&String> = files
        .iter()
        .filter(|f| !snapshot.join(f.as_str()).is_file())
        .collect();
    if missing.is_empty() && !quiet {
        eprintln!(
            "{id}: all {} files are already in {}",
            files.len(),
            cache.display()
        );
    }
    for (i, f) in missing.iter().enumerate() {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0)
        };
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{}/{} {{msg:<40}} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}}, ETA {{eta}}",
                i + 1,
                missing.len()
            ))
            .expect("static template")
            .progress_chars("=> "),
        );
        repo.download_with_progress(f, Bar(bar.clone()))
            .await
            .map_err(|e| explain(id, e))?;
        bar.finish();
    }
    // hf-hub records the ref when it downloads a file; record it when nothing had to be downloaded too.
    let refs = id.cache_folder(cache).join("refs");
    if !missing.is_empty() || !refs.join(id.revision()).is_file() {
        std::fs::create_dir_all(refs.join(id.revision()).parent().unwrap_or(&refs))?;
        sorrel_media::write_file(&refs.join(id.revision()), info.sha.as_bytes())?;
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_model_files_are_fetched() {
        let files: Vec<String> = [
            "model_index.json",
            "README.md",
            "assets/logo.png",
            "examples/i2v_input.JPG",
            "transformer/config.json",
            "transformer/diffusion_pytorch_model.safetensors",
            "text_encoder/pytorch_model.bin",
            "text_encoder/model.safetensors",
            "tokenizer/spiece.model",
            "vae/diffusion_pytorch_model.bin",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            wanted(&files),
            [
                "model_index.json",
                "transformer/config.json",
                "transformer/diffusion_pytorch_model.safetensors",
                "text_encoder/model.safetensors",
                "tokenizer/spiece.model",
                "vae/diffusion_pytorch_model.bin",
            ]
        );
    }
}
