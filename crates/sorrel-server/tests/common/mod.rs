//! An in-process server on a free loopback port, serving the tiny random-weight fixture model, on either
//! job store: the data folder's SQLite file or a database of its own on the test process's PostgreSQL.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sorrel_server::{App, Defaults, Limits, ModelSpec, Server, ServerConfig, Store, StoreUrl};

pub fn tiny_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wan-tiny-unipc/pipeline")
}

/// Which job store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `jobs.db` in the data folder.
    Sqlite,
    /// A fresh database on the test process's PostgreSQL.
    Postgres,
}

impl Backend {
    /// The store URL for a new test: the data folder's, or a database nobody else uses. `None` where
    /// PostgreSQL is not installed (outside CI; the test is then skipped).
    pub fn store(self) -> Option<StoreUrl> {
        match self {
            Self::Sqlite => Some(StoreUrl::DataDir),
            Self::Postgres => Some(StoreUrl::Postgres(
                sorrel_testkit::postgres::postgres()?.new_database(),
            )),
        }
    }
}

/// Makes `#[tokio::test]`s `sqlite::NAME` and `postgres::NAME` that run `async fn NAME(backend: Backend)`
/// on each store (the PostgreSQL one is skipped where PostgreSQL is not installed, outside CI).
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if super::common::Backend::Postgres.store().is_some() {
                        super::$name(super::common::Backend::Postgres).await
                    }
                }
            )*
        }
    };
}

/// A fast default request on `backend`: 32x32, 1 s (17 frames), 4 steps. Each call on PostgreSQL makes a
/// new database: a test that restarts its server reuses the first config.
pub fn config_on(backend: Backend, data_dir: PathBuf) -> ServerConfig {
    ServerConfig {
        store: backend.store().expect("PostgreSQL is installed"),
        ..config(data_dir)
    }
}

/// [`config_on`] the SQLite store.
pub fn config(data_dir: PathBuf) -> ServerConfig {
    ServerConfig {
        data_dir,
        port: 0,
        models: vec![ModelSpec {
            name: "tiny".into(),
            dir: tiny_model(),
        }],
        defaults: Defaults {
            size: Some((32, 32)),
            seconds: Some(1),
            steps: Some(4),
            guidance: Some(5.0),
        },
        limits: Limits {
            max_body_bytes: 64 << 10,
            max_prompt_chars: 1000,
            max_seconds: 8,
            max_width: 256,
            max_height: 256,
            max_steps: 60,
            max_queued_per_key: 100,
        },
        poll_after_ms: 50,
        ..ServerConfig::default()
    }
}

pub struct TestServer {
    pub base: String,
    pub app: Arc<App<Store>>,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
    pub dir: Option<tempfile::TempDir>,
    key: Option<String>,
}

impl TestServer {
    pub async fn start(config: ServerConfig) -> Self {
        let server = Server::start(config).await.expect("server starts");
        let base = format!("http://{}", server.local_addr().unwrap());
        let app = server.app();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            server
                .run_until(async move {
                    let _ = rx.await;
                })
                .await
                .expect("server runs");
        });
        Self {
            base,
            app,
            client: reqwest::Client::new(),
            stop: Some(tx),
            handle: Some(handle),
            dir: None,
            key: None,
        }
    }

    /// A server on `backend` with its own temporary data folder.
    pub async fn fresh(backend: Backend, edit: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config_on(backend, dir.path().to_path_buf());
        edit(&mut cfg);
        let mut s = Self::start(cfg).await;
        s.dir = Some(dir);
        s
    }

    pub fn with_key(mut self, key: &str) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    pub async fn post_json(&self, path: &str, body: Value) -> (u16, Value) {
        let res = self
            .req(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await
            .unwrap();
        json_of(res).await
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let res = self.req(reqwest::Method::GET, path).send().await.unwrap();
        json_of(res).await
    }

    /// Polls until the video is completed or failed.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Value {
        self.wait_at(&format!("/v1/videos/{id}"), timeout).await
    }

    /// Polls the job at `path` (`/v1/videos/ID` or `/v1/films/ID`) until it is completed or failed.
    pub async fn wait_at(&self, path: &str, timeout: Duration) -> Value {
        let id = path;
        let t0 = Instant::now();
        loop {
            let (status, v) = self.get_json(path).await;
            assert_eq!(status, 200, "{v}");
            if v["status"] == "completed" || v["status"] == "failed" {
                return v;
            }
            assert!(
                t0.elapsed() < timeout,
                "{id} unfinished after {timeout:?}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .expect("server stops within 30 s")
                .unwrap();
        }
    }
}

pub async fn json_of(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, v)
}

/// Asserts OpenAI's error shape and returns the error object.
pub fn openai_error(status: u16, want: u16, v: &Value) -> &Value {
    assert_eq!(status, want, "{v}");
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
    e
}
