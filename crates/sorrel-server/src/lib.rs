//! `sorrel serve`: an OpenAI `/v1/videos`-compatible HTTP server over a durable job queue.
//!
//! Requests are validated and stored (SQLite by default, or a PostgreSQL database shared by many nodes)
//! before they are answered, so an accepted job survives a crash; workers take jobs from the store under a
//! lease, generate them with the loaded pipelines, and write their files atomically into the data folder. A
//! job that was running when its process died goes back to the queue: at the next start with SQLite, when
//! its lease runs out with PostgreSQL.

pub mod auth;
pub mod config;
pub mod error;
mod events;
pub mod files;
mod film_job;
pub mod film_params;
pub mod job;
pub mod models;
pub mod params;
mod routes;
pub mod store;
mod studio;
pub mod webhook;
pub mod worker;

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sorrel_pipeline::LoadOptions;
use tokio::sync::{broadcast, watch, Notify};

pub use config::{Defaults, Limits, ModelSpec, ServerConfig, WebhookConfig};
pub use error::{ApiError, ServeError, StoreError};
pub use routes::router;
pub use store::{JobStore, PgStore, SqliteStore, Store, StoreUrl};

use auth::Keys;
use files::DataDir;
use models::{Catalog, Models};
use webhook::Webhook;

/// Everything the handlers and workers share.
pub struct App<S: JobStore> {
    /// The job store.
    pub store: S,
    /// Loaded models.
    pub models: Models,
    /// Settings.
    pub config: ServerConfig,
    /// The data folder.
    pub data: DataDir,
    /// Accepted keys.
    pub keys: Keys,
    /// Webhook sender, if configured.
    pub webhook: Option<Webhook>,
    /// Ids of jobs that just changed, for event streams.
    pub changes: broadcast::Sender<String>,
    /// Wakes an idle worker when a job is queued.
    pub wake: Notify,
    /// Wakes the webhook outbox when a job ends.
    pub outbox_wake: Notify,
    /// Cancel flags of running jobs.
    pub running: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Becomes true when the server is stopping.
    pub shutdown: watch::Sender<bool>,
    /// Unix seconds when the server started.
    pub started_at: i64,
    /// Signs every file the workers write (C2PA content credentials).
    pub identity: sorrel_provenance::SigningIdentity,
    /// This process among the store's nodes (`host-pid-random`): named in job logs and the worker registry.
    pub node_id: String,
    /// Bytes one job may use beyond the loaded models (the memory limit, or what was available after
    /// loading, over the workers); `None` where it cannot be read.
    pub memory_room: Option<u64>,
}

impl<S: JobStore> App<S> {
    /// Tells event streams that job `id` changed.
    pub fn changed(&self, id: &str) {
        let _ = self.changes.send(id.to_string());
    }

    /// The models requests may name now: this node's, then those workers published in a shared store.
    pub async fn catalog(&self) -> Result<Catalog, StoreError> {
        let registered = if self.store.is_shared() {
            self.store.registered_models(job::now_ms()).await?
        } else {
            Vec::new()
        };
        Ok(Catalog::new(&self.models, registered))
    }
}

/// A node ready to run: store opened, abandoned jobs re-queued, models loaded, and, for a server, its port
/// bound. A worker node (`sorrel worker`) listens on no port.
pub struct Server {
    app: Arc<App<Store>>,
    listener: Option<tokio::net::TcpListener>,
    _lock: Option<File>,
}

impl Server {
    /// Checks the settings, takes the data folder, opens the store, loads the models (none on an API-only
    /// node, `workers` 0) and binds the port.
    pub async fn start(config: ServerConfig) -> Result<Self, ServeError> {
        Self::open(config, true).await
    }

    /// A worker node: takes jobs from a shared store for its models, publishes them there so API nodes
    /// accept requests for them, and serves no HTTP.
    pub async fn start_worker(config: ServerConfig) -> Result<Self, ServeError> {
        if !config.store.is_shared() {
            return Err(ServeError::Config(
                "a worker takes jobs from a store that API nodes share: pass --store postgres://... (or set \
                 SORREL_STORE), the same as the API nodes', or run `sorrel serve`, which generates its own jobs"
                    .into(),
            ));
        }
        if config.workers == 0 {
            return Err(ServeError::Config(
                "--workers must be at least 1 for a worker".into(),
            ));
        }
        Self::open(config, false).await
    }

    async fn open(config: ServerConfig, listen: bool) -> Result<Self, ServeError> {
        if listen && config.api_keys.is_empty() && !config.host.is_loopback() {
            return Err(ServeError::Config(format!(
                "no API key is configured, so Sorrel only listens on loopback (127.0.0.1 or ::1), not {}. \
                 Set SORREL_API_KEYS (comma-separated) or pass --api-key to serve other machines.",
                config.host
            )));
        }
        if config.workers == 0 && !config.store.is_shared() {
            return Err(ServeError::Config(
                "--workers 0 (an API-only node) needs a store that worker processes share: \
                 pass --store postgres://..., or give this server at least one worker"
                    .into(),
            ));
        }
        let webhook = config
            .webhook
            .clone()
            .map(Webhook::new)
            .transpose()
            .map_err(ServeError::Config)?;
        let data = DataDir::create(&config.data_dir)?;
        // A shared store is shared on purpose; a SQLite one belongs to one server, which re-queues what it
        // finds running at start.
        let lock = match &config.store {
            StoreUrl::DataDir => Some(take_lock(&data.lock_file(), data.root())?),
            StoreUrl::Sqlite(path) => Some(take_lock(&lock_beside(path), path)?),
            StoreUrl::Postgres(_) => None,
        };
        let identity = match &config.signing {
            Some((cert, key)) => sorrel_provenance::SigningIdentity::from_files(cert, key),
            None => sorrel_provenance::SigningIdentity::local(&data.root().join("c2pa")),
        }
        .map_err(|e| ServeError::Config(format!("content credentials: {e}")))?;
        let store = Store::open(&config.store, &data.database()).await?;
        if let Store::Sqlite(sqlite) = &store {
            let requeued = sqlite.requeue_abandoned().await?;
            if requeued > 0 {
                tracing::warn!("{requeued} job(s) were running when the last server stopped; they are queued again");
            }
        }
        // An API-only node checks requests against the models workers publish, and loads none.
        let models = if config.workers == 0 {
            Models::none()
        } else {
            let specs = config.models.clone();
            let opts = LoadOptions {
                dtype: config.dtype,
                device: config.device.clone(),
                ..config.weights.clone()
            };
            tokio::task::spawn_blocking(move || Models::load(&specs, &opts))
                .await
                .map_err(|e| ServeError::Config(format!("model loading crashed: {e}")))??
        };
        let memory_room = match config.memory_limit {
            Some(bytes) => Some(bytes),
            None => sorrel_pipeline::memory::available_on(&config.device)
                .map_err(|e| ServeError::Config(e.to_string()))?,
        }
        .map(|bytes| bytes / config.workers.max(1) as u64);
        let listener = if listen {
            Some(
                tokio::net::TcpListener::bind((config.host, config.port))
                    .await
                    .map_err(|e| {
                        ServeError::Config(format!(
                            "cannot listen on {}:{}: {e} (pick another --port, or stop what uses it)",
                            config.host, config.port
                        ))
                    })?,
            )
        } else {
            None
        };
        let keys = Keys::new(&config.api_keys);
        let (changes, _) = broadcast::channel(1024);
        let app = Arc::new(App {
            store,
            models,
            keys,
            webhook,
            data,
            changes,
            wake: Notify::new(),
            outbox_wake: Notify::new(),
            running: Mutex::new(HashMap::new()),
            shutdown: watch::channel(false).0,
            started_at: job::now(),
            identity,
            node_id: format!(
                "{}-{}-{:08x}",
                hostname(),
                std::process::id(),
                rand::random::<u32>()
            ),
            memory_room,
            config,
        });
        Ok(Self {
            app,
            listener,
            _lock: lock,
        })
    }

    /// The address actually bound (useful with port 0); an error for a worker node, which listens on none.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        match &self.listener {
            Some(l) => l.local_addr(),
            None => Err(std::io::Error::other("a worker node listens on no port")),
        }
    }

    /// The shared state (for tests).
    pub fn app(&self) -> Arc<App<Store>> {
        self.app.clone()
    }

    /// Serves until Ctrl-C or SIGTERM, then stops accepting, puts running jobs back in the queue and returns.
    pub async fn run(self) -> Result<(), ServeError> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `stop` completes, then shuts down as [`Server::run`] does.
    pub async fn run_until(
        self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let app = self.app.clone();
        let workers: Vec<_> = (0..app.config.workers)
            .map(|i| tokio::spawn(worker::run(app.clone(), i)))
            .collect();
        let cleaner = tokio::spawn(clean_expired(app.clone()));
        let outbox = tokio::spawn(webhook::run_outbox(app.clone()));
        let relay = tokio::spawn(relay_notifications(app.clone()));
        let publisher = tokio::spawn(publish_models(app.clone()));
        let shared = app.clone();
        let stopping = async move {
            stop.await;
            tracing::info!("shutting down: running jobs go back to the queue");
            // Also ends open event streams, which would otherwise hold the shutdown open.
            let _ = shared.shutdown.send(true);
        };
        match self.listener {
            Some(listener) => {
                axum::serve(listener, router(app.clone()))
                    .with_graceful_shutdown(stopping)
                    .await?
            }
            None => stopping.await,
        }
        let _ = app.shutdown.send(true);
        for w in workers {
            let _ = w.await;
        }
        publisher.abort();
        if app.store.is_shared() && app.config.workers > 0 {
            if let Err(e) = app.store.unregister_worker(&app.node_id).await {
                tracing::warn!("cannot withdraw this worker from the store: {e}");
            }
        }
        cleaner.abort();
        relay.abort();
        // The outbox stops after the attempts under way, which records their outcome (a shared store would
        // otherwise hold those events for a minute); one still hanging is cut short after the webhook
        // timeout and made again later: pending events are in the database.
        let mut outbox = outbox;
        if tokio::time::timeout(Duration::from_secs(16), &mut outbox)
            .await
            .is_err()
        {
            outbox.abort();
        }
        Ok(())
    }
}

/// `PATH.lock` beside a SQLite file.
fn lock_beside(db: &std::path::Path) -> std::path::PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    name.into()
}

/// One server per SQLite store: a second one would re-queue the first one's running jobs. `what` is the
/// folder or file the lock guards, for the message.
fn take_lock(path: &std::path::Path, what: &std::path::Path) -> Result<File, ServeError> {
    let path = path.to_path_buf();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => {
            let _ = file.set_len(0);
            let _ = writeln!(file, "{}", std::process::id());
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => Err(ServeError::Config(format!(
            "another `sorrel serve` is using {} (see {}); stop it, pass another --data-dir, or share jobs \
             between servers with --store postgres://...",
            what.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Io { path, source }.into()),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Carries a shared store's notifications into this process: a job changed by any node reaches this node's
/// event streams, and a newly queued job wakes this node's idle workers. Reconnects after a lost connection
/// (workers also poll every second, so a gap delays nothing by more than that).
async fn relay_notifications(app: Arc<App<Store>>) {
    let Store::Postgres(pg) = &app.store else {
        return;
    };
    loop {
        match pg.listen().await {
            Ok(mut listener) => loop {
                match listener.recv().await {
                    Ok(n) if n.channel() == store::postgres::QUEUE_CHANNEL => app.wake.notify_one(),
                    Ok(n) => {
                        app.changed(n.payload());
                        cancel_if_gone(&app, n.payload()).await;
                    }
                    Err(e) => {
                        tracing::warn!("job notifications: {e}; reconnecting");
                        break;
                    }
                }
            },
            Err(e) => tracing::warn!("cannot listen for job notifications: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Stops this node's worker on job `id` at once if another node deleted it (the worker would otherwise learn
/// at its next progress report).
async fn cancel_if_gone(app: &App<Store>, id: &str) {
    let flag = app.running.lock().expect("running map").get(id).cloned();
    if let Some(flag) = flag {
        if let Ok(None) = app.store.get(id).await {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!("{id} was deleted on another node: stopping it after this step");
        }
    }
}

/// This machine's name, for worker ids in the store (`unknown` where it cannot be read).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Publishes this node's models in a shared store while it runs, renewed every third of a lease, so API
/// nodes accept requests for them and know a worker runs them (a worker that stops renewing counts as gone
/// a lease later). Nothing to do for a store one process owns, or for a node without workers.
async fn publish_models(app: Arc<App<Store>>) {
    if !app.store.is_shared() || app.config.workers == 0 {
        return;
    }
    let cards: Vec<(String, String)> = app
        .models
        .cards()
        .into_iter()
        .filter_map(|c| match serde_json::to_string(&c.info) {
            Ok(info) => Some((c.name, info)),
            Err(e) => {
                tracing::error!("cannot describe model '{}' for the store: {e}", c.name);
                None
            }
        })
        .collect();
    loop {
        if let Err(e) = app
            .store
            .register_worker(&app.node_id, &cards, store::lease_end(app.config.lease))
            .await
        {
            tracing::warn!("cannot publish this worker's models in the store: {e}");
        }
        tokio::time::sleep(app.config.lease / 3).await;
    }
}

/// Removes finished jobs past their `expires_at`, with their files: once a minute, or twice per retention
/// period when that is shorter.
async fn clean_expired<S: JobStore>(app: Arc<App<S>>) {
    let every =
        (app.config.retention / 2).clamp(Duration::from_millis(200), Duration::from_secs(60));
    loop {
        match app.store.expired(job::now()).await {
            Ok(ids) => {
                for id in ids {
                    if let Err(e) = app.data.remove_job(&id) {
                        tracing::warn!("cannot remove expired {id}: {e}");
                        continue;
                    }
                    if let Err(e) = app.store.delete(&id).await {
                        tracing::warn!("cannot remove expired {id}: {e}");
                    } else {
                        tracing::info!("{id} expired and was removed");
                    }
                }
            }
            Err(e) => tracing::warn!("expiry sweep: {e}"),
        }
        let retention = i64::try_from(app.config.retention.as_millis()).unwrap_or(i64::MAX / 4);
        match app.store.prune_events(job::now_ms() - retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                "dropped {n} webhook event(s) older than the retention period that no node delivered"
            ),
            Err(e) => tracing::warn!("outbox sweep: {e}"),
        }
        tokio::time::sleep(every).await;
    }
}
