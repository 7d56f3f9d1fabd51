//! The embedded job store: one SQLite file in WAL mode (readers never wait for the writer), synchronous=NORMAL
//! (a committed job survives the process being killed; only a power cut can lose the last commits).
//!
//! One server process owns a data folder (the server holds a lock file), so jobs found `in_progress` at start
//! were abandoned by a dead process and go back to the queue.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::Row;

use super::{Inserted, JobStore, Order, OutboxEvent, StoreResult};
use crate::error::StoreError;
use crate::job::{Job, JobError, JobStatus};

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
    attempts     INTEGER NOT NULL DEFAULT 0
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
        let read = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts.read_only(true))
            .await?;
        Ok(Self { read, write })
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

fn row_to_job(row: &SqliteRow) -> StoreResult<Job> {
    let id: String = row.try_get("id")?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("job {id}: {what}"));
    let params: String = row.try_get("params")?;
    let status: String = row.try_get("status")?;
    let error: Option<String> = row.try_get("error")?;
    Ok(Job {
        owner: row.try_get("owner")?,
        model: row.try_get("model")?,
        params: serde_json::from_str(&params).map_err(|e| corrupt(&format!("params: {e}")))?,
        status: JobStatus::parse(&status).ok_or_else(|| corrupt(&format!("status `{status}`")))?,
        progress: row.try_get::<i64, _>("progress")?.clamp(0, 100) as u8,
        created_at: row.try_get("created_at")?,
        completed_at: row.try_get("completed_at")?,
        expires_at: row.try_get("expires_at")?,
        error: error
            .map(|e| serde_json::from_str(&e).map_err(|x| corrupt(&format!("error: {x}"))))
            .transpose()?,
        remixed_from: row.try_get("remixed_from")?,
        attempts: row.try_get::<i64, _>("attempts")?.max(0) as u32,
        id,
    })
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
            .map(row_to_job)
            .transpose()
    }

    async fn list(
        &self,
        owner: &str,
        after: Option<&str>,
        limit: u32,
        order: Order,
    ) -> StoreResult<(Vec<Job>, bool)> {
        // The cursor is the job's insertion sequence; a missing `after` starts from either end.
        let (cmp, dir, start) = match order {
            Order::Asc => (">", "ASC", i64::MIN),
            Order::Desc => ("<", "DESC", i64::MAX),
        };
        let sql = format!(
            "SELECT * FROM jobs WHERE owner = ?1 AND seq {cmp} COALESCE(
                 (SELECT seq FROM jobs WHERE id = ?2 AND owner = ?1), ?3)
             ORDER BY seq {dir} LIMIT ?4"
        );
        let rows = sqlx::query(&sql)
            .bind(owner)
            .bind(after)
            .bind(start)
            .bind(limit as i64 + 1)
            .fetch_all(&self.read)
            .await?;
        let mut jobs = rows
            .iter()
            .map(row_to_job)
            .collect::<StoreResult<Vec<_>>>()?;
        let more = jobs.len() > limit as usize;
        jobs.truncate(limit as usize);
        Ok((jobs, more))
    }

    async fn claim_next(&self) -> StoreResult<Option<Job>> {
        sqlx::query(
            "UPDATE jobs SET status = 'in_progress', progress = 0, started_at = ?1, attempts = attempts + 1
             WHERE seq = (SELECT seq FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1)
             RETURNING *",
        )
        .bind(crate::job::now())
        .fetch_optional(&self.write)
        .await?
        .as_ref()
        .map(row_to_job)
        .transpose()
    }

    async fn set_progress(&self, id: &str, progress: u8) -> StoreResult<bool> {
        let done =
            sqlx::query("UPDATE jobs SET progress = ?2 WHERE id = ?1 AND status = 'in_progress'")
                .bind(id)
                .bind(progress as i64)
                .execute(&self.write)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn complete(
        &self,
        id: &str,
        completed_at: i64,
        expires_at: i64,
        event: Option<&OutboxEvent>,
    ) -> StoreResult<bool> {
        let mut tx = self.write.begin().await?;
        let done = sqlx::query(
            "UPDATE jobs SET status = 'completed', progress = 100, completed_at = ?2, expires_at = ?3
             WHERE id = ?1 AND status = 'in_progress'",
        )
        .bind(id)
        .bind(completed_at)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        finish_with_event(tx, done.rows_affected() == 1, event).await
    }

    async fn fail(
        &self,
        id: &str,
        error: &JobError,
        at: i64,
        expires_at: i64,
        event: Option<&OutboxEvent>,
    ) -> StoreResult<bool> {
        let error = serde_json::to_string(error)
            .map_err(|e| StoreError::Corrupt(format!("error does not serialise: {e}")))?;
        let mut tx = self.write.begin().await?;
        let done = sqlx::query(
            "UPDATE jobs SET status = 'failed', completed_at = ?2, expires_at = ?3, error = ?4
             WHERE id = ?1 AND status = 'in_progress'",
        )
        .bind(id)
        .bind(at)
        .bind(expires_at)
        .bind(error)
        .execute(&mut *tx)
        .await?;
        finish_with_event(tx, done.rows_affected() == 1, event).await
    }

    async fn due_events(&self, now_ms: i64, limit: u32) -> StoreResult<Vec<OutboxEvent>> {
        let rows = sqlx::query(
            "SELECT event_id, body, attempts FROM outbox WHERE next_ms <= ?1 ORDER BY next_ms, seq LIMIT ?2",
        )
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxEvent {
                    id: r.try_get("event_id")?,
                    body: r.try_get("body")?,
                    attempts: r.try_get::<i64, _>("attempts")? as u32,
                })
            })
            .collect()
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

    async fn requeue(&self, id: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE jobs SET status = 'queued', progress = 0 WHERE id = ?1 AND status = 'in_progress'",
        )
        .bind(id)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn requeue_abandoned(&self) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE jobs SET status = 'queued', progress = 0 WHERE status = 'in_progress'",
        )
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected())
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
