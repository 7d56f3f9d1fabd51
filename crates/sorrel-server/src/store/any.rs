//! The store a server runs on, chosen by `--store`: the embedded SQLite file or a shared PostgreSQL.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    Inserted, JobStore, Order, OutboxEvent, PgStore, Registered, SqliteStore, StoreResult,
};
use crate::job::{Job, JobError};

/// Where the jobs live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `jobs.db` in the data folder (the default).
    DataDir,
    /// A SQLite file of the user's choosing (`sqlite:PATH`).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://...` or `postgresql://...`), shared by many nodes.
    Postgres(String),
}

impl StoreUrl {
    /// Reads a `--store` value.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(Self::Postgres(s.to_string()))
        } else if let Some(path) = s.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(
                    "`sqlite:` needs a file path, e.g. sqlite:/var/lib/sorrel/jobs.db".into(),
                );
            }
            Ok(Self::Sqlite(PathBuf::from(path)))
        } else {
            Err(format!(
                "unknown store `{s}`: use postgres://user:password@host:port/database for a shared \
                 PostgreSQL, or sqlite:PATH for a SQLite file (leave --store out for the data folder's)"
            ))
        }
    }

    /// Whether many processes may share this store (only then may a server run without its own workers,
    /// or beside others).
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }
}

/// An open store of either kind.
#[derive(Clone)]
pub enum Store {
    /// The embedded SQLite file.
    Sqlite(SqliteStore),
    /// A shared PostgreSQL database.
    Postgres(PgStore),
}

impl Store {
    /// Opens the store `url` names; `data_db` is the data folder's SQLite file, for [`StoreUrl::DataDir`].
    pub async fn open(url: &StoreUrl, data_db: &Path) -> StoreResult<Self> {
        Ok(match url {
            StoreUrl::DataDir => Self::Sqlite(SqliteStore::open(data_db).await?),
            StoreUrl::Sqlite(path) => Self::Sqlite(SqliteStore::open(path).await?),
            StoreUrl::Postgres(url) => Self::Postgres(PgStore::open(url).await?),
        })
    }
}

/// Forwards a call to whichever store this is.
macro_rules! each {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call.await,
            Store::Postgres($s) => $call.await,
        }
    };
}

impl JobStore for Store {
    fn is_shared(&self) -> bool {
        match self {
            Store::Sqlite(s) => s.is_shared(),
            Store::Postgres(s) => s.is_shared(),
        }
    }
    async fn register_worker(
        &self,
        worker: &str,
        models: &[(String, String)],
        alive_until_ms: i64,
    ) -> StoreResult<()> {
        each!(self, s => s.register_worker(worker, models, alive_until_ms))
    }
    async fn unregister_worker(&self, worker: &str) -> StoreResult<()> {
        each!(self, s => s.unregister_worker(worker))
    }
    async fn registered_models(&self, now_ms: i64) -> StoreResult<Vec<Registered>> {
        each!(self, s => s.registered_models(now_ms))
    }
    async fn prune_events(&self, before_ms: i64) -> StoreResult<u64> {
        each!(self, s => s.prune_events(before_ms))
    }
    async fn insert(&self, job: &Job, max_unfinished: u32) -> StoreResult<Inserted> {
        each!(self, s => s.insert(job, max_unfinished))
    }
    async fn get(&self, id: &str) -> StoreResult<Option<Job>> {
        each!(self, s => s.get(id))
    }
    async fn list(
        &self,
        owner: &str,
        kind: crate::job::Kind,
        after: Option<&str>,
        limit: u32,
        order: Order,
    ) -> StoreResult<(Vec<Job>, bool)> {
        each!(self, s => s.list(owner, kind, after, limit, order))
    }
    async fn claim_next(&self, models: &[&str], lease: Duration) -> StoreResult<Option<Job>> {
        each!(self, s => s.claim_next(models, lease))
    }
    async fn set_progress(
        &self,
        id: &str,
        attempt: u32,
        progress: u8,
        lease: Duration,
    ) -> StoreResult<bool> {
        each!(self, s => s.set_progress(id, attempt, progress, lease))
    }
    async fn renew(&self, id: &str, attempt: u32, lease: Duration) -> StoreResult<bool> {
        each!(self, s => s.renew(id, attempt, lease))
    }
    async fn complete(
        &self,
        id: &str,
        attempt: u32,
        completed_at: i64,
        expires_at: i64,
        event: Option<&OutboxEvent>,
    ) -> StoreResult<bool> {
        each!(self, s => s.complete(id, attempt, completed_at, expires_at, event))
    }
    async fn fail(
        &self,
        id: &str,
        attempt: u32,
        error: &JobError,
        at: i64,
        expires_at: i64,
        event: Option<&OutboxEvent>,
    ) -> StoreResult<bool> {
        each!(self, s => s.fail(id, attempt, error, at, expires_at, event))
    }
    async fn due_events(&self, now_ms: i64, limit: u32) -> StoreResult<Vec<OutboxEvent>> {
        each!(self, s => s.due_events(now_ms, limit))
    }
    async fn forget_event(&self, event_id: &str) -> StoreResult<()> {
        each!(self, s => s.forget_event(event_id))
    }
    async fn retry_event(&self, event_id: &str, attempts: u32, next_ms: i64) -> StoreResult<()> {
        each!(self, s => s.retry_event(event_id, attempts, next_ms))
    }
    async fn requeue(&self, id: &str, attempt: u32) -> StoreResult<bool> {
        each!(self, s => s.requeue(id, attempt))
    }
    async fn delete(&self, id: &str) -> StoreResult<bool> {
        each!(self, s => s.delete(id))
    }
    async fn expired(&self, now: i64) -> StoreResult<Vec<String>> {
        each!(self, s => s.expired(now))
    }
}

#[cfg(test)]
mod tests {
    use super::StoreUrl;

    #[test]
    fn store_urls() {
        assert_eq!(
            StoreUrl::parse("postgres://u:p@h/db").unwrap(),
            StoreUrl::Postgres("postgres://u:p@h/db".into())
        );
        assert!(StoreUrl::parse("postgresql://h/db").unwrap().is_shared());
        assert_eq!(
            StoreUrl::parse("sqlite:/tmp/j.db").unwrap(),
            StoreUrl::Sqlite("/tmp/j.db".into())
        );
        assert_eq!(
            StoreUrl::parse("sqlite:///tmp/j.db").unwrap(),
            StoreUrl::Sqlite("/tmp/j.db".into())
        );
        assert!(StoreUrl::parse("sqlite:")
            .unwrap_err()
            .contains("file path"));
        let e = StoreUrl::parse("mysql://h/db").unwrap_err();
        assert!(
            e.contains("unknown store `mysql://h/db`") && e.contains("postgres://"),
            "{e}"
        );
    }
}
