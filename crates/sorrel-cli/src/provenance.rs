//! Content credentials in the CLI: which identity signs (`--sign-cert`/`--sign-key`, or the local signing CA
//! in the data folder), signing what `generate` writes, and `sorrel verify`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sorrel_provenance::{CredentialState, Credentials, Generation, SigningIdentity};

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

impl Signer {
    /// Writes `bytes` to `path` atomically, signed when the format can carry a manifest. Returns whether it
    /// was signed (WebM cannot be).
    pub fn write(&self, path: &Path, bytes: &[u8]) -> Result<bool> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let signed = sorrel_provenance::sign_named(bytes, &name, &self.generation, &self.identity)
            .with_context(|| format!("cannot sign {}", path.display()))?;
        sorrel_media::write_file(path, signed.as_deref().unwrap_or(bytes))?;
        Ok(signed.is_some())
    }
}

/// Options of `sorrel verify`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The file to check (.mp4, .png, .gif, .webp, .jpg).
    file: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// A PEM root certificate to trust in addition to Sorrel's local signing CA.
    #[arg(long)]
    trust_anchor: Option<PathBuf>,
}

/// Runs `sorrel verify`; the exit status is success only for Valid or Trusted credentials.
pub fn verify(args: VerifyArgs) -> Result<bool> {
    let ext = args
        .file
        .extension()
        .map(|e| e.to_string_lossy().to_string())
        .unwrap_or_default();
    let mime = sorrel_provenance::mime_for(&ext)?;
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let mut anchors = String::new();
    if let Some(p) = &args.trust_anchor {
        anchors +=
            &std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
    }
    // This machine's own outputs verify as Trusted; nothing is created here if no local CA exists.
    if let Ok(local) = std::fs::read_to_string(local_identity_dir().join("ca.pem")) {
        anchors += &local;
    }
    let c = sorrel_provenance::verify(
        &bytes,
        mime,
        (!anchors.is_empty()).then_some(anchors.as_str()),
    )?;
    if args.json {
        let mut v = serde_json::to_value(&c)?;
        v["file"] = args.file.display().to_string().into();
        v["watermark"] = serde_json::json!({"checked": false, "reason": "Sorrel's invisible watermark is not implemented yet"});
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_report(&args.file, &c);
    }
    if c.state == CredentialState::Absent && !args.json {
        eprintln!("no content credentials: the file was not signed, or they were stripped (e.g. by re-encoding)");
    }
    Ok(matches!(
        c.state,
        CredentialState::Valid | CredentialState::Trusted
    ))
}

fn print_report(file: &Path, c: &Credentials) {
    println!("{}", file.display());
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
        for key in ["model", "seed", "steps", "prompt"] {
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
    println!("  watermark: not checked (Sorrel's invisible watermark is not implemented yet)");
}
