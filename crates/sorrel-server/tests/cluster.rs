//! Nodes sharing one PostgreSQL store, in process: an API-only node (no workers, no models loaded) takes
//! requests for the models that worker nodes publish, checks them against the published description, and
//! queues a job for a model no running worker has (saying so in its log) until one starts. Also the
//! store's refusals at start: an unreachable database and a schema newer than this build.

mod common;

use std::time::{Duration, Instant};

use common::{openai_error, tiny_model, TestServer};
use reqwest::Method;
use serde_json::json;
use sorrel_server::{ModelSpec, Server, ServerConfig, StoreUrl};

/// A fresh database on the test process's PostgreSQL; `None` (the test is skipped) where PostgreSQL is not
/// installed, outside CI.
fn database() -> Option<String> {
    Some(sorrel_testkit::postgres::postgres()?.new_database())
}

/// A worker node running `model` (the tiny fixture under that name) on `store`, writing into `data`.
struct Worker {
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<()>,
}

impl Worker {
    async fn start(store: &str, data: &std::path::Path, model: &str) -> Self {
        let config = ServerConfig {
            models: vec![ModelSpec {
                name: model.into(),
                dir: tiny_model(),
            }],
            store: StoreUrl::Postgres(store.into()),
            lease: Duration::from_secs(3),
            ..common::config(data.to_path_buf())
        };
        let node = Server::start_worker(config).await.expect("worker starts");
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            node.run_until(async move {
                let _ = rx.await;
            })
            .await
            .expect("worker runs");
        });
        Self { stop, handle }
    }

    /// Stops it as Ctrl-C does: it withdraws from the store's registry.
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("worker stops within 30 s")
            .unwrap();
    }
}

/// An API-only node on `store` over the data folder `data`.
async fn api_node(store: &str, data: &std::path::Path) -> TestServer {
    let mut config = common::config(data.to_path_buf());
    config.store = StoreUrl::Postgres(store.into());
    config.workers = 0;
    config.models.clear();
    TestServer::start(config).await
}

async fn log_of(s: &TestServer, id: &str) -> String {
    s.req(Method::GET, &format!("/v1/videos/{id}/logs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_node_takes_requests_for_the_models_workers_publish() {
    let Some(store) = database() else { return };
    let data = tempfile::tempdir().unwrap();
    let api = api_node(&store, data.path()).await;

    // Before any worker has published a model there is nothing to generate with.
    let (status, v) = api
        .post_json("/v1/videos", json!({"prompt": "a red ball"}))
        .await;
    let e = openai_error(status, 400, &v);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("No worker has published a model yet"),
        "{v}"
    );
    let (_, models) = api.get_json("/v1/models").await;
    assert_eq!(models["data"], json!([]), "{models}");

    let worker = Worker::start(&store, data.path(), "tiny-b").await;
    let t0 = Instant::now();
    let models = loop {
        let (status, v) = api.get_json("/v1/models").await;
        assert_eq!(status, 200, "{v}");
        if v["data"].as_array().is_some_and(|d| !d.is_empty()) {
            break v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "never published: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The published description gives the API node the model's own defaults and modes.
    assert_eq!(models["data"][0]["id"], "tiny-b", "{models}");
    assert_eq!(models["data"][0]["fps"], 16, "{models}");
    assert_eq!(
        models["data"][0]["modes"],
        json!(["text_to_video", "video_to_video"]),
        "{models}"
    );

    // A model no node ever published is refused at create time, naming what there is.
    let (status, v) = api
        .post_json(
            "/v1/videos",
            json!({"prompt": "x", "model": "never-published"}),
        )
        .await;
    let e = openai_error(status, 400, &v);
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("never-published") && msg.contains("tiny-b"),
        "{msg}"
    );
    // A request the model cannot do is refused by the API node from the published description, as the
    // worker would refuse it: an image-to-video request to a text-to-video model.
    let form = reqwest::multipart::Form::new().text("prompt", "x").part(
        "input_reference",
        reqwest::multipart::Part::bytes(png(32, 32)).file_name("first.png"),
    );
    let res = api
        .req(Method::POST, "/v1/videos")
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (status, v) = common::json_of(res).await;
    let e = openai_error(status, 400, &v);
    assert_eq!(e["param"], "input_reference", "{v}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("cannot do image-to-video"),
        "{v}"
    );

    // The default model is the published one; the worker generates it and the API node serves the file
    // from the shared data folder.
    let (status, v) = api
        .post_json("/v1/videos", json!({"prompt": "a red ball", "seed": 3}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "tiny-b");
    let id = v["id"].as_str().unwrap().to_string();
    let done = api.wait(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let res = api
        .req(Method::GET, &format!("/v1/videos/{id}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(log_of(&api, &id).await.contains("attempt 1 on "));

    // With its only worker stopped, the model is still known: a job for it is queued and waits, and its
    // log says why.
    worker.stop().await;
    let (status, v) = api
        .post_json("/v1/videos", json!({"prompt": "waits", "model": "tiny-b"}))
        .await;
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let log = log_of(&api, &id).await;
    assert!(
        log.contains("waiting for a worker with model 'tiny-b'"),
        "{log}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, v) = api.get_json(&format!("/v1/videos/{id}")).await;
    assert_eq!(v["status"], "queued", "{v}");

    // A worker with the model comes back and finishes it.
    let worker = Worker::start(&store, data.path(), "tiny-b").await;
    let done = api.wait(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    worker.stop().await;
    api.stop().await;
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 80]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_stores_are_refused_at_start() {
    let data = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: a clear error at once, not a hang.
    let mut config = common::config(data.path().to_path_buf());
    config.store = StoreUrl::Postgres("postgres://sorrel:secret@127.0.0.1:1/jobs".into());
    let t0 = Instant::now();
    let err = Server::start(config).await.err().expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("cannot connect to the job database postgres://sorrel:***@127.0.0.1:1/jobs")
            && msg.contains("check the --store URL"),
        "{msg}"
    );
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());

    // A worker needs a shared store.
    let err = Server::start_worker(common::config(data.path().to_path_buf()))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("--store postgres://"), "{err}");

    // A database a newer sorrel migrated: refused, naming both versions, and left as it was.
    let Some(store) = database() else { return };
    sorrel_server::PgStore::open(&store).await.unwrap();
    let pool = sqlx::PgPool::connect(&store).await.unwrap();
    sqlx::query("UPDATE sorrel_schema SET version = 999")
        .execute(&pool)
        .await
        .unwrap();
    let mut config = common::config(data.path().to_path_buf());
    config.store = StoreUrl::Postgres(store.clone());
    let err = Server::start(config).await.err().expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("schema is version 999, newer than this sorrel knows")
            && msg.contains("upgrade sorrel"),
        "{msg}"
    );
    let version: i64 = sqlx::query_scalar("SELECT version FROM sorrel_schema")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(version, 999);
}
