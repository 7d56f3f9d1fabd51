//! Who signs: a certificate chain and private key the user supplies (ES256 or Ed25519), or, without one, a
//! local signing CA and signer that Sorrel creates once in its data folder.
//!
//! A C2PA signer must be an end-entity certificate (not a CA) with a C2PA-accepted extended key usage and an
//! authority key identifier; the local signer has emailProtection and the C2PA claim-signing EKU
//! (1.3.6.1.4.1.62558.2.1). Files signed locally validate as `Valid` anywhere and as `Trusted` where the
//! local CA is given as a trust anchor; a certificate from a CA on the C2PA trust list makes them `Trusted`
//! everywhere.

use std::path::{Path, PathBuf};

use c2pa::crypto::raw_signature::SigningAlg;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::error::{io, ProvenanceError, Result};

/// The C2PA claim-signing extended key usage.
const C2PA_SIGNING_EKU: &[u64] = &[1, 3, 6, 1, 4, 1, 62558, 2, 1];

/// A certificate chain (signer first) and its private key.
#[derive(Clone)]
pub struct SigningIdentity {
    /// PEM chain, end-entity certificate first.
    pub chain_pem: String,
    /// PEM PKCS#8 private key of the first certificate.
    pub key_pem: String,
    /// ES256 or Ed25519.
    pub alg: SigningAlg,
    /// The root to trust when checking files signed with this identity (the local CA), if known.
    pub anchor_pem: Option<String>,
    /// Where it came from, for messages.
    pub origin: String,
}

impl std::fmt::Debug for SigningIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("SigningIdentity")
            .field("alg", &self.alg)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(io(path))
}

/// The algorithm of a PEM private key: ES256 (P-256) or Ed25519.
fn key_alg(key_pem: &str, key_path: &Path) -> Result<SigningAlg> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| {
        ProvenanceError::Identity(format!(
            "{} is not a PKCS#8 PEM private key ({e}); convert it with \
             `openssl pkcs8 -topk8 -nocrypt -in KEY -out key.pem`",
            key_path.display()
        ))
    })?;
    let alg = key.algorithm();
    if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        Ok(SigningAlg::Es256)
    } else if alg == &rcgen::PKCS_ED25519 {
        Ok(SigningAlg::Ed25519)
    } else {
        Err(ProvenanceError::Identity(format!(
            "{}: only P-256 (ES256) and Ed25519 keys are supported for signing",
            key_path.display()
        )))
    }
}

impl SigningIdentity {
    /// A user-supplied chain (`chain`: PEM, signer first) and PKCS#8 key.
    pub fn from_files(chain: &Path, key: &Path) -> Result<Self> {
        let chain_pem = read(chain)?;
        if !chain_pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(ProvenanceError::Identity(format!(
                "{} holds no PEM certificate: give the signer's certificate chain, signer first",
                chain.display()
            )));
        }
        let key_pem = read(key)?;
        let alg = key_alg(&key_pem, key)?;
        Ok(Self {
            chain_pem,
            key_pem,
            alg,
            anchor_pem: None,
            origin: format!("certificate {}", chain.display()),
        })
    }

    /// The local identity in `dir` (created on first use): `ca.pem`, `ca.key`, `signer.pem` (chain),
    /// `signer.key`.
    pub fn local(dir: &Path) -> Result<Self> {
        let files = LocalFiles::new(dir);
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        // Two processes starting at once must not each make half of a set.
        let lock_path = dir.join("identity.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        if !files.signer_chain.exists() {
            files.create()?;
        }
        let key_pem = read(&files.signer_key)?;
        Ok(Self {
            chain_pem: read(&files.signer_chain)?,
            alg: key_alg(&key_pem, &files.signer_key)?,
            key_pem,
            anchor_pem: Some(read(&files.ca_cert)?),
            origin: format!("local signing CA in {}", dir.display()),
        })
    }
}

struct LocalFiles {
    dir: PathBuf,
    ca_cert: PathBuf,
    ca_key: PathBuf,
    signer_chain: PathBuf,
    signer_key: PathBuf,
}

impl LocalFiles {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            signer_chain: dir.join("signer.pem"),
            signer_key: dir.join("signer.key"),
        }
    }

    fn create(&self) -> Result<()> {
        let fail = |what: &str, e: rcgen::Error| {
            ProvenanceError::Identity(format!("cannot create the local {what}: {e}"))
        };
        let now = time::OffsetDateTime::now_utc();
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "this machine".into());

        let ca_key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| fail("CA key", e))?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| fail("CA", e))?;
        ca.distinguished_name = name(&format!("Sorrel local signing CA ({host})"));
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca.not_before = now - time::Duration::days(1);
        ca.not_after = now + time::Duration::days(3650);
        let ca_cert = ca.self_signed(&ca_key).map_err(|e| fail("CA", e))?;

        let signer_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| fail("signer key", e))?;
        let mut signer =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| fail("signer", e))?;
        signer.distinguished_name = name(&format!("Sorrel local signer ({host})"));
        signer.is_ca = IsCa::ExplicitNoCa;
        signer.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        signer.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::EmailProtection,
            ExtendedKeyUsagePurpose::Other(C2PA_SIGNING_EKU.to_vec()),
        ];
        signer.use_authority_key_identifier_extension = true;
        signer.not_before = now - time::Duration::days(1);
        signer.not_after = now + time::Duration::days(1825);
        let issuer = Issuer::new(ca, &ca_key);
        let signer_cert = signer
            .signed_by(&signer_key, &issuer)
            .map_err(|e| fail("signer", e))?;

        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        // Keys first, certificates last: `signer.pem` existing is what marks the set complete.
        write_private(&self.ca_key, &ca_key.serialize_pem())?;
        write_private(&self.signer_key, &signer_key.serialize_pem())?;
        write(&self.ca_cert, &ca_cert.pem())?;
        write(
            &self.signer_chain,
            &format!("{}{}", signer_cert.pem(), ca_cert.pem()),
        )?;
        Ok(())
    }
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "Sorrel");
    dn
}

/// Writes atomically (temp file in the same folder, then rename).
fn write(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
    std::io::Write::write_all(&mut tmp, text.as_bytes()).map_err(io(path))?;
    tmp.persist(path).map_err(|e| ProvenanceError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// As [`write`], readable by the owner only.
fn write_private(path: &Path, text: &str) -> Result<()> {
    write(path, text)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
    }
    Ok(())
}
