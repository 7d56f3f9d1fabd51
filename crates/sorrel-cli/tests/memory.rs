//! A request too large for the memory at hand is refused before it starts, with the sizes and what to change,
//! instead of the process being killed halfway (`SORREL_MEMORY_LIMIT` stands in for a small machine).

mod common;

use std::process::{Command, Output};

use common::repo;

fn generate(limit: &str, size: &str, out: &std::path::Path) -> Output {
    generate_with(limit, size, "17", &[], out)
}

fn generate_with(
    limit: &str,
    size: &str,
    frames: &str,
    extra: &[&str],
    out: &std::path::Path,
) -> Output {
    let data = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_sorrel"))
        .args(["generate", "a red ball", "--model"])
        .arg(repo().join("tests/fixtures/wan-tiny-unipc/pipeline"))
        .args([
            "--size", size, "--frames", frames, "--steps", "2", "--seed", "1", "--quiet", "-o",
        ])
        .arg(out)
        .args(extra)
        .env("SORREL_MEMORY_LIMIT", limit)
        .env("SORREL_DATA_DIR", data.path())
        .output()
        .unwrap()
}

#[test]
fn a_request_too_large_for_the_memory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("big.mp4");
    let o = generate("16M", "512x512", &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("a 512x512 video of 17 frames needs about")
            && err.contains("0.0 GB is available"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists(), "nothing is written");

    // The same request with room for it runs.
    let o = generate("8G", "512x512", &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.exists());

    let o = generate("lots", "32x32", &dir.path().join("small.mp4"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("SORREL_MEMORY_LIMIT=lots is not a size"),
        "{err}"
    );
}

/// A decode too large for the memory in one piece runs in tiles (diffusers' `enable_tiling`) by default; with
/// `--vae-tiling off` it is refused with that advice; tiles change the frames near their seams.
#[test]
fn a_decode_too_large_for_the_memory_runs_in_tiles() {
    let dir = tempfile::tempdir().unwrap();
    let file = |n: &str| dir.path().join(n);
    // 9 frames of 512x512 on the tiny VAE, with the frames made: about 0.21 GB whole, 0.16 GB in tiles.
    let run = |tiling: &str, out: &std::path::Path| {
        generate_with("180M", "512x512", "9", &["--vae-tiling", tiling], out)
    };
    let o = run("off", &file("off.npy"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("in tiles it fits: --vae-tiling auto or on"),
        "{err}"
    );
    assert!(!file("off.npy").exists());
    for (tiling, out) in [("auto", "auto.npy"), ("on", "on.npy")] {
        let o = run(tiling, &file(out));
        assert!(
            o.status.success(),
            "{tiling}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // Left to choose (the default), it says it tiled.
    let o = generate_with("180M", "512x512", "9", &[], &file("default.npy"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("note: the VAE decoded in 256-pixel tiles"),
        "{err}"
    );
    let auto = std::fs::read(file("auto.npy")).unwrap();
    assert_eq!(
        auto,
        std::fs::read(file("on.npy")).unwrap(),
        "auto tiles as on does"
    );
    // With room to spare, auto decodes whole frames, which differ from the tiled ones.
    let o = generate_with("8G", "512x512", "9", &[], &file("whole.npy"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_ne!(auto, std::fs::read(file("whole.npy")).unwrap());
    let o = run("sometimes", &file("bad.npy"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("`sometimes` is not a VAE tiling: use auto, on or off"),
        "{err}"
    );
}
