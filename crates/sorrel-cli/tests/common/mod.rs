//! Helpers shared by the CLI test files: run the binary, read its errors, check a refusal, write a clip.
// Each test file uses some of them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `sorrel` with `args`. Signing makes a local CA in the data folder: keep it out of the user's home.
pub fn sorrel(args: &[&str]) -> Output {
    let data = std::env::temp_dir().join(format!("sorrel-cli-tests-{}", std::process::id()));
    Command::new(env!("CARGO_BIN_EXE_sorrel"))
        .args(args)
        .env("SORREL_DATA_DIR", data)
        .output()
        .expect("run sorrel")
}

/// The command's standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Runs a failing command and checks: non-zero exit, the message names the problem, nothing written.
pub fn assert_fails(args: &[&str], needle: &str, out: &Path) {
    let o = sorrel(args);
    let err = stderr(&o);
    assert!(!o.status.success(), "expected failure for {args:?}");
    assert!(
        err.contains(needle),
        "message for {args:?} should contain `{needle}`, got: {err}"
    );
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
    assert!(
        !out.exists(),
        "output {} was created despite the error",
        out.display()
    );
    let parent = out.parent().unwrap();
    if parent.exists() {
        for e in std::fs::read_dir(parent).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().to_string();
            assert!(!n.starts_with(".sorrel"), "temporary file {n} left behind");
        }
    }
}

/// Writes (F, H, W, 3) u8 frames as a lossless animated PNG.
pub fn write_apng(t: &candle_core::Tensor, path: &Path) {
    let (f, h, w, _) = t.dims4().unwrap();
    let frames = (0..f)
        .map(|i| {
            let rgb = t
                .get(i)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<u8>()
                .unwrap();
            sorrel_media::Frame::new(w as u32, h as u32, rgb).unwrap()
        })
        .collect();
    let clip = sorrel_media::Clip::new(frames, 16).unwrap();
    sorrel_media::write_video(path, &clip, &Default::default()).unwrap();
}

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python with `c2pa` (c2pa-python): $SORREL_TEST_PYTHON, else `.ci/venv`.
pub fn c2pa_python() -> Option<PathBuf> {
    let found = [
        std::env::var_os("SORREL_TEST_PYTHON").map(PathBuf::from),
        Some(repo().join(".ci/venv/bin/python")),
    ]
    .into_iter()
    .flatten()
    .find(|p| {
        Command::new(p)
            .args(["-c", "import c2pa"])
            .status()
            .is_ok_and(|s| s.success())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "CI must provide c2pa-python (.ci/run installs it into .ci/venv)"
        );
        eprintln!(
            "skipping: no Python with the `c2pa` package (run .ci/run or set SORREL_TEST_PYTHON)"
        );
    }
    found
}

pub fn c2pa_read(python: &Path, file: &Path, anchor: Option<&Path>) -> serde_json::Value {
    let mut cmd = Command::new(python);
    cmd.arg(repo().join("crates/sorrel-cli/tests/verify/c2pa_read.py"))
        .arg(file);
    if let Some(a) = anchor {
        cmd.arg(a);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}
