//! The embedded job store: one SQLite file in WAL mode (readers never wait for the writer), synchronous=NORMAL
//! (a committed job survives the process being killed; only a power cut can lose the last commits).
//!
//! One server process owns a data folder (the server holds a lock file), so jobs found `in_progress` at start
//! were abandoned by a dead process and go back to the queue at once ([`SqliteStore::requeue_abandoned`])
//! rather than when their leases run out.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;

use super::{lease_end, row, Inserted, JobStore, Order, OutboxEvent, StoreResult};
use crate::error::StoreError;
use crate::job::{Job, JobError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL UNIQUE,
    owner        TEXT    NOT NULL,
    model        TEXT    NOT NULL,
    params       TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    progress     INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    started_at   INTEGER,
    completed_at INTEGER,
    expires_at   INTEGER,
    error        TEXT,
    remixed_from TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    lease_until_ms INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, seq);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS outbox (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT    NOT NULL UNIQUE,
    body     TEXT    NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ms  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_due ON outbox (next_ms, seq);
";

/// Jobs in a SQLite database file.
///
/// Reads share a pool of connections; writes go through a single connection. SQLite admits one writer at a
/// time anyway, and queueing writers in the pool (first come, first served) avoids SQLite's busy handler,
/// whose sleeps put a one-second tail on inserts when 200 clients create videos at once.
#[derive(Clone)]
pub struct SqliteStore {
    read: SqlitePool,
    write: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub async fn open(path: &Path) -> StoreResult<Self> {
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await?;
        sqlx::raw_sql(SCHEMA).execute(&write).await?;
        // Databases made before leases existed gain the column (SQLite has no ADD COLUMN IF NOT EXISTS).
        let has_lease: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pragma_table_info('jobs') WHERE name = 'lease_until_ms'",
        )
        .fetch_one(&write)
        .await?;
        if has_lease == 0 {
            sqlx::query("ALTER TABLE jobs ADD COLUMN lease_until_ms INTEGER")
                .execute(&write)
                .await?;
        }
        let read = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts.read_only(true))
            .await?;
        Ok(Self { read, write })
    }

    /// Puts every job left running by a previous process back in the queue; returns how many. Only for a
    /// store one process owns: with many, the others' running jobs would be taken from them.
    pub async fn requeue_abandoned(&self) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE jobs SET status = 'queued', progress = 0, lease_until_ms = NULL
             WHERE status = 'in_progress'",
        )
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected())
    }
}

/// Records `event` in the outbox if the job's change took effect (`changed`), and commits both together: a
/// finished job always has its event, and a deleted one never gets one.
async fn finish_with_event(
    mut tx: sqlx::Transaction<'_, sqlx::Sqlite>,
    changed: bool,
    event: Option<&OutboxEvent>,
) -> StoreResult<bool> {
    if let (true, Some(event)) = (changed, event) {
        sqlx::query("INSERT INTO outbox (event_id, body, attempts, next_ms) VALUES (?1, ?2, 0, 0)")
            .bind(&event.id)
            .bind(&event.body)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(changed)
}

impl JobStore for SqliteStore {
    async fn insert(&self, job: &Job, max_unfinished: u32) -> StoreResult<Inserted> {
        let params = serde_json::to_string(&job.params)
            .map_err(|e| StoreError::Corrupt(format!("params do not serialise: {e}")))?;
        // One statement, so the limit check and the insert cannot interleave with another request's.
        let done = sqlx::query(
            "INSERT INTO jobs (id, owner, model, params, status, progress, created_at, remixed_from)
             SELECT ?1, ?2, ?3, ?4, 'queued', 0, ?5, ?6
             WHERE (SELECT COUNT(*) FROM jobs WHERE owner = ?2 AND status IN ('queued', 'in_progress')) < ?7",
        )
        .bind(&job.id)
        .bind(&job.owner)
        .bind(&job.model)
        .bind(params)
        .bind(job.created_at)
        .bind(&job.remixed_from)
        .bind(max_unfinished as i64)
        .execute(&self.write)
        .await?;
        Ok(if done.rows_affected() == 1 {
            Inserted::Yes
        } else {
            Inserted::OverLimit
        })
    }

    async fn get(&self, id: &str) -> StoreResult<Option<Job>> {
        sqlx::query("SELECT * FROM jobs WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?
            .as_ref()
            .map(row::job)
            .transpose()
    }

    async fn list(
        &self,
        owner: &str,
        kind: crate::job::Kind,
        after: Option<&str>,
        limit: u32,
        order: Order,
    ) -> StoreResult<(Vec<Job>, bool)> {
        // The cursor is the job's insertion sequence; a missing `after` starts from either end.
        let (sql, start) = row::list_sql("jobs", kind, order, ["?1", "?2", "?3", "?4"]);
        let rows = sqlx::query(&sql)
            .bind(owner)
            .bind(after)
            .bind(start)
            .bind(limit as i64 + 1)
            .fetch_all(&self.read)
            .await?;
        let jobs = rows.iter().map(row::job).collect::<StoreResult<Vec<_>>>()?;
        Ok(row::page(jobs, limit))
    }

    async fn claim_next(&self, models: &[&str], lease: Duration) -> StoreResult<Option<Job>> {
        let models = serde_json::to_string(models)
            .map_err(|e| StoreError::Corrupt(format!("model names do not serialise: {e}")))?;
        let now_ms = crate::job::now_ms();
        sqlx::query(
            "UPDATE jobs SET status = 'in_progress', progress = 0, started_at = ?1,
                             attempts = attempts + 1, lease_until_ms = ?2
             WHERE seq = (SELECT seq FROM jobs
                          WHERE model IN (SELECT value FROM json_each(?3))
                            AND (status = 'queued' OR (status = 'in_progress' AND lease_until_ms < ?4))
                          ORDER BY seq LIMIT 1)
             RETURNING *",
        )
        .bind(crate::job::now())
        .bind(lease_end(lease))
        .bind(models)
        .bind(now_ms)
        .fetch_optional(&self.write)
        .await?
        .as_ref()
        .map(row::job)
        .transpose()
    }

    async fn set_progress(
        &self,
        id: &str,
        attempt: u32,
        progress: u8,
        lease: Duration,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE jobs SET progress = ?3, lease_until_ms = ?4
             WHERE id = ?1 AND attempts = ?2 AND status = 'in_progress'",
        )
        .bind(id)
        .bind(attempt)
        .bind(progress as i64)
        .bind(lease_end(lease))
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn renew(&self, id: &str, attempt: u32, lease: Duration) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE jobs SET lease_until_ms = ?3
             WHERE id = ?1 AND attempts = ?2 AND status = 'in_progress'",
        )
        .bind(id)
        .bind(attempt)
        .bind(lease_end(lease))
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn complete(
        &self,
        id: &str,
        attempt: u32,
        completed_at: i64,
        expires_at: i64,
        event: Option<&OutboxEvent>,
    ) -> StoreResult<bool> {
        let mut tx = self.write.begin().await?;
        let done = sqlx::query(
            "UPDATE jobs SET status = 'completed', progress = 100, completed_at = ?2, expires_at = ?3,
                             lease_until_ms = NULL
             WHERE id = ?1 AND attempts = ?4 AND status = 'in_progress'",
        )
        .bind(id)
        .bind(completed_at)
        .bind(expires_at)
        .bind(attempt)
        .execute(&mut *tx)
        .await?;
        finish_with_event(tx, done.rows_affected() == 1, event).await
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
        let error = serde_json::to_string(error)
            .map_err(|e| StoreError::Corrupt(format!("error does not serialise: {e}")))?;
        let mut tx = self.write.begin().await?;
        let done = sqlx::query(
            "UPDATE jobs SET status = 'failed', completed_at = ?2, expires_at = ?3, error = ?4,
                             lease_until_ms = NULL
             WHERE id = ?1 AND attempts = ?5 AND status = 'in_progress'",
        )
        .bind(id)
        .bind(at)
        .bind(expires_at)
        .bind(error)
        .bind(attempt)
        .execute(&mut *tx)
        .await?;
        finish_with_event(tx, done.rows_affected() == 1, event).await
    }

    async fn due_events(&self, now_ms: i64, limit: u32) -> StoreResult<Vec<OutboxEvent>> {
        // One server owns this store, so nothing needs holding; an attempt cut short by a crash is simply
        // made again at the next start.
        let rows = sqlx::query(
            "SELECT event_id, body, attempts FROM outbox WHERE next_ms <= ?1 ORDER BY next_ms, seq LIMIT ?2",
        )
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(row::event).collect()
    }

    async fn forget_event(&self, event_id: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM outbox WHERE event_id = ?1")
            .bind(event_id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn retry_event(&self, event_id: &str, attempts: u32, next_ms: i64) -> StoreResult<()> {
        sqlx::query("UPDATE outbox SET attempts = ?2, next_ms = ?3 WHERE event_id = ?1")
            .bind(event_id)
            .bind(attempts)
            .bind(next_ms)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn requeue(&self, id: &str, attempt: u32) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE jobs SET status = 'queued', progress = 0, lease_until_ms = NULL
             WHERE id = ?1 AND attempts = ?2 AND status = 'in_progress'",
        )
        .bind(id)
        .bind(attempt)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete(&self, id: &str) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM jobs WHERE id = ?1")
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn expired(&self, now: i64) -> StoreResult<Vec<String>> {
        let rows =
            sqlx::query("SELECT id FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= ?1")
                .bind(now)
                .fetch_all(&self.read)
                .await?;
        rows.iter()
            .map(|r| r.try_get("id").map_err(StoreError::from))
            .collect()
    }
}
