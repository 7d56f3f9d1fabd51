//! The studio page in a real browser: `tests/studio/studio.test.mjs` drives headless Debian Chromium with
//! Playwright (`playwright-core` from npm, pinned in `tests/studio/package.json`; `.ci/run` installs it with
//! `npm ci`) against `sorrel serve` processes it starts from this build's binary with the embedded model.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_studio_page_works_in_chromium() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/studio");
    let ready = dir.join("node_modules/playwright-core").is_dir()
        && std::path::Path::new("/usr/bin/chromium").exists()
        && Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ready {
        assert!(
            std::env::var("CI").is_err(),
            "CI must provide Node.js, Chromium and Playwright (.ci/run installs them)"
        );
        eprintln!(
            "skipping: needs node, /usr/bin/chromium and `npm ci --prefix {}` (bash .ci/run does all three)",
            dir.display()
        );
        return;
    }
    let out = Command::new("node")
        .arg("studio.test.mjs")
        .current_dir(&dir)
        .env("SORREL_BIN", env!("CARGO_BIN_EXE_sorrel"))
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(
        out.status.success() && stdout.contains("STUDIO PASSED"),
        "the studio test failed: {stdout}\n{stderr}"
    );
}
