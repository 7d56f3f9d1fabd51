//! Content credentials end to end: `generate` signs what it writes, `sorrel verify` reads it back
//! (Trusted with this machine's local CA, Invalid after tampering, absent when unsigned), and the C2PA
//! project's own reader (c2pa-python) agrees.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

mod common;
use common::{c2pa_python, c2pa_read, repo};

fn sorrel(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sorrel"))
        .args(args)
        .env("SORREL_DATA_DIR", data_dir)
        .env_remove("SORREL_SIGN_CERT")
        .env_remove("SORREL_SIGN_KEY")
        .env_remove("SORREL_WATERMARK_KEY")
        .output()
        .expect("run sorrel")
}

fn generate(data_dir: &Path, out: &Path, extra: &[&str]) -> Output {
    let model = repo().join("tests/fixtures/wan-tiny-unipc/pipeline");
    let mut args = vec!["generate", "a red ball", "--model", model.to_str().unwrap()];
    if !extra.contains(&"--size") {
        args.extend(["--size", "32x32", "--frames", "9"]);
    }
    args.extend([
        "--steps",
        "2",
        "--seed",
        "5",
        "-q",
        "-o",
        out.to_str().unwrap(),
    ]);
    args.extend(extra);
    let o = sorrel(data_dir, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

fn verify_json(data_dir: &Path, file: &Path) -> (bool, Value) {
    let o = sorrel(data_dir, &["verify", "--json", file.to_str().unwrap()]);
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
        panic!(
            "{} {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.success(), v)
}

#[test]
fn generated_files_verify_and_tampering_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mp4 = tmp.path().join("clip.mp4");
    let thumb = tmp.path().join("thumb.webp");
    let o = generate(&data, &mp4, &["--thumbnail", thumb.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("signed content credentials"));
    assert!(
        data.join("c2pa/ca.pem").exists(),
        "the local CA is made on first use"
    );

    for file in [&mp4, &thumb] {
        let (ok, v) = verify_json(&data, file);
        assert!(ok, "{v}");
        assert_eq!(v["state"], "Trusted", "{v}");
        assert_eq!(
            v["digital_source_type"],
            "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
        );
        assert_eq!(v["generation"]["seed"], "5");
        assert!(
            v["generation"].get("prompt").is_none(),
            "the prompt is opt-in: {v}"
        );
    }
    // Still a playable H.264 MP4 with every frame.
    let p = sorrel_testkit::ffprobe(&mp4);
    assert_eq!((p.codec.as_str(), p.frames), ("h264", 9));

    // Another machine (no local CA) sees Valid, not Trusted.
    let (ok, v) = verify_json(&tmp.path().join("elsewhere"), &mp4);
    assert!(ok);
    assert_eq!(v["state"], "Valid");

    // One flipped bit in the video data.
    let mut bytes = std::fs::read(&mp4).unwrap();
    let mdat = bytes.windows(4).position(|w| w == b"mdat").unwrap();
    bytes[mdat + 100] ^= 0x01;
    let bad = tmp.path().join("tampered.mp4");
    std::fs::write(&bad, &bytes).unwrap();
    let (ok, v) = verify_json(&data, &bad);
    assert!(!ok);
    assert_eq!(v["state"], "Invalid");
    assert!(
        v["failures"].as_array().unwrap().iter().any(|f| f
            .as_str()
            .unwrap()
            .starts_with("assertion.bmffHash.mismatch")),
        "{v}"
    );
    let human = sorrel(&data, &["verify", bad.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("INVALID"));

    // Recorded prompt on request; an unsigned file is reported as such; WebM says it is not signed.
    let with_prompt = tmp.path().join("p.gif");
    generate(&data, &with_prompt, &["--record-prompt"]);
    assert_eq!(
        verify_json(&data, &with_prompt).1["generation"]["prompt"],
        "a red ball"
    );
    let plain = tmp.path().join("plain.png");
    image::RgbImage::new(8, 8).save(&plain).unwrap();
    let (ok, v) = verify_json(&data, &plain);
    assert!(!ok);
    assert_eq!(v["state"], "Absent");
    // WebM cannot hold a manifest: a signed sidecar goes beside it, and verify reads it from there.
    let webm = tmp.path().join("clip.webm");
    let o = generate(&data, &webm, &[]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot carry C2PA content credentials inside"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let sidecar = tmp.path().join("clip.c2pa");
    assert!(sidecar.is_file());
    let (ok, v) = verify_json(&data, &webm);
    assert!(ok, "{v}");
    assert_eq!(v["state"], "Trusted", "{v}");
    assert_eq!(v["generation"]["seed"], "5");
    let mut bytes = std::fs::read(&webm).unwrap();
    let at = bytes.len() - 50;
    bytes[at] ^= 0x01;
    std::fs::write(&webm, &bytes).unwrap();
    let (ok, v) = verify_json(&data, &webm);
    assert!(!ok);
    assert_eq!(v["state"], "Invalid", "{v}");
    // Without its sidecar only the watermark can be checked.
    std::fs::remove_file(&sidecar).unwrap();
    let o = sorrel(&data, &["verify", "--json", webm.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no sidecar"));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "Unsupported", "{v}");
    assert!(v["watermark"].get("detected").is_some(), "{v}");
    // 32x32 is below what the watermark is made for, and verify says so rather than "not marked".
    let human = sorrel(&data, &["verify", webm.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("smaller than the 256 pixels"),
        "{}",
        String::from_utf8_lossy(&human.stdout)
    );
}

/// The watermark names the same payload as the credentials, and still does once re-encoding has stripped
/// the credentials; `--no-watermark` leaves none and says so in the credentials.
#[test]
fn the_watermark_outlives_the_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mp4 = tmp.path().join("clip.mp4");
    let size = ["--size", "256x256", "--frames", "17"];
    let o = generate(&data, &mp4, &size);
    assert!(String::from_utf8_lossy(&o.stdout).contains("invisible watermark embedded"));
    let (ok, v) = verify_json(&data, &mp4);
    assert!(ok, "{v}");
    assert_eq!(v["generation"]["watermarked"], true, "{v}");
    assert_eq!(v["watermark"]["detected"], true, "{v}");
    assert_eq!(v["watermark"]["matches_credentials"], true, "{v}");
    let payload = v["watermark_payload"].clone();
    assert_eq!(v["watermark"]["payload"], payload);

    let stripped = tmp.path().join("stripped.mp4");
    sorrel_testkit::ffmpeg_transcode(
        &mp4,
        &stripped,
        &[
            "-map_metadata",
            "-1",
            "-c:v",
            "libx264",
            "-crf",
            "23",
            "-pix_fmt",
            "yuv420p",
        ],
    );
    let (ok, v) = verify_json(&data, &stripped);
    assert_eq!(v["state"], "Absent", "{v}");
    assert_eq!(v["watermark"]["payload"], payload, "{v}");
    assert!(
        ok,
        "a found watermark establishes the origin of a stripped file: {v}"
    );
    let human = sorrel(&data, &["verify", stripped.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("watermark: detected"));

    let plain = tmp.path().join("plain.mp4");
    let o = generate(&data, &plain, &[&size[..], &["--no-watermark"]].concat());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no invisible watermark"));
    let (ok, v) = verify_json(&data, &plain);
    assert!(ok, "its credentials are still valid: {v}");
    assert_eq!(v["generation"]["watermarked"], false, "{v}");
    assert_eq!(v["watermark"]["detected"], false, "{v}");
    // Another key does not see Sorrel's default mark.
    let o = sorrel(
        &data,
        &[
            "verify",
            "--json",
            "--watermark-key",
            "not ours",
            stripped.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["watermark"]["detected"], false, "{v}");
}

#[test]
fn a_user_certificate_signs_and_bad_ones_are_refused_before_work() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A user's own chain: the local identity's files stand in for a CA-issued certificate.
    sorrel_provenance::SigningIdentity::local(&tmp.path().join("issuer")).unwrap();
    let cert = tmp.path().join("issuer/signer.pem");
    let key = tmp.path().join("issuer/signer.key");
    let out = tmp.path().join("clip.png");
    generate(
        &data,
        &out,
        &[
            "--sign-cert",
            cert.to_str().unwrap(),
            "--sign-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(
        !data.join("c2pa").exists(),
        "no local CA is made when the user brings one"
    );
    let anchor = tmp.path().join("issuer/ca.pem");
    let o = sorrel(
        &data,
        &[
            "verify",
            "--json",
            "--trust-anchor",
            anchor.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "Trusted", "{v}");

    let missing = tmp.path().join("missing.pem");
    let o = sorrel(
        &data,
        &[
            "generate",
            "x",
            "--model",
            "nowhere",
            "--sign-cert",
            missing.to_str().unwrap(),
            "--sign-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("missing.pem"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = sorrel(
        &data,
        &["generate", "x", "--sign-cert", cert.to_str().unwrap()],
    );
    assert!(!o.status.success(), "--sign-cert needs --sign-key");
}

#[test]
fn the_c2pa_projects_own_reader_agrees() {
    let Some(python) = c2pa_python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let anchor = data.join("c2pa/ca.pem");
    for ext in ["mp4", "png", "gif", "webp", "webm"] {
        let out = tmp.path().join(format!("clip.{ext}"));
        generate(&data, &out, &[]);
        let v = c2pa_read(&python, &out, Some(&anchor));
        assert_eq!(v["state"], "Trusted", "{ext}: {v}");
        assert_eq!(v["generator"], "Sorrel");
        assert_eq!(
            v["digital_source_type"],
            "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
        );
        let v = c2pa_read(&python, &out, None);
        assert_eq!(v["state"], "Valid", "{ext}: {v}");
    }

    // Ed25519: the signature is right, as c2pa-python shows (c2pa 0.90.22's own reader misjudges it).
    let (chain, key_path, ca_pem) = sorrel_testkit::ed25519_identity(tmp.path());
    let ca_path = tmp.path().join("ed-ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();
    let out = tmp.path().join("ed.mp4");
    generate(
        &data,
        &out,
        &[
            "--sign-cert",
            chain.to_str().unwrap(),
            "--sign-key",
            key_path.to_str().unwrap(),
        ],
    );
    let v = c2pa_read(&python, &out, Some(&ca_path));
    assert_eq!(v["state"], "Trusted", "{v}");
}
