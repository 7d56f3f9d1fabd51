//! Plays Sorrel's MP4 (H.264) and WebM (AV1) in headless Chromium (Debian's `chromium`, installed by
//! `.ci/run`) in a `<video>` element, to the end, and checks every frame was decoded and shown.
//! The page and how it reports are described in tests/browser/README.md.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::moving_clip;
use sorrel_media::{write_video, EncodeOptions};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Plays `video` in `play.html` and returns the page's JSON report.
fn play(video: &Path) -> serde_json::Value {
    assert!(
        Path::new(CHROMIUM).exists(),
        "this test needs Debian's Chromium: apt-get install chromium (.ci/run does)"
    );
    let page = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/play.html");
    let profile = tempfile::tempdir().unwrap();
    let src: String = format!("file://{}", video.display())
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let url = format!("file://{}?src={src}&timeout=30000", page.display());
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--autoplay-policy=no-user-gesture-required",
            "--mute-audio",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start chromium");
    // The page closes itself when done; if it never loads, Chromium would wait forever.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!(
                "chromium did not finish playing {} within 90 s",
                video.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let start = stderr
        .find("PLAY_RESULT ")
        .unwrap_or_else(|| panic!("no PLAY_RESULT in chromium's log:\n{stderr}"));
    let rest = &stderr[start + "PLAY_RESULT ".len()..];
    let end = rest
        .find(" END_PLAY_RESULT")
        .expect("unterminated PLAY_RESULT");
    serde_json::from_str(&rest[..end]).unwrap()
}

fn plays_to_the_end(name: &str, opts: &EncodeOptions, duration: f64) {
    let dir = tempfile::tempdir().unwrap();
    let clip = moving_clip(64, 48, 33, 16);
    let path = dir.path().join(name);
    write_video(&path, &clip, opts).unwrap();
    let r = play(&path);
    eprintln!("{name}: {r}");
    assert_eq!(r["error"], serde_json::Value::Null, "{r}");
    assert_eq!(r["ended"], true, "{r}");
    assert_eq!(
        (r["width"].as_u64(), r["height"].as_u64()),
        (Some(64), Some(48))
    );
    let d = r["duration"].as_f64().unwrap();
    assert!((d - duration).abs() < 1e-9, "duration {d}");
    // Every frame decoded, and every frame either shown or (under CPU load) dropped on time.
    let total = r["totalVideoFrames"].as_u64().unwrap();
    let shown = r["presentedFrames"].as_u64().unwrap();
    let dropped = r["droppedVideoFrames"].as_u64().unwrap();
    eprintln!("{name}: Chromium decoded {total}, showed {shown}, dropped {dropped} of 33 frames");
    assert_eq!(total, 33, "{r}");
    assert_eq!(shown + dropped, 33, "{r}");
}

#[test]
fn chromium_plays_the_h264_mp4_to_the_end() {
    plays_to_the_end("clip.mp4", &EncodeOptions::default(), 2.0625);
}

#[test]
fn chromium_plays_the_av1_webm_to_the_end() {
    // WebM stores whole milliseconds: 2.0625 s is written as 2063 ms.
    plays_to_the_end("clip.webm", &EncodeOptions::default(), 2.063);
}
