//! The /v1/videos API end to end over real HTTP: happy paths, every kind of bad input (each answered with a
//! 4xx in OpenAI's error shape), ownership, cancellation, pagination, limits, events, webhooks, expiry and
//! restart.

mod common;

use std::time::Duration;

use common::{json_of, openai_error, tiny_model, Backend, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

/// About 15 s alone (113 frames, 60 steps): long enough that finishing it instead of cancelling it cannot pass for a cancel.
const VERY_SLOW: fn() -> Value =
    || json!({"prompt": "a very slow one", "size": "128x128", "seconds": 7, "steps": 60});

async fn create_poll_download_list_delete(backend: Backend) {
    let s = TestServer::fresh(backend, |_| {}).await;
    let (status, v) = s
        .post_json("/v1/videos", json!({"prompt": "a red ball", "model": "tiny", "seconds": "1", "size": "32x32", "seed": 7}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "video");
    assert_eq!(v["status"], "queued");
    assert_eq!(v["seconds"], "1");
    assert_eq!(v["size"], "32x32");
    assert_eq!(v["frames"], 17);
    let id = v["id"].as_str().unwrap().to_string();
    let done = s.wait(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"], 100);
    assert!(done["completed_at"].as_i64().unwrap() >= done["created_at"].as_i64().unwrap());
    assert_eq!(
        done["expires_at"].as_i64().unwrap() - done["completed_at"].as_i64().unwrap(),
        24 * 3600
    );

    // Unfinished videos carry the SDK's polling hint; finished ones do not need it.
    let res = s
        .req(Method::GET, &format!("/v1/videos/{id}"))
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("openai-poll-after-ms").is_none());

    let dir = tempfile::tempdir().unwrap();
    let anchor = std::fs::read_to_string(s.app.data.root().join("c2pa/ca.pem")).unwrap();
    for (variant, ctype, magic) in [
        ("video", "video/mp4", &b"ftyp"[..]),
        ("thumbnail", "image/webp", &b"WEBP"[..]),
        ("spritesheet", "image/jpeg", &b"\xff\xd8\xff"[..]),
    ] {
        let res = s
            .req(
                Method::GET,
                &format!("/v1/videos/{id}/content?variant={variant}"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], ctype);
        let bytes = res.bytes().await.unwrap();
        assert!(
            bytes.windows(magic.len()).take(16).any(|w| w == magic),
            "{variant}"
        );
        // Every file carries content credentials, signed by the server's local CA.
        let c = sorrel_provenance::verify(&bytes, ctype, Some(&anchor)).unwrap();
        assert_eq!(
            c.state,
            sorrel_provenance::CredentialState::Trusted,
            "{variant}: {:?}",
            c.failures
        );
        assert_eq!(
            c.digital_source_type.as_deref(),
            Some(sorrel_provenance::TRAINED_ALGORITHMIC_MEDIA)
        );
        let g = c.generation.unwrap();
        assert_eq!(
            (g["model"].as_str(), g["seed"].as_str()),
            (Some("tiny"), Some("7"))
        );
        assert!(
            g.get("prompt").is_none(),
            "prompts are recorded only with record_prompt"
        );
        if variant == "video" {
            let path = dir.path().join("v.mp4");
            std::fs::write(&path, &bytes).unwrap();
            let p = sorrel_testkit::ffprobe(&path);
            assert_eq!(p.codec, "h264");
            assert_eq!(p.frames, 17);
            assert_eq!(p.r_frame_rate, "16/1");
        }
    }
    // The default variant is the video.
    let res = s
        .req(Method::GET, &format!("/v1/videos/{id}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "video/mp4");

    let (status, list) = s.get_json("/v1/videos").await;
    assert_eq!(status, 200);
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], id.as_str());
    assert_eq!(list["has_more"], false);

    let log = s
        .req(Method::GET, &format!("/v1/videos/{id}/logs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(log.contains("step 4/4") && log.contains("done"), "{log}");

    let res = s
        .req(Method::DELETE, &format!("/v1/videos/{id}"))
        .send()
        .await
        .unwrap();
    let (status, v) = json_of(res).await;
    assert_eq!(
        (status, &v),
        (
            200,
            &json!({"id": id, "object": "video.deleted", "deleted": true})
        )
    );
    let (status, v) = s.get_json(&format!("/v1/videos/{id}")).await;
    openai_error(status, 404, &v);
    assert!(
        !s.app.data.job_dir(&id).exists(),
        "files removed with the video"
    );
    s.stop().await;
}

async fn multipart_create_and_remix(backend: Backend) {
    let s = TestServer::fresh(backend, |_| {}).await;
    let form = reqwest::multipart::Form::new()
        .text("prompt", "a green box")
        .text("seconds", "1")
        .text("size", "48x32")
        .text("seed", "18446744073709551615")
        .text("steps", "3")
        .text("guidance", "1");
    let res = s
        .req(Method::POST, "/v1/videos")
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (status, v) = json_of(res).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["seed"], json!(u64::MAX), "seeds beyond 2^53 stay exact");
    assert_eq!(v["size"], "48x32");
    let id = v["id"].as_str().unwrap().to_string();

    // Remixing needs a completed source.
    let (status, e) = s
        .post_json(&format!("/v1/videos/{id}/remix"), json!({"prompt": "x"}))
        .await;
    if status != 200 {
        openai_error(status, 409, &e);
    }
    s.wait(&id, Duration::from_secs(60)).await;
    let (status, r) = s
        .post_json(
            &format!("/v1/videos/{id}/remix"),
            json!({"prompt": "a green ball"}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["remixed_from_video_id"], id.as_str());
    assert_eq!(r["prompt"], "a green ball");
    assert_eq!(
        (&r["seed"], &r["size"], &r["steps"]),
        (&v["seed"], &v["size"], &v["steps"])
    );
    let r = s
        .wait(r["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(r["status"], "completed");
    let (status, e) = s
        .post_json(
            &format!("/v1/videos/{id}/remix"),
            json!({"prompt": "x", "size": "64x64"}),
        )
        .await;
    assert_eq!(openai_error(status, 400, &e)["param"], "size");

    // An upload that is not a picture is refused, naming the file.
    let form = reqwest::multipart::Form::new().text("prompt", "p").part(
        "input_reference",
        reqwest::multipart::Part::bytes(vec![0u8; 100]).file_name("ref.png"),
    );
    let res = s
        .req(Method::POST, "/v1/videos")
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (status, e) = json_of(res).await;
    let e = openai_error(status, 400, &e);
    assert_eq!(e["param"], "input_reference");
    assert!(e["message"].as_str().unwrap().contains("ref.png"));
    s.stop().await;
}

async fn bad_requests_get_openai_errors(backend: Backend) {
    let s = TestServer::fresh(backend, |_| {}).await;
    let raw = |body: &'static str, ctype: &'static str| {
        s.req(Method::POST, "/v1/videos")
            .header("content-type", ctype)
            .body(body)
            .send()
    };
    for (body, code) in [
        ("{\"prompt\": ", "invalid_json"),
        ("not json", "invalid_json"),
        ("[\"prompt\"]", "invalid_json"),
        ("", "invalid_json"),
    ] {
        let (status, v) = json_of(raw(body, "application/json").await.unwrap()).await;
        assert_eq!(openai_error(status, 400, &v)["code"], code, "{body}");
    }
    let (status, v) = json_of(
        raw("prompt=x", "application/x-www-form-urlencoded")
            .await
            .unwrap(),
    )
    .await;
    openai_error(status, 415, &v);
    let (status, v) = json_of(
        raw("--x\r\nbroken", "multipart/form-data; boundary=x")
            .await
            .unwrap(),
    )
    .await;
    openai_error(status, 400, &v);

    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({}), "prompt", "Missing required parameter"),
        (json!({"prompt": "   "}), "prompt", "empty"),
        (json!({"prompt": 5}), "prompt", "expected a string"),
        (
            json!({"prompt": "x", "colour": "red"}),
            "colour",
            "Unknown parameter",
        ),
        (json!({"prompt": "x", "model": "sora-2"}), "model", "tiny"),
        (json!({"prompt": "x", "seconds": -4}), "seconds", "-4"),
        (
            json!({"prompt": "x", "seconds": "0"}),
            "seconds",
            "from 1 to 8",
        ),
        (
            json!({"prompt": "x", "seconds": "4.5"}),
            "seconds",
            "whole number",
        ),
        (
            json!({"prompt": "x", "seconds": 99}),
            "seconds",
            "--max-seconds",
        ),
        (
            json!({"prompt": "x", "seconds": "four"}),
            "seconds",
            "must be a number",
        ),
        (
            json!({"prompt": "x", "seconds": [4]}),
            "seconds",
            "an array",
        ),
        (
            json!({"prompt": "x", "size": "720p"}),
            "size",
            "WIDTHxHEIGHT",
        ),
        (
            json!({"prompt": "x", "size": "33x32"}),
            "size",
            "multiples of 16",
        ),
        (
            json!({"prompt": "x", "size": "-32x32"}),
            "size",
            "whole numbers",
        ),
        (
            json!({"prompt": "x", "size": "4096x4096"}),
            "size",
            "--max-size",
        ),
        (
            json!({"prompt": "x", "size": 832}),
            "size",
            "expected a string",
        ),
        (json!({"prompt": "x", "steps": 0}), "steps", "from 1 to 60"),
        (
            json!({"prompt": "x", "steps": 1000}),
            "steps",
            "--max-steps",
        ),
        (
            json!({"prompt": "x", "guidance": -1}),
            "guidance",
            "0 to 100",
        ),
        (json!({"prompt": "x", "seed": -1}), "seed", "whole number"),
        (
            json!({"prompt": "x", "input_reference": {"image_url": "http://x/y.png"}}),
            "input_reference",
            "multipart/form-data",
        ),
        (
            json!({"prompt": "x".repeat(1001)}),
            "prompt",
            "--max-prompt-chars",
        ),
        (
            json!({"prompt": "x", "negative_prompt": "y".repeat(1001)}),
            "negative_prompt",
            "at most 1000",
        ),
    ];
    for (body, param, needle) in cases {
        let (status, v) = s.post_json("/v1/videos", body.clone()).await;
        let e = openai_error(status, 400, &v);
        assert_eq!(e["param"], param, "{body} -> {v}");
        assert!(
            e["message"].as_str().unwrap().contains(needle),
            "{body} -> {v}"
        );
    }

    // Over the body limit (64 KiB here): 413, in the same shape.
    let (status, v) = s
        .post_json("/v1/videos", json!({"prompt": "x".repeat(100_000)}))
        .await;
    openai_error(status, 413, &v);
    let form = reqwest::multipart::Form::new().text("prompt", "p").part(
        "input_reference",
        reqwest::multipart::Part::bytes(vec![0u8; 200_000]).file_name("big.png"),
    );
    let (status, v) = json_of(
        s.req(Method::POST, "/v1/videos")
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    openai_error(status, 413, &v);

    // Ids that are not ours, or are paths, never reach the file system.
    for path in [
        "/v1/videos/video_00000000000000000000000000000000",
        "/v1/videos/video_00000000000000000000000000000000/content",
        "/v1/videos/..%2F..%2Fetc%2Fpasswd",
        "/v1/videos/..%2F..%2Fetc%2Fpasswd/content",
        "/v1/videos/video_..%2F..%2Fjobs.db/content",
        "/v1/videos/%2Fetc%2Fpasswd/logs",
    ] {
        let (status, v) = s.get_json(path).await;
        assert!(status == 400 || status == 404, "{path}: {status}");
        openai_error(status, status, &v);
    }
    let (status, v) = s.get_json("/v1/videos/../../etc/passwd").await;
    openai_error(status, 404, &v);
    let (status, v) = s.get_json("/v1/nothing").await;
    assert_eq!(openai_error(status, 404, &v)["code"], "unknown_url");
    let (status, v) = json_of(s.req(Method::PUT, "/v1/videos").send().await.unwrap()).await;
    openai_error(status, 405, &v);
    for q in [
        "limit=0",
        "limit=101",
        "limit=x",
        "order=sideways",
        "page=2",
        "after=video_00000000000000000000000000000000",
    ] {
        let (status, v) = s.get_json(&format!("/v1/videos?{q}")).await;
        openai_error(status, 400, &v);
    }
    let (status, v) = s.post_json("/v1/videos", json!({"prompt": "ok"})).await;
    assert_eq!(status, 200);
    let id = v["id"].as_str().unwrap();
    let (status, v) = s
        .get_json(&format!("/v1/videos/{id}/content?variant=gif"))
        .await;
    assert_eq!(openai_error(status, 400, &v)["param"], "variant");
    s.stop().await;
}

async fn keys_keep_videos_apart(backend: Backend) {
    let s = TestServer::fresh(backend, |c| {
        c.api_keys = vec!["sk-alice".into(), "sk-bob".into()]
    })
    .await;
    let (status, v) = s.post_json("/v1/videos", json!({"prompt": "x"})).await;
    assert_eq!(openai_error(status, 401, &v)["code"], "invalid_api_key");
    let res = s
        .req(Method::GET, "/v1/videos")
        .bearer_auth("sk-mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    let (status, v) = json_of(res).await;
    openai_error(status, 401, &v);
    let res = s
        .req(Method::GET, "/v1/videos")
        .header("authorization", "sk-alice")
        .send()
        .await
        .unwrap();
    let (status, v) = json_of(res).await;
    openai_error(status, 401, &v);
    // Health needs no key (for load balancers); everything under /v1 does.
    assert_eq!(
        s.req(Method::GET, "/health").send().await.unwrap().status(),
        200
    );

    let alice = s.with_key("sk-alice");
    let (status, v) = alice
        .post_json("/v1/videos", json!({"prompt": "alice's"}))
        .await;
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    alice.wait(&id, Duration::from_secs(60)).await;

    let bob = alice.with_key("sk-bob");
    for (method, path) in [
        (Method::GET, format!("/v1/videos/{id}")),
        (Method::GET, format!("/v1/videos/{id}/content")),
        (Method::GET, format!("/v1/videos/{id}/events")),
        (Method::GET, format!("/v1/videos/{id}/logs")),
        (Method::DELETE, format!("/v1/videos/{id}")),
    ] {
        let (status, v) = json_of(bob.req(method.clone(), &path).send().await.unwrap()).await;
        assert_eq!(
            openai_error(status, 404, &v)["code"],
            "video_not_found",
            "{method} {path}"
        );
    }
    let (status, v) = bob
        .post_json(&format!("/v1/videos/{id}/remix"), json!({"prompt": "mine"}))
        .await;
    openai_error(status, 404, &v);
    let (_, list) = bob.get_json("/v1/videos").await;
    assert_eq!(list["data"], json!([]));
    let alice = bob.with_key("sk-alice");
    let (status, v) = alice.get_json(&format!("/v1/videos/{id}")).await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("completed")),
        "bob's attempts changed nothing"
    );
    alice.stop().await;
}

async fn pagination_walks_every_video_once(backend: Backend) {
    let s = TestServer::fresh(backend, |_| {}).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let (status, v) = s
            .post_json("/v1/videos", json!({"prompt": format!("clip {i}")}))
            .await;
        assert_eq!(status, 200);
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    for (order, want) in [
        ("asc", ids.clone()),
        ("desc", ids.iter().rev().cloned().collect()),
    ] {
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let q = match &after {
                Some(a) => format!("/v1/videos?limit=2&order={order}&after={a}"),
                None => format!("/v1/videos?limit=2&order={order}"),
            };
            let (status, page) = s.get_json(&q).await;
            assert_eq!(status, 200, "{page}");
            let data = page["data"].as_array().unwrap();
            assert!(data.len() <= 2);
            seen.extend(data.iter().map(|v| v["id"].as_str().unwrap().to_string()));
            assert_eq!(page["last_id"], json!(seen.last()));
            if page["has_more"] == false {
                break;
            }
            after = page["last_id"].as_str().map(String::from);
        }
        assert_eq!(seen, want, "{order}");
    }
    s.stop().await;
}

async fn delete_cancels_a_running_job_and_the_queue_limit_holds(backend: Backend) {
    let s = TestServer::fresh(backend, |c| c.limits.max_queued_per_key = 2).await;
    let (_, a) = s.post_json("/v1/videos", VERY_SLOW()).await;
    let (_, b) = s.post_json("/v1/videos", json!({"prompt": "second"})).await;
    let (status, v) = s.post_json("/v1/videos", json!({"prompt": "third"})).await;
    assert_eq!(openai_error(status, 429, &v)["code"], "rate_limit_exceeded");
    let a = a["id"].as_str().unwrap().to_string();
    let b = b["id"].as_str().unwrap().to_string();

    // Wait until the slow job is denoising, then delete it.
    let t0 = std::time::Instant::now();
    loop {
        let (_, v) = s.get_json(&format!("/v1/videos/{a}")).await;
        if v["status"] == "in_progress" && v["progress"].as_u64().unwrap() > 5 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{v}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, v) = s.get_json(&format!("/v1/videos/{a}/content")).await;
    assert_eq!(openai_error(status, 409, &v)["code"], "invalid_state");
    let t_delete = std::time::Instant::now();
    let (status, _) = json_of(
        s.req(Method::DELETE, &format!("/v1/videos/{a}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    // The next job starts once the cancelled one stops at its next step boundary (a step here is ~0.25 s
    // alone; running to the end would take about 15 s more).
    let v = s.wait(&b, Duration::from_secs(60)).await;
    assert_eq!(v["status"], "completed");
    assert!(
        t_delete.elapsed() < Duration::from_secs(8),
        "cancel took {:?}",
        t_delete.elapsed()
    );
    let (status, _) = s.get_json(&format!("/v1/videos/{a}")).await;
    assert_eq!(status, 404);
    assert!(
        !s.app.data.job_dir(&a).exists(),
        "a cancelled job leaves no files"
    );
    // Room in the queue again.
    let (status, _) = s.post_json("/v1/videos", json!({"prompt": "third"})).await;
    assert_eq!(status, 200);
    s.stop().await;
}

async fn events_stream_reports_each_step_then_ends(backend: Backend) {
    let s = TestServer::fresh(backend, |_| {}).await;
    let (_, v) = s
        .post_json("/v1/videos", json!({"prompt": "streamed", "steps": 6}))
        .await;
    let id = v["id"].as_str().unwrap();
    let res = s
        .req(Method::GET, &format!("/v1/videos/{id}/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let text = tokio::time::timeout(Duration::from_secs(60), res.text())
        .await
        .unwrap()
        .unwrap();
    let videos: Vec<Value> = text
        .split("\n\n")
        .filter(|e| e.contains("event: video"))
        .map(|e| {
            serde_json::from_str(e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap()
        })
        .collect();
    assert_eq!(videos.last().unwrap()["status"], "completed", "{text}");
    let progress: Vec<u64> = videos
        .iter()
        .map(|v| v["progress"].as_u64().unwrap())
        .collect();
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert!(progress.len() >= 3, "several progress events: {progress:?}");
    s.stop().await;
}

async fn webhooks_are_signed_and_retried(backend: Backend) {
    use axum::http::HeaderMap;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(HeaderMap, String)>();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = calls.clone();
    // The receiver fails the first delivery, so the event arrives on a retry.
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let tx = tx.clone();
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n == 0 {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                tx.send((headers, body)).unwrap();
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let s = TestServer::fresh(backend, |c| {
        c.webhook = Some(sorrel_server::WebhookConfig {
            url,
            secret: secret.into(),
            attempts: 3,
            first_retry: Duration::from_millis(50),
        })
    })
    .await;
    let (_, v) = s.post_json("/v1/videos", json!({"prompt": "hooked"})).await;
    let id = v["id"].as_str().unwrap();
    let (headers, body) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    let event: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(event["type"], "video.completed");
    assert_eq!(event["data"]["id"], id);
    let h = |k: &str| headers[k].to_str().unwrap().to_string();
    assert_eq!(h("webhook-id"), event["id"].as_str().unwrap());
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .decode(&secret["whsec_".len()..])
        .unwrap();
    let want = sorrel_server::webhook::signature(
        &key,
        &h("webhook-id"),
        h("webhook-timestamp").parse().unwrap(),
        &body,
    );
    assert_eq!(h("webhook-signature"), want);
    s.stop().await;
}

/// A completion event whose deliveries fail until the server stops is not lost: the next server on the same
/// data folder delivers it, with the same `webhook-id` and body as the failed attempts.
async fn webhook_events_outlive_a_restart(backend: Backend) {
    use axum::http::HeaderMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    // (webhook-id, body, accepted) of every attempt.
    type Seen = Arc<std::sync::Mutex<Vec<(String, String, bool)>>>;
    let seen: Seen = Default::default();
    let accept = Arc::new(AtomicBool::new(false));
    let (log, open) = (seen.clone(), accept.clone());
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let ok = open.load(Ordering::SeqCst);
            let id = headers["webhook-id"].to_str().unwrap().to_string();
            log.lock().unwrap().push((id, body, ok));
            async move {
                if ok {
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let first = common::config_on(backend, dir.path().to_path_buf());
    let config = || {
        let mut c = first.clone();
        c.webhook = Some(sorrel_server::WebhookConfig {
            url: url.clone(),
            secret: "s3cret".into(),
            attempts: 20,
            first_retry: Duration::from_millis(100),
        });
        c
    };
    let s = TestServer::start(config()).await;
    let (_, v) = s.post_json("/v1/videos", json!({"prompt": "hooked"})).await;
    let id = v["id"].as_str().unwrap().to_string();
    s.wait(&id, Duration::from_secs(60)).await;
    let t0 = std::time::Instant::now();
    while seen.lock().unwrap().len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(30), "no retries");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.stop().await;
    let refused = seen.lock().unwrap().clone();
    accept.store(true, Ordering::SeqCst);

    let s = TestServer::start(config()).await;
    let t0 = std::time::Instant::now();
    let delivered = loop {
        if let Some(hit) = seen.lock().unwrap().iter().find(|h| h.2).cloned() {
            break hit;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "never delivered after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        refused
            .iter()
            .all(|(i, b, _)| (i, b) == (&delivered.0, &delivered.1)),
        "{refused:?} vs {delivered:?}"
    );
    let event: Value = serde_json::from_str(&delivered.1).unwrap();
    assert_eq!(event["type"], "video.completed");
    assert_eq!(event["data"]["id"], id.as_str());
    assert_eq!(event["id"], delivered.0.as_str());
    // Delivered once: nothing more arrives.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(seen.lock().unwrap().iter().filter(|h| h.2).count(), 1);
    s.stop().await;
}

/// A clip uploaded as `input_video` is restyled (video to video at `strength`), as long as the clip by default;
/// a clip too short for the asked length, a file that is no clip, a strength out of range or without a clip
/// are 400s naming the field.
async fn an_uploaded_clip_is_restyled(backend: Backend) {
    // The embedded model, trained, so that a low strength visibly keeps the clip (as in the remix test).
    let toyworld = tiny_model().join("../../../../models/sorrel-toyworld");
    let s = TestServer::fresh(backend, |c| {
        c.models.insert(
            0,
            sorrel_server::ModelSpec {
                name: "toyworld".into(),
                dir: toyworld,
            },
        );
        c.defaults = Default::default();
    })
    .await;
    let (_, v) = s
        .post_json(
            "/v1/videos",
            json!({"prompt": "a small red ball moves to the right on a blue floor", "seed": 5, "steps": 20}),
        )
        .await;
    let source_id = v["id"].as_str().unwrap().to_string();
    let done = s.wait(&source_id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let mp4 = s
        .req(Method::GET, &format!("/v1/videos/{source_id}/content"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let source = download(&s, &source_id).await;
    let create = |fields: Vec<(&'static str, String)>, clip: Option<Vec<u8>>| {
        let mut form = reqwest::multipart::Form::new();
        for (k, v) in fields {
            form = form.text(k, v);
        }
        if let Some(bytes) = clip {
            form = form.part(
                "input_video",
                reqwest::multipart::Part::bytes(bytes).file_name("clip.mp4"),
            );
        }
        let req = s.req(Method::POST, "/v1/videos").multipart(form).send();
        async move { json_of(req.await.unwrap()).await }
    };
    let prompt = || {
        (
            "prompt",
            "a small red ball moves to the left on a blue floor".to_string(),
        )
    };
    let mut psnr = vec![];
    for strength in ["0.1", "1"] {
        let fields = vec![
            prompt(),
            ("strength", strength.into()),
            ("seed", "9".into()),
        ];
        let (status, v) = create(fields, Some(mp4.clone())).await;
        assert_eq!(status, 200, "{v}");
        // The clip is 8 frames at 8 fps: one second, the length it gets when none is asked.
        assert_eq!(
            (v["seconds"].as_str(), v["frames"].as_u64()),
            (Some("1"), Some(8))
        );
        let id = v["id"].as_str().unwrap().to_string();
        assert!(s.app.data.input_dir(&id).join("input.mp4").exists());
        let done = s.wait(&id, Duration::from_secs(60)).await;
        assert_eq!(done["status"], "completed", "{done}");
        let p = mean_psnr(&download(&s, &id).await, &source);
        println!("uploaded clip restyled at strength {strength}: {p:.1} dB from the clip");
        psnr.push(p);
    }
    assert!(
        psnr[0] > psnr[1] + 6.0,
        "strength 0.1 keeps the clip: {psnr:?}"
    );

    let (status, e) = create(vec![prompt(), ("seconds", "2".into())], Some(mp4.clone())).await;
    let e = openai_error(status, 400, &e);
    assert_eq!(e["param"], "input_video");
    assert!(e["message"].as_str().unwrap().contains("8 frames"), "{e}");
    let (status, e) = create(vec![prompt()], Some(b"not a video at all".to_vec())).await;
    assert_eq!(openai_error(status, 400, &e)["param"], "input_video");
    for bad in ["1.5", "0", "0.01"] {
        let (status, e) = create(vec![prompt(), ("strength", bad.into())], Some(mp4.clone())).await;
        assert_eq!(openai_error(status, 400, &e)["param"], "strength", "{bad}");
    }
    let (status, e) = create(vec![prompt(), ("strength", "0.5".into())], None).await;
    assert_eq!(openai_error(status, 400, &e)["param"], "strength");
    s.stop().await;
}

async fn finished_videos_expire(backend: Backend) {
    let s = TestServer::fresh(backend, |c| c.retention = Duration::from_secs(1)).await;
    let (_, v) = s.post_json("/v1/videos", json!({"prompt": "brief"})).await;
    let id = v["id"].as_str().unwrap().to_string();
    s.wait(&id, Duration::from_secs(60)).await;
    assert!(s.app.data.job_dir(&id).join("video.mp4").exists());
    let t0 = std::time::Instant::now();
    loop {
        let (status, _) = s.get_json(&format!("/v1/videos/{id}")).await;
        if status == 404 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "not expired after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!s.app.data.job_dir(&id).exists());
    s.stop().await;
}

async fn shutdown_requeues_the_running_job_and_a_restart_finishes_it(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config_on(backend, dir.path().to_path_buf());
    let s = TestServer::start(config.clone()).await;
    if backend == Backend::Sqlite {
        // A second server cannot take the same SQLite store while the first runs (PostgreSQL is shared on
        // purpose).
        let err = sorrel_server::Server::start(config.clone())
            .await
            .err()
            .expect("the folder is locked");
        assert!(err.to_string().contains("another `sorrel serve`"), "{err}");
    }

    // The longest job the limits allow, stopped as soon as it is denoising: on a loaded 2-core machine a
    // shorter one (6 s) once finished before the stop reached it, and the test then proved nothing.
    let (_, v) = s.post_json("/v1/videos", VERY_SLOW()).await;
    let id = v["id"].as_str().unwrap().to_string();
    loop {
        let (_, v) = s.get_json(&format!("/v1/videos/{id}")).await;
        if v["status"] == "in_progress" {
            break;
        }
        assert_eq!(v["status"], "queued", "{v}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.stop().await;
    let log = std::fs::read_to_string(dir.path().join("videos").join(&id).join("log.txt")).unwrap();
    assert!(
        log.contains("cancelled") && !log.contains("done"),
        "the first run must have been interrupted, not finished: {log}"
    );

    let s = TestServer::start(config).await;
    let v = s.wait(&id, Duration::from_secs(240)).await;
    assert_eq!(v["status"], "completed", "{v}");
    let log = std::fs::read_to_string(s.app.data.job_dir(&id).join("log.txt")).unwrap();
    assert!(log.contains("attempt 2"), "{log}");
    s.stop().await;
}

/// The server's videos carry the invisible watermark; its payload is the job id's hash, and the video's
/// credentials name the same payload. With the watermark off, the credentials say so and the pixels hold
/// none.
async fn videos_carry_the_watermark_their_credentials_name(backend: Backend) {
    use sorrel_provenance::watermark::{payload_for, Detector, WatermarkKey};
    for on in [true, false] {
        let s = TestServer::fresh(backend, |c| {
            if !on {
                c.watermark = None;
            }
        })
        .await;
        let (_, v) = s
            .post_json(
                "/v1/videos",
                json!({"prompt": "a red ball", "size": "256x256", "steps": 2}),
            )
            .await;
        let id = v["id"].as_str().unwrap().to_string();
        let done = s.wait(&id, Duration::from_secs(120)).await;
        assert_eq!(done["status"], "completed", "{done}");
        let bytes = std::fs::read(s.app.data.job_dir(&id).join("video.mp4")).unwrap();
        let c = sorrel_provenance::verify(&bytes, "video/mp4", None).unwrap();
        assert_eq!(c.generation.as_ref().unwrap()["watermarked"], on);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.mp4");
        std::fs::write(&path, &bytes).unwrap();
        let clip = sorrel_media::read_video(&path).unwrap();
        let d = Detector::new(&WatermarkKey::default()).detect_clip(&clip);
        if on {
            assert_eq!(d.payload, Some(payload_for(&id)), "{d:?}");
            assert_eq!(c.watermark_payload, d.payload);
        } else {
            assert!(!d.detected, "{d:?}");
            assert_eq!(c.watermark_payload, None);
        }
        s.stop().await;
    }
}

/// A request too large for the memory a worker has is a 400 at create time naming the size, not a job
/// that kills the server; the same request fits a node with room for it.
async fn a_request_too_large_for_memory_is_refused(backend: Backend) {
    let s = TestServer::fresh(backend, |c| c.memory_limit = Some(16 << 20)).await;
    let (status, v) = s
        .post_json(
            "/v1/videos",
            json!({"prompt": "big", "size": "256x256", "seconds": 4}),
        )
        .await;
    let e = openai_error(status, 400, &v);
    assert_eq!(e["param"], "size", "{v}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("a 256x256 video of 65 frames needs about"),
        "{msg}"
    );
    // Small requests still fit.
    let (status, v) = s.post_json("/v1/videos", json!({"prompt": "small"})).await;
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        s.wait(&id, Duration::from_secs(60)).await["status"],
        "completed"
    );
    s.stop().await;

    let s = TestServer::fresh(backend, |c| c.memory_limit = Some(8 << 30)).await;
    let (status, v) = s
        .post_json(
            "/v1/videos",
            json!({"prompt": "big", "size": "256x256", "seconds": 4, "steps": 2}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    s.stop().await;
}

async fn models_and_unsafe_configs(backend: Backend) {
    let s = TestServer::fresh(backend, |_| {}).await;
    let (status, v) = s.get_json("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(v["data"][0]["id"], "tiny");
    s.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path().to_path_buf());
    cfg.host = "0.0.0.0".parse().unwrap();
    let err = sorrel_server::Server::start(cfg)
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("only listens on loopback"),
        "{err}"
    );
    let mut cfg = common::config(dir.path().to_path_buf());
    cfg.workers = 0;
    let err = sorrel_server::Server::start(cfg)
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("--workers 0") && err.to_string().contains("--store postgres://"),
        "{err}"
    );
    let mut cfg = common::config(dir.path().to_path_buf());
    cfg.models[0].dir = dir.path().join("missing");
    let err = sorrel_server::Server::start(cfg)
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("cannot load model `tiny`"),
        "{err}"
    );
}

/// A small version of the load benchmark (`examples/load.rs`): many clients creating and polling at once get
/// no 5xx, and every video they created completes.
async fn concurrent_clients_lose_nothing(backend: Backend) {
    let s = std::sync::Arc::new(
        TestServer::fresh(backend, |c| c.limits.max_queued_per_key = 1000).await,
    );
    let tasks: Vec<_> = (0..40)
        .map(|n| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..2 {
                    let (status, v) = s
                        .post_json(
                            "/v1/videos",
                            json!({"prompt": format!("client {n} clip {i}"), "steps": 2}),
                        )
                        .await;
                    assert_eq!(status, 200, "{v}");
                    let id = v["id"].as_str().unwrap().to_string();
                    let v = s.wait(&id, Duration::from_secs(240)).await;
                    assert_eq!(v["status"], "completed", "{v}");
                    ids.push(id);
                }
                ids
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let (_, list) = s.get_json("/v1/videos?limit=100").await;
    let listed: std::collections::HashSet<_> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(all.len(), 80);
    assert!(all.iter().all(|id| listed.contains(id)));
    std::sync::Arc::try_unwrap(s).ok().unwrap().stop().await;
}

/// A video that has been started MAX_ATTEMPTS times without finishing (the process died under it each time)
/// is failed with a reason, not run again.
async fn a_video_that_keeps_killing_the_server_is_failed(backend: Backend) {
    use sorrel_server::job::{GenParams, Job, JobStatus};
    use sorrel_server::store::{Inserted, JobStore};
    let dir = tempfile::tempdir().unwrap();
    let config = common::config_on(backend, dir.path().to_path_buf());
    let id = sorrel_server::job::new_id();
    {
        let store = sorrel_server::Store::open(&config.store, &dir.path().join("jobs.db"))
            .await
            .unwrap();
        let job = Job {
            id: id.clone(),
            owner: sorrel_server::auth::LOCAL_OWNER.into(),
            model: "tiny".into(),
            params: GenParams {
                prompt: "doomed".into(),
                negative_prompt: String::new(),
                width: 32,
                height: 32,
                seconds: 1,
                frames: 17,
                fps: 16,
                steps: 2,
                guidance: 5.0,
                seed: 0,
                input: None,
                film: None,
            },
            status: JobStatus::Queued,
            progress: 0,
            created_at: 0,
            completed_at: None,
            expires_at: None,
            error: None,
            remixed_from: None,
            attempts: 0,
        };
        assert_eq!(store.insert(&job, 10).await.unwrap(), Inserted::Yes);
        // Each claim's worker "dies": a lease of 0 runs out at once and the job is claimed again.
        for attempt in 1..=sorrel_server::worker::MAX_ATTEMPTS {
            let job = store.claim_next(&["tiny"], Duration::ZERO).await.unwrap();
            assert_eq!(job.map(|j| (j.id, j.attempts)), Some((id.clone(), attempt)));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let s = TestServer::start(config).await;
    let v = s.wait(&id, Duration::from_secs(60)).await;
    assert_eq!(v["status"], "failed");
    assert_eq!(v["error"]["code"], "too_many_attempts");
    s.stop().await;
}

async fn a_text_request_to_an_image_to_video_model_is_refused_at_create_time(backend: Backend) {
    let i2v = tiny_model().join("../../wan-tiny-i2v/pipeline");
    let s = TestServer::fresh(backend, |c| {
        c.models.push(sorrel_server::ModelSpec {
            name: "i2v".into(),
            dir: i2v,
        })
    })
    .await;
    let (status, e) = s
        .post_json(
            "/v1/videos",
            json!({"prompt": "a cat", "model": "i2v", "size": "48x32"}),
        )
        .await;
    let err = openai_error(status, 400, &e);
    assert_eq!(err["param"], "model");
    let msg = err["message"].as_str().unwrap();
    assert!(msg.contains("cannot do text-to-video"), "{msg}");
    s.stop().await;
}

/// A 48x32 PNG with a gradient and a square whose colour `v` sets.
fn png_48x32(v: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(48, 32, |x, y| {
        if (16..32).contains(&x) && (8..24).contains(&y) {
            image::Rgb([v, 255 - v, 40])
        } else {
            image::Rgb([(x * 5) as u8, (y * 7) as u8, 128])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Mean PSNR of a video's frames against a source of the same length.
fn mean_psnr(frames: &[Vec<u8>], source: &[Vec<u8>]) -> f64 {
    assert_eq!(frames.len(), source.len());
    frames
        .iter()
        .zip(source)
        .map(|(a, b)| sorrel_testkit::psnr(a, b))
        .sum::<f64>()
        / source.len() as f64
}

async fn download(s: &TestServer, id: &str) -> Vec<Vec<u8>> {
    let res = s
        .req(Method::GET, &format!("/v1/videos/{id}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let bytes = res.bytes().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("v.mp4");
    std::fs::write(&path, &bytes).unwrap();
    let clip = sorrel_media::read_video(&path).unwrap();
    clip.frames().iter().map(|f| f.rgb.clone()).collect()
}

async fn create_with_image(s: &TestServer, model: &str, png: Vec<u8>, seed: u64) -> (u16, Value) {
    let form = reqwest::multipart::Form::new()
        .text("prompt", "a cat")
        .text("model", model.to_string())
        .text("size", "48x32")
        .text("seconds", "1")
        .text("seed", seed.to_string())
        .part(
            "input_reference",
            reqwest::multipart::Part::bytes(png).file_name("first.png"),
        );
    let res = s
        .req(Method::POST, "/v1/videos")
        .multipart(form)
        .send()
        .await
        .unwrap();
    json_of(res).await
}

async fn input_reference_runs_image_to_video_and_its_file_goes_with_the_job(backend: Backend) {
    let i2v = tiny_model().join("../../wan-tiny-i2v/pipeline");
    let s = TestServer::fresh(backend, |c| {
        c.models.push(sorrel_server::ModelSpec {
            name: "i2v".into(),
            dir: i2v,
        })
    })
    .await;
    // The same seed with two pictures: the picture reaches the model.
    let mut videos = vec![];
    for v in [0u8, 255] {
        let (status, created) = create_with_image(&s, "i2v", png_48x32(v), 3).await;
        assert_eq!(status, 200, "{created}");
        let id = created["id"].as_str().unwrap().to_string();
        let done = s.wait(&id, Duration::from_secs(120)).await;
        assert_eq!(done["status"], "completed", "{done}");
        let frames = download(&s, &id).await;
        assert_eq!(frames.len(), 17, "1 s at 16 fps");
        assert_eq!(frames[0].len(), 48 * 32 * 3);
        videos.push((id, frames));
    }
    let p = sorrel_testkit::psnr(&videos[0].1[0], &videos[1].1[0]);
    assert!(
        p < 40.0,
        "two pictures gave the same first frame (PSNR {p:.1} dB)"
    );
    // Deleting the video removes its stored upload.
    let id = &videos[0].0;
    let inputs = s.app.data.input_dir(id);
    assert!(inputs.join("input.png").is_file());
    let res = s
        .req(Method::DELETE, &format!("/v1/videos/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(!inputs.exists(), "the upload is removed with the video");
    // A picture for a model that generates from text alone names the models that can.
    let (status, e) = create_with_image(&s, "tiny", png_48x32(9), 3).await;
    let e = openai_error(status, 400, &e);
    assert_eq!(e["param"], "input_reference");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("cannot do image-to-video"),
        "{e}"
    );
    // Over the body limit (64 KiB here): 413 before anything is decoded.
    let (status, e) = create_with_image(&s, "i2v", vec![0u8; 100 << 10], 3).await;
    openai_error(status, 413, &e);
    // A strength for a model that does not restyle video.
    let (status, v) = create_with_image(&s, "i2v", png_48x32(7), 3).await;
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    s.wait(&id, Duration::from_secs(120)).await;
    let (status, e) = s
        .post_json(
            &format!("/v1/videos/{id}/remix"),
            json!({"prompt": "a dog", "strength": 0.5}),
        )
        .await;
    assert_eq!(openai_error(status, 400, &e)["param"], "strength");
    // Without one, the remix starts again from the same picture (its own copy).
    let (status, r) = s
        .post_json(
            &format!("/v1/videos/{id}/remix"),
            json!({"prompt": "a dog"}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let rid = r["id"].as_str().unwrap().to_string();
    assert_eq!(
        s.wait(&rid, Duration::from_secs(120)).await["status"],
        "completed"
    );
    assert!(s.app.data.input_dir(&rid).join("input.png").is_file());
    s.stop().await;
}

async fn remix_restyles_the_video_on_a_text_to_video_model(backend: Backend) {
    // The embedded model: a trained one, whose low-strength remix keeps the source (a random one's output
    // hardly depends on its input, 29.7 dB either way).
    let toyworld = tiny_model().join("../../../../models/sorrel-toyworld");
    let s = TestServer::fresh(backend, |c| {
        c.models.push(sorrel_server::ModelSpec {
            name: "toyworld".into(),
            dir: toyworld,
        })
    })
    .await;
    let (status, v) = s
        .post_json(
            "/v1/videos",
            json!({"prompt": "a small red ball moves to the right on a blue floor", "model": "toyworld",
                   "size": "32x32", "seed": 5, "steps": 20, "guidance": 1.5}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        s.wait(&id, Duration::from_secs(60)).await["status"],
        "completed"
    );
    let source = download(&s, &id).await;
    let mut psnr = vec![];
    for strength in [0.1, 1.0] {
        let (status, r) = s
            .post_json(
                &format!("/v1/videos/{id}/remix"),
                json!({"prompt": "a small red ball moves to the left on a blue floor", "seed": 9,
                       "strength": strength}),
            )
            .await;
        assert_eq!(status, 200, "{r}");
        let rid = r["id"].as_str().unwrap().to_string();
        let done = s.wait(&rid, Duration::from_secs(60)).await;
        assert_eq!(done["status"], "completed", "{done}");
        let p = mean_psnr(&download(&s, &rid).await, &source);
        println!("remix at strength {strength}: mean PSNR against the source {p:.1} dB");
        psnr.push(p);
    }
    // A low strength keeps the source: far closer than a remix that ignores it (29.3 dB against 21.0 dB
    // when written).
    assert!(
        psnr[0] > psnr[1] + 6.0,
        "strength 0.1 is not closer to the source than strength 1: {psnr:?}"
    );
    // Strength out of range, and one that runs no step.
    for bad in [json!(0), json!(1.5), json!("much"), json!(0.01)] {
        let (status, e) = s
            .post_json(
                &format!("/v1/videos/{id}/remix"),
                json!({"prompt": "x", "strength": bad}),
            )
            .await;
        assert_eq!(openai_error(status, 400, &e)["param"], "strength", "{bad}");
    }
    s.stop().await;
}

async fn the_studio_page_needs_no_key_but_its_api_calls_do(backend: Backend) {
    let s = TestServer::fresh(backend, |c| c.api_keys = vec!["k1".into()]).await;
    for (path, ctype) in [
        ("/", "text/html; charset=utf-8"),
        ("/studio/studio.js", "text/javascript; charset=utf-8"),
        ("/studio/studio.css", "text/css; charset=utf-8"),
        ("/studio/icon.svg", "image/svg+xml"),
    ] {
        let res = s.req(Method::GET, path).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(res.headers()["content-type"], ctype, "{path}");
        // Nothing from elsewhere: the page works offline and cannot be framed.
        let policy = res.headers()["content-security-policy"].to_str().unwrap();
        assert!(policy.starts_with("default-src 'self'"), "{policy}");
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
        let body = res.text().await.unwrap();
        if !path.ends_with(".svg") {
            // (An SVG names its XML namespace by URL, which loads nothing.)
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{path} loads nothing from elsewhere"
            );
        }
    }
    let (status, v) = s.get_json("/v1/models").await;
    openai_error(status, 401, &v);
    let s = s.with_key("k1");
    let (status, v) = s.get_json("/v1/models").await;
    assert_eq!(status, 200, "{v}");
    let tiny = &v["data"][0];
    assert_eq!(tiny["id"], "tiny");
    // A Wan2.1 text-to-video model also restyles a video (a remix with a strength), but takes no picture.
    assert_eq!(
        tiny["modes"],
        json!(["text_to_video", "video_to_video"]),
        "{tiny}"
    );
    // The server's --default-* flags, which a request without those fields gets.
    assert_eq!(
        tiny["defaults"],
        json!({"size": "32x32", "seconds": 1, "steps": 4, "guidance": 5.0})
    );
    assert_eq!(tiny["limits"]["max_seconds"], 8);
    assert_eq!(tiny["limits"]["max_size"], "256x256");
}

async fn credentials_say_what_sorrel_verify_says(backend: Backend) {
    let s = TestServer::fresh(backend, |_| {}).await;
    // 256x256: the smallest frames the watermark is made for.
    let (status, v) = s
        .post_json(
            "/v1/videos",
            json!({"prompt": "a red ball", "size": "256x256", "seconds": 1, "steps": 2, "seed": 3}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let (status, v) = s.get_json(&format!("/v1/videos/{id}/credentials")).await;
    if status != 200 {
        // Still queued or running: a 409 that says when to ask.
        let message = openai_error(status, 409, &v)["message"].as_str().unwrap();
        assert!(message.contains("once its status is 'completed'"), "{v}");
    }
    assert_eq!(
        s.wait(&id, Duration::from_secs(120)).await["status"],
        "completed"
    );
    let (status, v) = s.get_json(&format!("/v1/videos/{id}/credentials")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "Trusted", "{v}");
    assert_eq!(v["ai_generated"], true, "{v}");
    assert_eq!(v["origin_established"], true, "{v}");
    assert_eq!(v["watermark"]["detected"], true, "{v}");
    assert_eq!(v["watermark"]["matches_credentials"], true, "{v}");
    assert!(v["signer"].as_str().unwrap().contains("Sorrel"), "{v}");
    assert_eq!(v["generation"]["seed"], "3", "{v}");

    // The check reads the file now: one changed byte in the stored video and the credentials are invalid.
    let path = s.app.data.job_dir(&id).join("video.mp4");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 100;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let (status, v) = s.get_json(&format!("/v1/videos/{id}/credentials")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "Invalid", "{v}");
    assert_eq!(v["origin_established"], false, "{v}");

    let (status, v) = s
        .get_json("/v1/videos/video_00000000000000000000000000000000/credentials")
        .await;
    openai_error(status, 404, &v);
}

on_both_stores!(
    webhook_events_outlive_a_restart,
    shutdown_requeues_the_running_job_and_a_restart_finishes_it,
    a_video_that_keeps_killing_the_server_is_failed,
    create_poll_download_list_delete,
    multipart_create_and_remix,
    bad_requests_get_openai_errors,
    keys_keep_videos_apart,
    pagination_walks_every_video_once,
    delete_cancels_a_running_job_and_the_queue_limit_holds,
    events_stream_reports_each_step_then_ends,
    webhooks_are_signed_and_retried,
    an_uploaded_clip_is_restyled,
    finished_videos_expire,
    videos_carry_the_watermark_their_credentials_name,
    models_and_unsafe_configs,
    a_request_too_large_for_memory_is_refused,
    concurrent_clients_lose_nothing,
    a_text_request_to_an_image_to_video_model_is_refused_at_create_time,
    input_reference_runs_image_to_video_and_its_file_goes_with_the_job,
    remix_restyles_the_video_on_a_text_to_video_model,
    the_studio_page_needs_no_key_but_its_api_calls_do,
    credentials_say_what_sorrel_verify_says,
);
