//! `sorrel serve` as a process: driven by the official OpenAI Python SDK, and killed with SIGKILL mid-job,
//! each on both job stores (the data folder's SQLite file, and a database on the test process's
//! PostgreSQL).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tiny_model() -> String {
    format!(
        "tiny={}",
        repo()
            .join("tests/fixtures/wan-tiny-unipc/pipeline")
            .display()
    )
}

/// A running `sorrel serve` and the base URL it printed.
struct Serve {
    child: Child,
    url: String,
}

impl Serve {
    fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sorrel"))
            .args([
                "serve",
                "--model",
                &tiny_model(),
                "--port",
                "0",
                "--poll-after-ms",
                "50",
            ])
            .args([
                "--default-size",
                "32x32",
                "--default-seconds",
                "1",
                "--default-steps",
                "4",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env_remove("SORREL_API_KEYS")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sorrel serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line: {line:?}"))
            .to_string();
        Self { child, url }
    }

    fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let res = reqwest::blocking::get(format!("{}{path}", self.url)).unwrap();
        let status = res.status().as_u16();
        (status, res.json().unwrap())
    }

    fn post(&self, body: serde_json::Value) -> serde_json::Value {
        let res = reqwest::blocking::Client::new()
            .post(format!("{}/v1/videos", self.url))
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json().unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python with the `openai` package: $SORREL_TEST_PYTHON, else `.ci/venv` (which `.ci/run` creates).
fn sdk_python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("SORREL_TEST_PYTHON").map(PathBuf::from),
        Some(repo().join(".ci/venv/bin/python")),
    ];
    let found = candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .args(["-c", "import openai"])
            .status()
            .is_ok_and(|s| s.success())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "CI must provide the OpenAI SDK (.ci/run installs it into .ci/venv)"
        );
        eprintln!(
            "skipping: no Python with the `openai` package (run .ci/run or set SORREL_TEST_PYTHON)"
        );
    }
    found
}

/// Which store a test runs on: `None` for the data folder's SQLite file, or the URL of a fresh PostgreSQL
/// database. `Err(())` when PostgreSQL is wanted but not installed (outside CI): the test is skipped.
fn store_args(postgres: bool) -> Result<Vec<String>, ()> {
    if !postgres {
        return Ok(Vec::new());
    }
    let pg = sorrel_testkit::postgres::postgres().ok_or(())?;
    // A short lease: with a shared store a killed server's job is claimed again when its lease runs out.
    Ok(vec![
        "--store".into(),
        pg.new_database(),
        "--lease-secs".into(),
        "2".into(),
    ])
}

#[test]
fn the_official_openai_sdk_drives_the_server() {
    sdk_drives_the_server(false);
}

#[test]
fn the_official_openai_sdk_drives_the_server_on_postgres() {
    sdk_drives_the_server(true);
}

fn sdk_drives_the_server(postgres: bool) {
    let Some(python) = sdk_python() else { return };
    let Ok(store) = store_args(postgres) else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let i2v = format!(
        "i2v={}",
        repo()
            .join("tests/fixtures/wan-tiny-i2v/pipeline")
            .display()
    );
    let toy = format!("toy={}", repo().join("models/sorrel-toyworld").display());
    let mut args = vec!["--api-key", "sk-test", "--model", &i2v, "--model", &toy];
    args.extend(store.iter().map(String::as_str));
    let serve = Serve::start(data.path(), &args);
    // The pictures the script uploads as input_reference.
    let picture = |w: u32, h: u32| {
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 5) as u8, (y * 7) as u8, 90]))
    };
    picture(48, 32).save(out.path().join("first.png")).unwrap();
    let toy_first = picture(32, 32);
    toy_first.save(out.path().join("first_toy.png")).unwrap();
    let status = Command::new(python)
        .arg(repo().join("crates/sorrel-cli/tests/serve/openai_sdk.py"))
        .arg(format!("{}/v1", serve.url))
        .arg("sk-test")
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success(), "the SDK script failed");
    let p = sorrel_testkit::ffprobe(&out.path().join("video.mp4"));
    assert_eq!(p.codec, "h264");
    assert_eq!(p.frames, 17);
    assert_eq!(p.r_frame_rate, "16/1");
    let p = sorrel_testkit::ffprobe(&out.path().join("i2v.mp4"));
    assert_eq!((p.frames, p.width, p.height), (17, 48, 32));
    // The embedded model's video starts on the uploaded picture: its first frame, decoded by ffmpeg from
    // the H.264 file, matches the picture.
    let toy_video = out.path().join("i2v_toy.mp4");
    let p = sorrel_testkit::ffprobe(&toy_video);
    assert_eq!((p.frames, p.width, p.height), (16, 32, 32));
    let decoded = out.path().join("toy_first_frame.png");
    sorrel_testkit::ffmpeg_transcode(&toy_video, &decoded, &["-frames:v", "1"]);
    let got = image::open(&decoded).unwrap().to_rgb8();
    let db = sorrel_testkit::psnr(got.as_raw(), toy_first.as_raw());
    eprintln!("embedded image to video: first frame {db:.1} dB from the uploaded picture");
    assert!(
        db >= 30.0,
        "the first frame matches the picture at only {db:.1} dB"
    );
}

#[test]
fn a_killed_server_loses_no_job() {
    killed_server_loses_no_job(false);
}

#[test]
fn a_killed_server_loses_no_job_on_postgres() {
    killed_server_loses_no_job(true);
}

/// SIGKILL while a job denoises, with more queued behind it: after a restart every job completes, each MP4
/// is whole (ffprobe decodes every frame), and no temporary file is left in the data folder. With SQLite the
/// restarted server re-queues the killed job at start; with PostgreSQL its lease runs out first.
fn killed_server_loses_no_job(postgres: bool) {
    let Ok(store) = store_args(postgres) else {
        return;
    };
    let store: Vec<&str> = store.iter().map(String::as_str).collect();
    let data = tempfile::tempdir().unwrap();
    let serve = Serve::start(data.path(), &store);
    let slow = serve
        .post(serde_json::json!({"prompt": "slow", "size": "128x128", "seconds": 4, "steps": 40}));
    let quick: Vec<_> = (0..3)
        .map(|i| serve.post(serde_json::json!({"prompt": format!("quick {i}"), "seed": i})))
        .collect();
    let id = slow["id"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    loop {
        let (_, v) = serve.get(&format!("/v1/videos/{id}"));
        if v["status"] == "in_progress" && v["progress"].as_u64().unwrap() >= 20 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{v}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut serve = serve;
    serve.child.kill().unwrap(); // SIGKILL: no shutdown code runs
    serve.child.wait().unwrap();
    drop(serve);

    let serve = Serve::start(data.path(), &store);
    let mut ids = vec![id.clone()];
    ids.extend(quick.iter().map(|v| v["id"].as_str().unwrap().to_string()));
    let t0 = Instant::now();
    for id in &ids {
        loop {
            let (status, v) = serve.get(&format!("/v1/videos/{id}"));
            assert_eq!(status, 200, "{id} lost: {v}");
            if v["status"] == "completed" {
                break;
            }
            assert_ne!(v["status"], "failed", "{v}");
            assert!(t0.elapsed() < Duration::from_secs(180), "{v}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let dir = data.path().join("videos").join(id);
        let p = sorrel_testkit::ffprobe(&dir.join("video.mp4"));
        assert_eq!(p.codec, "h264");
        let want = if *id == ids[0] { 65 } else { 17 };
        assert_eq!(p.frames, want, "{id}");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            ["log.txt", "spritesheet.jpg", "thumbnail.webp", "video.mp4"],
            "{id}"
        );
    }
    let log =
        std::fs::read_to_string(data.path().join("videos").join(&id).join("log.txt")).unwrap();
    assert!(log.contains("attempt 2"), "the killed job ran again: {log}");
}
