//! Content credentials in the CLI: which identity signs (`--sign-cert`/`--sign-key`, or the local signing CA
//! in the data folder), signing what `generate` writes, and `sorrel verify`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sorrel_provenance::watermark::{self, WatermarkKey};
use sorrel_provenance::{CredentialState, Credentials, Generation, SigningIdentity, Verdict};

/// The data folder: `$SORREL_DATA_DIR`, else `$XDG_DATA_HOME/sorrel`, else `~/.local/share/sorrel`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("SORREL_DATA_DIR").filter(|x| !x.is_empty()) {
        return PathBuf::from(x);
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("sorrel");
    }
    match std::env::var_os("HOME").filter(|x| !x.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/sorrel"),
        None => PathBuf::from("sorrel-data"),
    }
}

/// Where the local signing CA and signer live.
pub fn local_identity_dir() -> PathBuf {
    default_data_dir().join("c2pa")
}

/// Signing options shared by `generate`.
#[derive(clap::Args, Debug, Clone)]
pub struct SignArgs {
    /// PEM certificate chain (signer first) to sign content credentials with; without it Sorrel uses (and on
    /// first use creates) a local signing CA in its data folder (`c2pa/`).
    #[arg(long, env = "SORREL_SIGN_CERT", requires = "sign_key")]
    pub sign_cert: Option<PathBuf>,
    /// PKCS#8 PEM private key (P-256 or Ed25519) of --sign-cert.
    #[arg(
        long,
        env = "SORREL_SIGN_KEY",
        requires = "sign_cert",
        hide_env_values = true
    )]
    pub sign_key: Option<PathBuf>,
    /// Record the prompt in the content credentials (off by default: prompts can be private).
    #[arg(long)]
    pub record_prompt: bool,
    #[command(flatten)]
    pub watermark: WatermarkArgs,
}

/// The invisible watermark's options, shared by `generate` and `serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct WatermarkArgs {
    /// Do not embed the invisible watermark (for research on unmarked output; the content credentials then
    /// say `"watermarked": false`).
    #[arg(long)]
    pub no_watermark: bool,
    #[command(flatten)]
    pub key: KeyArg,
}

/// `--watermark-key`, for embedding and for `verify`.
#[derive(clap::Args, Debug, Clone)]
pub struct KeyArg {
    /// Passphrase the watermark pattern is drawn from (default: Sorrel's public key, so anyone can check a
    /// file); embedding and `sorrel verify` need the same one.
    #[arg(long, env = "SORREL_WATERMARK_KEY", hide_env_values = true)]
    pub watermark_key: Option<String>,
}

impl KeyArg {
    /// The key to embed or detect with.
    pub fn key(&self) -> WatermarkKey {
        self.watermark_key
            .as_deref()
            .map(WatermarkKey::new)
            .unwrap_or_default()
    }
}

impl WatermarkArgs {
    /// Marks `clip` (unless turned off) with a payload derived from `identifier`; returns the payload.
    pub fn mark(&self, clip: &mut sorrel_media::Clip, identifier: &str) -> Option<u64> {
        let (embedder, payload) = self.embedder(identifier)?;
        embedder.mark_clip(clip);
        Some(payload)
    }

    /// The embedder for a payload derived from `identifier`, and the payload; `None` when turned off.
    pub fn embedder(&self, identifier: &str) -> Option<(watermark::Embedder, u64)> {
        if self.no_watermark {
            return None;
        }
        let payload = watermark::payload_for(identifier);
        let embedder =
            watermark::Embedder::new(&self.key.key(), payload, watermark::DEFAULT_STRENGTH);
        Some((embedder, payload))
    }
}

impl SignArgs {
    /// The identity to sign with.
    pub fn identity(&self) -> Result<SigningIdentity> {
        Ok(match (&self.sign_cert, &self.sign_key) {
            (Some(c), Some(k)) => SigningIdentity::from_files(c, k)?,
            _ => {
                let dir = local_identity_dir();
                SigningIdentity::local(&dir).with_context(|| {
                    format!(
                        "cannot set up the local signing identity in {} (set SORREL_DATA_DIR, or pass \
                         --sign-cert and --sign-key)",
                        dir.display()
                    )
                })?
            }
        })
    }
}

/// Who signs what `generate` writes, and what the credentials say.
pub struct Signer {
    /// The signing identity.
    pub identity: SigningIdentity,
    /// The generation's facts for the manifest.
    pub generation: Generation,
}

/// How a written file carries its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// Inside the file.
    Embedded,
    /// In this `.c2pa` file beside it (WebM cannot hold a manifest).
    Sidecar(PathBuf),
    /// Not at all (a PNG sequence, `.npy`).
    Unsigned,
}

impl Signer {
    /// Writes `bytes` to `path` atomically, signed inside the file when its format can carry a manifest,
    /// else (WebM) with a sidecar manifest `path.c2pa` written after it.
    pub fn write(&self, path: &Path, bytes: &[u8]) -> Result<Signature> {
        self.write_with_ingredients(path, bytes, &[])
    }

    /// [`Signer::write`], listing `ingredients` (signed files the new one was made of, such as a film's
    /// shots) in the manifest. A format that needs a sidecar gets one without them.
    pub fn write_with_ingredients(
        &self,
        path: &Path,
        bytes: &[u8],
        ingredients: &[sorrel_provenance::Ingredient],
    ) -> Result<Signature> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let fail = || format!("cannot sign {}", path.display());
        if let Some(signed) = sorrel_provenance::sign_named_with_ingredients(
            bytes,
            &name,
            &self.generation,
            &self.identity,
            ingredients,
        )
        .with_context(fail)?
        {
            sorrel_media::write_file(path, &signed)?;
            return Ok(Signature::Embedded);
        }
        sorrel_media::write_file(path, bytes)?;
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_string())
            .unwrap_or_default();
        let Some(mime) = sorrel_provenance::sidecar_mime_for(&ext) else {
            return Ok(Signature::Unsigned);
        };
        let manifest =
            sorrel_provenance::sign_sidecar(bytes, mime, &name, &self.generation, &self.identity)
                .with_context(fail)?;
        let sidecar = path.with_extension("c2pa");
        sorrel_media::write_file(&sidecar, &manifest)?;
        Ok(Signature::Sidecar(sidecar))
    }
}

/// Options of `sorrel verify`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The file to check: .mp4, .png, .gif, .webp, .jpg carry credentials and a watermark; any video
    /// Sorrel (or ffmpeg, when installed) can read is checked for the watermark.
    file: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// A PEM root certificate to trust in addition to Sorrel's local signing CA.
    #[arg(long)]
    trust_anchor: Option<PathBuf>,
    #[command(flatten)]
    key: KeyArg,
}

/// Runs `sorrel verify`. Success means the file's origin is established: its credentials are Valid or
/// Trusted, or it has none (stripped, or a format that cannot hold them) and the watermark is found.
/// Invalid credentials fail whatever the pixels say: the file was changed after signing.
pub fn verify(args: VerifyArgs) -> Result<bool> {
    let ext = args
        .file
        .extension()
        .map(|e| e.to_string_lossy().to_string())
        .unwrap_or_default();
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let sidecar = args.file.with_extension("c2pa");
    let credentials = match (
        sorrel_provenance::mime_for(&ext),
        sorrel_provenance::sidecar_mime_for(&ext),
    ) {
        (Ok(mime), _) => Some(sorrel_provenance::verify(
            &bytes,
            mime,
            anchors(&args)?.as_deref(),
        )?),
        (Err(_), Some(mime)) if sidecar.is_file() => {
            let manifest = std::fs::read(&sidecar)
                .with_context(|| format!("cannot read {}", sidecar.display()))?;
            eprintln!(
                "note: reading the credentials from the sidecar {}",
                sidecar.display()
            );
            Some(sorrel_provenance::verify_sidecar(
                &bytes,
                mime,
                &manifest,
                anchors(&args)?.as_deref(),
            )?)
        }
        (Err(why), _) => {
            eprintln!(
                "note: {why}, and no sidecar {} is beside it; checking the watermark only",
                sidecar.display()
            );
            None
        }
    };
    let is_jpeg = matches!(ext.to_ascii_lowercase().as_str(), "jpg" | "jpeg");
    let pixels = if is_jpeg {
        sorrel_media::read_image(&args.file).and_then(|f| sorrel_media::Clip::new(vec![f], 1))
    } else {
        sorrel_media::read_video(&args.file)
    };
    let verdict = Verdict::judge(
        credentials,
        pixels.map_err(|e| e.to_string()),
        &args.key.key(),
    );
    let ok = verdict.origin_established();
    if args.json {
        let mut v = verdict.to_json();
        v["file"] = args.file.display().to_string().into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{}", args.file.display());
        if let Some(c) = &verdict.credentials {
            print_report(c);
        }
        print_watermark(&verdict);
    }
    let state = verdict.credentials.as_ref().map(|c| c.state);
    if state == Some(CredentialState::Absent) && !args.json {
        eprintln!("no content credentials: the file was not signed, or they were stripped (e.g. by re-encoding)");
    }
    Ok(ok)
}

/// Trust anchors: `--trust-anchor`, plus this machine's local CA if it exists (nothing is created here).
fn anchors(args: &VerifyArgs) -> Result<Option<String>> {
    let mut anchors = String::new();
    if let Some(p) = &args.trust_anchor {
        anchors +=
            &std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
    }
    if let Ok(local) = std::fs::read_to_string(local_identity_dir().join("ca.pem")) {
        anchors += &local;
    }
    Ok((!anchors.is_empty()).then_some(anchors))
}

fn print_watermark(verdict: &Verdict) {
    let claimed = verdict.claimed_payload();
    match &verdict.watermark {
        Err(e) => println!("  watermark: not checked ({e})"),
        Ok(d) if d.detected => {
            let payload = d.payload.unwrap_or_default();
            let link = match claimed {
                Some(c) if c == payload => ", the payload the credentials name",
                Some(_) => ", NOT the payload the credentials name",
                None => "",
            };
            println!(
                "  watermark: detected, payload {payload:016x}{link}; {:.1} % of coded bits right, \
                 chance of a false detection {:.1e} ({} frames)",
                100.0 * d.bit_accuracy.unwrap_or(0.0),
                d.false_positive_probability,
                d.frames
            );
        }
        Ok(d) => match &verdict.too_small {
            Some(why) => println!("  watermark: not found ({} frames; {why})", d.frames),
            None => println!(
                "  watermark: not found ({} frames; the file was not marked, marked with another key, or \
                 damaged beyond recovery)",
                d.frames
            ),
        },
    }
}

fn print_report(c: &Credentials) {
    let state = match c.state {
        CredentialState::Absent => "none",
        CredentialState::Invalid => "INVALID",
        CredentialState::Valid => {
            "Valid (intact and correctly signed; the signer is not on a trust list here)"
        }
        CredentialState::Trusted => {
            "Trusted (intact, signed by a certificate chaining to a trusted root)"
        }
    };
    println!("  content credentials: {state}");
    for f in &c.failures {
        println!("    failure: {f}");
    }
    if let Some(s) = &c.signer {
        println!("  signed by: {s}");
    }
    if let Some(g) = &c.generator {
        println!("  generator: {g}");
    }
    if let Some(d) = &c.digital_source_type {
        let ai = d.ends_with("/trainedAlgorithmicMedia");
        println!("  source: {}{d}", if ai { "AI-generated, " } else { "" });
    }
    if let Some(g) = &c.generation {
        for key in ["model", "seed", "steps", "prompt", "watermarked"] {
            if let Some(v) = g.get(key) {
                println!(
                    "  {key}: {}",
                    v.as_str()
                        .map(String::from)
                        .unwrap_or_else(|| v.to_string())
                );
            }
        }
    }
}
