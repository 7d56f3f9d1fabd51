//! `/v1/films` end to end over real HTTP on the embedded toy-world model: a story becomes a film job with the
//! same life as a video (create, progress, events, content, delete), plus its storyboard and each shot as its
//! own signed file; bad stories and plans are 400s naming the problem, before anything is queued.

mod common;

use std::time::Duration;

use common::{json_of, openai_error, tiny_model, Backend, TestServer};
use reqwest::Method;
use serde_json::{json, Value};
use sorrel_server::ModelSpec;

/// Two recurring characters, a cut, and a shot that continues the one before without a cut.
const STORY: &str =
    "Ruby is a small red ball. The Twins are two small blue boxes. The floor is green.

Ruby bounces for 3 seconds. Then Ruby moves to the left.

The Twins slide to the left.";

fn toyworld() -> ModelSpec {
    ModelSpec {
        name: "toyworld".into(),
        dir: tiny_model().join("../../../../models/sorrel-toyworld"),
    }
}

/// A server with the toy-world model first (the default) and the tiny text-to-video model second.
async fn server(backend: Backend) -> TestServer {
    TestServer::fresh(backend, |c| c.models.insert(0, toyworld())).await
}

async fn get_bytes(s: &TestServer, path: &str) -> (u16, String, Vec<u8>) {
    let res = s.req(Method::GET, path).send().await.unwrap();
    let status = res.status().as_u16();
    let ctype = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ctype, res.bytes().await.unwrap().to_vec())
}

fn frames_of(dir: &std::path::Path, name: &str, bytes: &[u8]) -> sorrel_testkit::Probe {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    sorrel_testkit::ffprobe(&path)
}

async fn a_film_job_through_its_whole_life(backend: Backend) {
    let s = server(backend).await;
    let (status, v) = s
        .post_json("/v1/films", json!({"story": STORY, "seed": 1}))
        .await;
    // Unknown fields are refused, naming them: `seed` belongs to a plan's shots.
    let message = openai_error(status, 400, &v)["message"].as_str().unwrap();
    assert!(message.contains("unknown field `seed`"), "{v}");

    let (status, v) = s.post_json("/v1/films", json!({"story": STORY})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "film");
    assert_eq!(v["model"], "toyworld");
    assert_eq!(v["status"], "queued");
    let id = v["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("film_"), "{id}");
    let shots = v["shots"].as_array().unwrap().clone();
    let texts: Vec<&str> = shots.iter().map(|s| s["text"].as_str().unwrap()).collect();
    assert_eq!(
        texts,
        [
            "Ruby bounces for 3 seconds.",
            "Then Ruby moves to the left.",
            "The Twins slide to the left."
        ],
        "{v}"
    );
    let continues: Vec<bool> = shots
        .iter()
        .map(|s| s["continues"].as_bool().unwrap())
        .collect();
    assert_eq!(continues, [false, true, false], "{v}");
    assert_eq!(v["characters"].as_array().unwrap().len(), 2, "{v}");
    let fps = v["fps"].as_u64().unwrap();
    let counts: Vec<u64> = shots
        .iter()
        .map(|s| s["frames"].as_u64().unwrap())
        .collect();
    assert!(
        counts[0] >= 3 * fps,
        "a 3-second shot: {counts:?} at {fps} fps"
    );
    let total: u64 = counts.iter().sum();
    assert_eq!(v["frames"].as_u64().unwrap(), total, "{v}");

    // A film is not a video: each id lives under its own path.
    let (status, e) = s.get_json(&format!("/v1/videos/{id}")).await;
    assert_eq!(
        openai_error(status, 400, &e)["code"],
        "invalid_video_id",
        "{e}"
    );

    // Content before the end is a 409 that says when to ask.
    let (status, _, body) = get_bytes(&s, &format!("/v1/films/{id}/content")).await;
    if status != 200 {
        let e: Value = serde_json::from_slice(&body).unwrap();
        let message = openai_error(status, 409, &e)["message"].as_str().unwrap();
        assert!(message.contains("Film '"), "{e}");
    }

    // The events stream follows the film to its end, its progress never going back.
    let res = s
        .req(Method::GET, &format!("/v1/films/{id}/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let text = tokio::time::timeout(Duration::from_secs(300), res.text())
        .await
        .unwrap()
        .unwrap();
    let seen: Vec<Value> = text
        .split("\n\n")
        .filter(|e| e.contains("event: film"))
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .collect();
    assert!(seen.iter().all(|v| v["object"] == "film"), "{text}");
    assert_eq!(seen.last().unwrap()["status"], "completed", "{text}");
    let progress: Vec<u64> = seen
        .iter()
        .map(|v| v["progress"].as_u64().unwrap())
        .collect();
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert!(progress.len() >= 3, "several progress events: {progress:?}");
    let done = s
        .wait_at(&format!("/v1/films/{id}"), Duration::from_secs(10))
        .await;
    assert_eq!(done["progress"], 100, "{done}");

    let tmp = tempfile::tempdir().unwrap();
    let anchor = std::fs::read_to_string(s.app.data.root().join("c2pa/ca.pem")).unwrap();
    // The film: every shot in order, exactly as long as planned, signed with every shot as an ingredient.
    let (status, ctype, film) = get_bytes(&s, &format!("/v1/films/{id}/content")).await;
    assert_eq!((status, ctype.as_str()), (200, "video/mp4"));
    let p = frames_of(tmp.path(), "film.mp4", &film);
    assert_eq!(p.frames as u64, total);
    assert_eq!(p.r_frame_rate, format!("{fps}/1"));
    let c = sorrel_provenance::verify(&film, "video/mp4", Some(&anchor)).unwrap();
    assert_eq!(
        c.state,
        sorrel_provenance::CredentialState::Trusted,
        "{:?}",
        c.failures
    );
    let report = c.report.unwrap();
    let active = report["active_manifest"].as_str().unwrap();
    let titles: Vec<&str> = report["manifests"][active]["ingredients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["shot 01.mp4", "shot 02.mp4", "shot 03.mp4"]);

    // Each shot as its own signed file, of its planned length.
    for (i, &n) in counts.iter().enumerate() {
        let (status, ctype, shot) =
            get_bytes(&s, &format!("/v1/films/{id}/shots/{}/content", i + 1)).await;
        assert_eq!(
            (status, ctype.as_str()),
            (200, "video/mp4"),
            "shot {}",
            i + 1
        );
        assert_eq!(frames_of(tmp.path(), "shot.mp4", &shot).frames as u64, n);
        let c = sorrel_provenance::verify(&shot, "video/mp4", Some(&anchor)).unwrap();
        assert_eq!(c.state, sorrel_provenance::CredentialState::Trusted);
    }
    for bad in ["0", "4", "x"] {
        let (status, e) = s
            .get_json(&format!("/v1/films/{id}/shots/{bad}/content"))
            .await;
        let message = openai_error(status, 400, &e)["message"].as_str().unwrap();
        assert!(message.contains("has shots 1 to 3"), "{e}");
    }

    // The storyboard: one row per shot (96-pixel rows, 12-pixel gaps), signed like every file.
    let (status, ctype, board) =
        get_bytes(&s, &format!("/v1/films/{id}/content?variant=storyboard")).await;
    assert_eq!((status, ctype.as_str()), (200, "image/png"));
    let img = image::load_from_memory(&board).unwrap();
    assert_eq!(img.height(), 12 + 3 * (96 + 12));
    let c = sorrel_provenance::verify(&board, "image/png", Some(&anchor)).unwrap();
    assert_eq!(c.state, sorrel_provenance::CredentialState::Trusted);
    for (variant, ctype) in [("thumbnail", "image/webp"), ("spritesheet", "image/jpeg")] {
        let (status, got, _) =
            get_bytes(&s, &format!("/v1/films/{id}/content?variant={variant}")).await;
        assert_eq!((status, got.as_str()), (200, ctype), "{variant}");
    }
    // The storyboard is a film's alone.
    let (status, e) = s
        .get_json(&format!("/v1/films/{id}/content?variant=poster"))
        .await;
    let message = openai_error(status, 400, &e)["message"].as_str().unwrap();
    assert!(message.contains("'storyboard'"), "{e}");

    // The credentials check, as for videos: the watermark they name is the job's (its frames, 32x32, are
    // too small for the detector to find it, which the check says).
    let (status, v) = s.get_json(&format!("/v1/films/{id}/credentials")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "Trusted", "{v}");
    assert_eq!(v["generation"]["watermarked"], true, "{v}");
    assert_eq!(
        v["watermark_payload"],
        format!("{:016x}", sorrel_provenance::watermark::payload_for(&id)),
        "{v}"
    );

    // The shot cache went once the film was whole.
    assert!(
        !s.app.data.input_dir(&id).join("film").exists(),
        "the cache of a finished film is removed"
    );

    // Listed under films, not videos.
    let (_, list) = s.get_json("/v1/films").await;
    assert_eq!(list["data"][0]["id"], id.as_str(), "{list}");
    let (_, list) = s.get_json("/v1/videos").await;
    assert_eq!(list["data"], json!([]), "{list}");

    let log = s
        .req(Method::GET, &format!("/v1/films/{id}/logs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(log.contains("shot 3/3: ") && log.contains("done"), "{log}");

    let res = s
        .req(Method::DELETE, &format!("/v1/films/{id}"))
        .send()
        .await
        .unwrap();
    let (status, v) = json_of(res).await;
    assert_eq!(
        (status, &v),
        (
            200,
            &json!({"id": id, "object": "film.deleted", "deleted": true})
        )
    );
    let (status, v) = s.get_json(&format!("/v1/films/{id}")).await;
    assert_eq!(openai_error(status, 404, &v)["code"], "film_not_found");
    assert!(
        !s.app.data.job_dir(&id).exists(),
        "files removed with the film"
    );
    assert!(
        !s.app.data.input_dir(&id).exists(),
        "the shot cache removed with the film"
    );
    s.stop().await;
}

async fn bad_films_are_refused_before_they_are_queued(backend: Backend) {
    let s = server(backend).await;
    let plan = |shots: Value| json!({"sorrel_film": 1, "characters": [{"name": "Ruby", "look": "a small red ball"}], "shots": shots});
    let shot = |extra: Value| {
        let mut v = json!({"text": "Ruby bounces.", "prompt": "Ruby bounces", "seconds": 1.0});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    for (body, param, says) in [
        (json!({"story": " \n "}), "story", "the story is empty"),
        (json!({}), "story", "'story' (plain text) or 'plan'"),
        (
            json!({"story": STORY, "plan": plan(json!([shot(json!({}))]))}),
            "plan",
            "not both",
        ),
        (
            json!({"plan": plan(json!([shot(json!({"speed": 2}))]))}),
            "plan",
            "speed",
        ),
        (
            json!({"plan": plan(json!([shot(json!({"seconds": 0.0}))]))}),
            "plan",
            "shot 1",
        ),
        (
            json!({"plan": plan(json!([shot(json!({"characters": ["Bob"]}))]))}),
            "plan",
            "Bob",
        ),
        (
            json!({"story": STORY, "shot_seconds": -1}),
            "shot_seconds",
            "(0, 600]",
        ),
        (json!({"story": STORY, "steps": 0}), "steps", "1 to 60"),
        (
            json!({"story": STORY, "size": "40x32"}),
            "size",
            "multiples of 16",
        ),
        // Within the server's limits, beyond the model's.
        (json!({"story": STORY, "size": "256x256"}), "size", "128"),
        (json!({"story": STORY, "model": "nope"}), "model", "nope"),
        // The tiny model makes text-to-video only: the continued shot is refused, naming what is missing.
        (
            json!({"story": STORY, "model": "tiny"}),
            "model",
            "continues shot 1 without a cut",
        ),
    ] {
        let (status, e) = s.post_json("/v1/films", body.clone()).await;
        let err = openai_error(status, 400, &e);
        assert_eq!(err["param"], param, "{body} -> {e}");
        assert!(
            err["message"].as_str().unwrap().contains(says),
            "{body} -> {e}"
        );
    }
    let res = s
        .req(Method::POST, "/v1/films")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, e) = json_of(res).await;
    openai_error(status, 400, &e);
    // Nothing was queued.
    let (_, list) = s.get_json("/v1/films").await;
    assert_eq!(list["data"], json!([]), "{list}");
    // A size the model takes is kept.
    let (status, v) = s
        .post_json("/v1/films", json!({"story": STORY, "size": "64x32"}))
        .await;
    assert_eq!((status, v["size"].as_str()), (200, Some("64x32")), "{v}");
    let id = v["id"].as_str().unwrap();
    let res = s
        .req(Method::DELETE, &format!("/v1/films/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    for (path, code) in [
        (
            "/v1/films/video_00000000000000000000000000000000",
            "invalid_film_id",
        ),
        (
            "/v1/films/film_00000000000000000000000000000000",
            "film_not_found",
        ),
    ] {
        let (status, e) = s.get_json(path).await;
        assert_eq!(e["error"]["code"], code, "{path}: {status} {e}");
    }
    s.stop().await;
}

/// A film interrupted by the server stopping goes back to the queue; the restarted server takes its finished
/// shots from the job's cache and makes only the rest.
async fn a_restarted_server_resumes_a_film_from_its_finished_shots(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config_on(backend, dir.path().to_path_buf());
    config.models.insert(0, toyworld());
    let s = TestServer::start(config.clone()).await;
    // The last shot is long (a rollout of ten windows), so the stop comes while it is made.
    let story =
        "Ruby is a small red ball.\n\nRuby bounces for 1 second.\n\nRuby moves to the left for 1 \
                 second.\n\nRuby moves up for 10 seconds.";
    let (status, v) = s.post_json("/v1/films", json!({"story": story})).await;
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let log_path = dir.path().join("videos").join(&id).join("log.txt");
    let t0 = std::time::Instant::now();
    // "shot 2/3: 8 frames in 0.6 s: ..." once shot 2 is in the cache (progress lines say "shot 2/3: 4/96 frames").
    let finished = |log: &str, n: usize| {
        log.lines()
            .any(|l| l.contains(&format!("shot {n}/3: ")) && l.contains(" frames in "))
    };
    while !finished(&std::fs::read_to_string(&log_path).unwrap_or_default(), 2) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "shot 2 never finished"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.stop().await;
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("cancelled") && !log.contains("done"),
        "the first run must have been interrupted, not finished: {log}"
    );

    let s = TestServer::start(config).await;
    let v = s
        .wait_at(&format!("/v1/films/{id}"), Duration::from_secs(300))
        .await;
    assert_eq!(v["status"], "completed", "{v}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("attempt 2"), "{log}");
    for n in [1, 2] {
        assert!(log.contains(&format!("shot {n}/3: cached")), "{log}");
    }
    assert!(finished(&log, 3), "{log}");
    s.stop().await;
}

on_both_stores!(
    a_restarted_server_resumes_a_film_from_its_finished_shots,
    a_film_job_through_its_whole_life,
    bad_films_are_refused_before_they_are_queued,
);
