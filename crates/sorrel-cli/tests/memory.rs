//! A request too large for the memory at hand is refused before it starts, with the sizes and what to change,
//! instead of the process being killed halfway (`SORREL_MEMORY_LIMIT` stands in for a small machine).

mod common;

use std::process::{Command, Output};

use common::repo;

fn generate(limit: &str, size: &str, out: &std::path::Path) -> Output {
    let data = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_sorrel"))
        .args(["generate", "a red ball", "--model"])
        .arg(repo().join("tests/fixtures/wan-tiny-unipc/pipeline"))
        .args([
            "--size", size, "--frames", "17", "--steps", "2", "--quiet", "-o",
        ])
        .arg(out)
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
