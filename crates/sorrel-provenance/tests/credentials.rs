//! Signing Sorrel's output formats and reading them back: Trusted with the local CA as anchor, Valid without
//! it, Invalid after one byte of picture data changes, Absent when unsigned; and the claims that say what
//! made the file.

use sorrel_media::{Clip, EncodeOptions, Format, Frame};
use sorrel_provenance::{
    sign, sign_sidecar, verify, verify_sidecar, CredentialState, Generation, SigningIdentity,
    TRAINED_ALGORITHMIC_MEDIA,
};

/// A textured, moving 64x48 clip of 9 frames.
fn clip() -> Clip {
    let (w, h) = (64u32, 48u32);
    let frames = (0..9u32)
        .map(|t| Frame {
            width: w,
            height: h,
            rgb: (0..w * h)
                .flat_map(|i| {
                    let (x, y) = (i % w + 3 * t, i / w);
                    [(x * 4) as u8, (y * 5) as u8, ((x ^ y) * 7) as u8]
                })
                .collect(),
        })
        .collect();
    Clip::new(frames, 16).unwrap()
}

fn generation() -> Generation {
    Generation {
        model: "wan-tiny".into(),
        seed: 7,
        steps: 4,
        prompt: Some("a red ball".into()),
        watermark: None,
    }
}

fn encode(ext: &str) -> Vec<u8> {
    let format = Format::from_path(std::path::Path::new(&format!("x.{ext}"))).unwrap();
    sorrel_media::encode(&format, &clip(), &EncodeOptions::default()).unwrap()
}

/// Offset of a byte well inside the picture data (not the manifest, not the container headers).
fn picture_byte(bytes: &[u8], ext: &str) -> usize {
    let find = |tag: &[u8]| bytes.windows(tag.len()).position(|w| w == tag).unwrap();
    match ext {
        "mp4" => find(b"mdat") + 64,
        "png" => find(b"IDAT") + 40,
        "gif" => bytes.len() - 40,
        "webp" => find(b"VP8") + 60,
        _ => unreachable!(),
    }
}

#[test]
fn signed_outputs_validate_and_a_changed_byte_breaks_them() {
    let dir = tempfile::tempdir().unwrap();
    let id = SigningIdentity::local(&dir.path().join("c2pa")).unwrap();
    let anchor = id.anchor_pem.clone().unwrap();
    for (ext, mime) in [
        ("mp4", "video/mp4"),
        ("png", "image/png"),
        ("gif", "image/gif"),
        ("webp", "image/webp"),
    ] {
        let plain = encode(ext);
        assert_eq!(
            verify(&plain, mime, None).unwrap().state,
            CredentialState::Absent,
            "{ext}"
        );
        let signed = sign(&plain, mime, &format!("clip.{ext}"), &generation(), &id).unwrap();

        let trusted = verify(&signed, mime, Some(&anchor)).unwrap();
        assert_eq!(
            trusted.state,
            CredentialState::Trusted,
            "{ext}: {:?}",
            trusted.failures
        );
        assert_eq!(
            trusted.digital_source_type.as_deref(),
            Some(TRAINED_ALGORITHMIC_MEDIA)
        );
        assert!(
            trusted.generator.as_deref().unwrap().starts_with("Sorrel"),
            "{:?}",
            trusted.generator
        );
        let g = trusted.generation.unwrap();
        assert_eq!(
            (
                g["model"].as_str(),
                g["seed"].as_str(),
                g["prompt"].as_str()
            ),
            (Some("wan-tiny"), Some("7"), Some("a red ball"))
        );
        assert!(trusted.signer.unwrap().contains("Sorrel local signer"));

        // Without the local CA as an anchor the signature still checks out, but nothing vouches for it.
        let valid = verify(&signed, mime, None).unwrap();
        assert_eq!(
            valid.state,
            CredentialState::Valid,
            "{ext}: {:?}",
            valid.failures
        );

        // The signed file still decodes as what it was.
        if ext != "mp4" {
            let back = image::load_from_memory(&signed).unwrap();
            assert_eq!((back.width(), back.height()), (64, 48));
        }

        let mut tampered = signed.clone();
        let at = picture_byte(&tampered, ext);
        tampered[at] ^= 0x01;
        let broken = verify(&tampered, mime, Some(&anchor)).unwrap();
        assert_eq!(broken.state, CredentialState::Invalid, "{ext}");
        let want = if ext == "mp4" {
            "assertion.bmffHash.mismatch"
        } else {
            "assertion.dataHash.mismatch"
        };
        assert!(
            broken.failures.iter().any(|f| f.starts_with(want)),
            "{ext}: {:?}",
            broken.failures
        );
    }
}

#[test]
fn the_prompt_is_recorded_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let id = SigningIdentity::local(dir.path()).unwrap();
    // Seeds use all 64 bits (more than C2PA's CBOR integers hold), so they are stored as text.
    let g = Generation {
        prompt: None,
        seed: u64::MAX,
        ..generation()
    };
    let signed = sign(&encode("png"), "image/png", "clip.png", &g, &id).unwrap();
    let c = verify(&signed, "image/png", None).unwrap();
    let g = c.generation.unwrap();
    assert!(g.get("prompt").is_none());
    assert_eq!(g["seed"], u64::MAX.to_string());
    assert!(!String::from_utf8_lossy(&signed).contains("a red ball"));
}

#[test]
fn the_local_identity_is_made_once_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let a = SigningIdentity::local(dir.path()).unwrap();
    let b = SigningIdentity::local(dir.path()).unwrap();
    assert_eq!(a.chain_pem, b.chain_pem);
    assert_eq!(
        a.chain_pem.matches("BEGIN CERTIFICATE").count(),
        2,
        "signer + CA"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("signer.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The same files, given as a user identity, sign too.
    let user = SigningIdentity::from_files(
        &dir.path().join("signer.pem"),
        &dir.path().join("signer.key"),
    )
    .unwrap();
    let signed = sign(
        &encode("png"),
        "image/png",
        "clip.png",
        &generation(),
        &user,
    )
    .unwrap();
    let c = verify(&signed, "image/png", a.anchor_pem.as_deref()).unwrap();
    assert_eq!(c.state, CredentialState::Trusted, "{:?}", c.failures);
}

#[test]
fn a_ca_certificate_cannot_sign_and_bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    // Creates ca.pem/ca.key and signer.pem/signer.key in `dir`.
    SigningIdentity::local(dir.path()).unwrap();
    // C2PA requires an end-entity signer: the CA itself is refused before anything is written.
    let ca = SigningIdentity::from_files(&dir.path().join("ca.pem"), &dir.path().join("ca.key"))
        .unwrap();
    let e = sign(&encode("png"), "image/png", "clip.png", &generation(), &ca)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ca.pem") && e.contains("end-entity"), "{e}");

    std::fs::write(dir.path().join("junk.key"), "not a key").unwrap();
    let e =
        SigningIdentity::from_files(&dir.path().join("signer.pem"), &dir.path().join("junk.key"))
            .unwrap_err();
    assert!(
        e.to_string().contains("junk.key") && e.to_string().contains("PKCS#8"),
        "{e}"
    );
    let e = SigningIdentity::from_files(
        &dir.path().join("signer.key"),
        &dir.path().join("signer.key"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("no PEM certificate"), "{e}");
    let e = SigningIdentity::from_files(
        &dir.path().join("missing.pem"),
        &dir.path().join("signer.key"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("missing.pem"), "{e}");
    assert!(sorrel_provenance::mime_for("webm")
        .unwrap_err()
        .to_string()
        .contains("cannot carry"));
}

#[test]
fn ed25519_keys_sign() {
    let dir = tempfile::tempdir().unwrap();
    // An Ed25519 signer issued by a separate Ed25519 CA that has the C2PA profile.
    let (chain, key, ca_pem) = sorrel_testkit::ed25519_identity(dir.path());
    let id = SigningIdentity::from_files(&chain, &key).unwrap();
    assert_eq!(id.alg, c2pa::crypto::raw_signature::SigningAlg::Ed25519);
    let signed = sign(&encode("gif"), "image/gif", "clip.gif", &generation(), &id).unwrap();
    let c = verify(&signed, "image/gif", Some(&ca_pem)).unwrap();
    assert_eq!(c.generation.unwrap()["model"], "wan-tiny");
    // Known upstream bug, checked here so that moving the c2pa pin shows when it is fixed: c2pa 0.90.22's
    // Rust-native Ed25519 validator rejects every Ed25519 claim signature. The signature itself is right:
    // c2pa-python 0.38.1 (c2pa-rs 0.91.3) reads the same file as Valid (crates/sorrel-cli/tests/verify.rs).
    assert_eq!(c.state, CredentialState::Invalid);
    assert_eq!(c.failures.len(), 1, "{:?}", c.failures);
    assert!(
        c.failures[0].starts_with("claimSignature.mismatch"),
        "{:?}",
        c.failures
    );
}

/// WebM cannot hold a manifest: a sidecar binds the whole file, validates against it, names the watermark
/// payload, and breaks when one byte of the video changes.
#[test]
fn a_webm_sidecar_validates_and_a_changed_byte_breaks_it() {
    let dir = tempfile::tempdir().unwrap();
    let id = SigningIdentity::local(&dir.path().join("c2pa")).unwrap();
    let anchor = id.anchor_pem.clone().unwrap();
    let webm = encode("webm");
    let mut generation = generation();
    generation.watermark = Some(0x0123_4567_89ab_cdef);
    let sidecar = sign_sidecar(&webm, "video/webm", "clip.webm", &generation, &id).unwrap();
    let c = verify_sidecar(&webm, "video/webm", &sidecar, Some(&anchor)).unwrap();
    assert_eq!(c.state, CredentialState::Trusted, "{:?}", c.failures);
    assert_eq!(
        c.digital_source_type.as_deref(),
        Some(TRAINED_ALGORITHMIC_MEDIA)
    );
    assert_eq!(c.watermark_payload, Some(0x0123_4567_89ab_cdef));
    assert_eq!(c.generation.unwrap()["watermarked"], true);
    let c = verify_sidecar(&webm, "video/webm", &sidecar, None).unwrap();
    assert_eq!(c.state, CredentialState::Valid, "{:?}", c.failures);

    let mut bad = webm.clone();
    let at = bad.len() - 100;
    bad[at] ^= 0x01;
    let c = verify_sidecar(&bad, "video/webm", &sidecar, Some(&anchor)).unwrap();
    assert_eq!(c.state, CredentialState::Invalid);
    assert!(
        c.failures
            .iter()
            .any(|f| f.starts_with("assertion.dataHash.mismatch")),
        "{:?}",
        c.failures
    );
}
