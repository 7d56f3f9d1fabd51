//! Jobs in PostgreSQL, shared by every API node and worker of a cluster.
//!
//! Workers claim with `FOR UPDATE SKIP LOCKED`, so two never take the same job and none waits on another's
//! claim; a claim is held under a lease its worker renews, and a job whose lease ran out is claimed again by
//! any worker that has its model. Every change to a job sends `NOTIFY sorrel_jobs` with its id (event
//! streams on every node follow jobs run elsewhere, and a `DELETE` on one node reaches the worker on
//! another at its next progress report or lease renewal), and every newly queued job sends
//! `NOTIFY sorrel_queue` so idle workers wake at once. The schema is versioned and migrated at start under an
//! advisory lock, so nodes starting together do not race.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};

use super::{
    lease_end, row, Inserted, JobStore, Order, OutboxEvent, Registered, StoreResult, EVENT_HOLD_MS,
};
use crate::error::StoreError;
use crate::job::{Job, JobError};

/// Channel of job changes; the payload is the job's id.
pub const JOBS_CHANNEL: &str = "sorrel_jobs";
/// Channel of newly queued jobs; the payload is the model's name.
pub const QUEUE_CHANNEL: &str = "sorrel_queue";

/// Schema versions in order: a database at version `n` gets `MIGRATIONS[n..]`. Append; never edit one
/// that has shipped.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE sorrel_jobs (
    seq            BIGSERIAL PRIMARY KEY,
    id             TEXT   NOT NULL UNIQUE,
    owner          TEXT   NOT NULL,
    model          TEXT   NOT NULL,
    params         TEXT   NOT NULL,
    status         TEXT   NOT NULL,
    progress       BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL,
    started_at     BIGINT,
    completed_at   BIGINT,
    expires_at     BIGINT,
    error          TEXT,
    remixed_from   TEXT,
    attempts       BIGINT NOT NULL DEFAULT 0,
    lease_until_ms BIGINT
);
CREATE INDEX sorrel_jobs_by_owner ON sorrel_jobs (owner, seq);
CREATE INDEX sorrel_jobs_by_status ON sorrel_jobs (status, seq);
CREATE INDEX sorrel_jobs_by_expiry ON sorrel_jobs (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE sorrel_outbox (
    seq      BIGSERIAL PRIMARY KEY,
    event_id TEXT   NOT NULL UNIQUE,
    body     TEXT   NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_ms  BIGINT NOT NULL
);
CREATE INDEX sorrel_outbox_by_due ON sorrel_outbox (next_ms, seq);
",
    "
CREATE TABLE sorrel_models (
    seq  BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    info TEXT NOT NULL
);
CREATE TABLE sorrel_workers (
    id             TEXT   PRIMARY KEY,
    models         TEXT   NOT NULL,
    alive_until_ms BIGINT NOT NULL
);
ALTER TABLE sorrel_outbox ADD COLUMN created_ms BIGINT NOT NULL
    DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT;
",
];

/// Jobs in a PostgreSQL database.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    url: String,
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`) and brings its schema up to date.
    pub async fn open(url: &str) -> StoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|e| StoreError::Connect {
                url: redact(url),
                message: e.to_string(),
            })?;
        migrate(&pool).await?;
        Ok(Self {
            pool,
            url: url.to_string(),
        })
    }

    /// A listener on [`JOBS_CHANNEL`] and [`QUEUE_CHANNEL`], on a connection of its own.
    pub async fn listen(&self) -> StoreResult<PgListener> {
        let mut listener = PgListener::connect(&self.url).await?;
        listener.listen_all([JOBS_CHANNEL, QUEUE_CHANNEL]).await?;
        Ok(listener)
    }
}

/// `url` with its password replaced, for messages and logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user_info = &url[scheme + 3..at];
            match user_info.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

async fn migrate(pool: &PgPool) -> StoreResult<()> {
    let mut tx = pool.begin().await?;
    // Held to the end of the transaction: a second node starting now waits here, then finds nothing to do.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('sorrel schema', 0))")
        .execute(&mut *tx)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS sorrel_schema (version BIGINT NOT NULL)")
        .execute(&mut *tx)
        .await?;
    let version: Option<i64> = sqlx::query_scalar("SELECT version FROM sorrel_schema")
        .fetch_optional(&mut *tx)
        .await?;
    let version = version.unwrap_or(0);
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::Incompatible(format!(
            "its schema is version {version}, newer than this sorrel knows ({known}); \
             upgrade sorrel on this node"
        )));
    }
    for migration in &MIGRATIONS[version as usize..] {
        sqlx::raw_sql(migration).execute(&mut *tx).await?;
    }
    sqlx::query("DELETE FROM sorrel_schema")
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO sorrel_schema (version) VALUES ($1)")
        .bind(known)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Records `event` in the outbox if the job's change took effect (`changed`), and commits both together, as
/// the SQLite store does.
async fn finish_with_event(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    changed: bool,
    event: Option<&OutboxEvent>,
) -> StoreResult<bool> {
    if let (true, Some(event)) = (changed, event) {
        sqlx::query(
            "INSERT INTO sorrel_outbox (event_id, body, attempts, next_ms) VALUES ($1, $2, 0, 0)",
        )
        .bind(&event.id)
        .bind(&event.body)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(changed)
}

impl JobStore for PgStore {
    fn is_shared(&self) -> bool {
        true
    }

    async fn register_worker(
        &self,
        worker: &str,
        models: &[(String, String)],
        alive_until_ms: i64,
    ) -> StoreResult<()> {
        let names: Vec<&str> = models.iter().map(|(name, _)| name.as_str()).collect();
        let names = serde_json::to_string(&names)
            .map_err(|e| StoreError::Corrupt(format!("model names do not serialise: {e}")))?;
        let mut tx = self.pool.begin().await?;
        for (name, info) in models {
            // The newest description wins: a model folder upgraded on one worker describes it for all.
            sqlx::query(
                "INSERT INTO sorrel_models (name, info) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET info = EXCLUDED.info
                 WHERE sorrel_models.info IS DISTINCT FROM EXCLUDED.info",
            )
            .bind(name)
            .bind(info)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO sorrel_workers (id, models, alive_until_ms) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET models = EXCLUDED.models,
                                            alive_until_ms = EXCLUDED.alive_until_ms",
        )
        .bind(worker)
        .bind(names)
        .bind(alive_until_ms)
        .execute(&mut *tx)
        .await?;
        // Workers killed without withdrawing leave a row; a day later nobody needs it.
        sqlx::query("DELETE FROM sorrel_workers WHERE alive_until_ms < $1")
            .bind(crate::job::now_ms() - 86_400_000)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn unregister_worker(&self, worker: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM sorrel_workers WHERE id = $1")
            .bind(worker)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn registered_models(&self, now_ms: i64) -> StoreResult<Vec<Registered>> {
        let models: Vec<(String, String)> =
            sqlx::query_as("SELECT name, info FROM sorrel_models ORDER BY seq")
                .fetch_all(&self.pool)
                .await?;
        let live: Vec<String> =
            sqlx::query_scalar("SELECT models FROM sorrel_workers WHERE alive_until_ms > $1")
                .bind(now_ms)
                .fetch_all(&self.pool)
                .await?;
        let mut running = std::collections::HashSet::new();
        for names in &live {
            let names: Vec<String> = serde_json::from_str(names)
                .map_err(|e| StoreError::Corrupt(format!("a worker's model list: {e}")))?;
            running.extend(names);
        }
        Ok(models
            .into_iter()
            .map(|(name, info)| Registered {
                live: running.contains(&name),
                name,
                info,
            })
            .collect())
    }

    async fn prune_events(&self, before_ms: i64) -> StoreResult<u64> {
        Ok(
            sqlx::query("DELETE FROM sorrel_outbox WHERE created_ms < $1")
                .bind(before_ms)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    async fn insert(&self, job: &Job, max_unfinished: u32) -> StoreResult<Inserted> {
        let params = serde_json::to_string(&job.params)
            .map_err(|e| StoreError::Corrupt(format!("params do not serialise: {e}")))?;
        let mut tx = self.pool.begin().await?;
        // Under READ COMMITTED two inserts for one owner could both count 99 and both insert; a lock per
        // owner makes the count and the insert one step.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 1))")
            .bind(&job.owner)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query(
            "INSERT INTO sorrel_jobs (id, owner, model, params, status, progress, created_at, remixed_from)
             SELECT $1, $2, $3, $4, 'queued', 0, $5, $6
             WHERE (SELECT COUNT(*) FROM sorrel_jobs
                    WHERE owner = $2 AND status IN ('queued', 'in_progress')) < $7",
        )
        .bind(&job.id)
        .bind(&job.owner)
        .bind(&job.model)
        .bind(params)
        .bind(job.created_at)
        .bind(&job.remixed_from)
        .bind(i64::from(max_unfinished))
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(Inserted::OverLimit);
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(QUEUE_CHANNEL)
            .bind(&job.model)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Inserted::Yes)
    }

    async fn get(&self, id: &str) -> StoreResult<Option<Job>> {
        sqlx::query("SELECT * FROM sorrel_jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
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
        let (sql, start) = row::list_sql("sorrel_jobs", kind, order, ["$1", "$2", "$3", "$4"]);
        let rows = sqlx::query(&sql)
            .bind(owner)
            .bind(after)
            .bind(start)
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.pool)
            .await?;
        let jobs = rows.iter().map(row::job).collect::<StoreResult<Vec<_>>>()?;
        Ok(row::page(jobs, limit))
    }

    async fn claim_next(&self, models: &[&str], lease: Duration) -> StoreResult<Option<Job>> {
        let row = sqlx::query(
            "WITH claimed AS (
                 UPDATE sorrel_jobs SET status = 'in_progress', progress = 0, started_at = $1,
                                        attempts = attempts + 1, lease_until_ms = $2
                 WHERE seq = (SELECT seq FROM sorrel_jobs
                              WHERE model = ANY($3)
                                AND (status = 'queued'
                                     OR (status = 'in_progress' AND lease_until_ms < $4))
                              ORDER BY seq LIMIT 1
                              FOR UPDATE SKIP LOCKED)
                 RETURNING *)
             SELECT claimed.*, pg_notify($5, claimed.id) FROM claimed",
        )
        .bind(crate::job::now())
        .bind(lease_end(lease))
        .bind(models)
        .bind(crate::job::now_ms())
        .bind(JOBS_CHANNEL)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(row::job).transpose()
    }

    async fn set_progress(
        &self,
        id: &str,
        attempt: u32,
        progress: u8,
        lease: Duration,
    ) -> StoreResult<bool> {
        let row = sqlx::query(
            "WITH changed AS (
                 UPDATE sorrel_jobs SET progress = $3, lease_until_ms = $4
                 WHERE id = $1 AND attempts = $2 AND status = 'in_progress'
                 RETURNING id)
             SELECT pg_notify($5, id) FROM changed",
        )
        .bind(id)
        .bind(i64::from(attempt))
        .bind(i64::from(progress))
        .bind(lease_end(lease))
        .bind(JOBS_CHANNEL)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    async fn renew(&self, id: &str, attempt: u32, lease: Duration) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE sorrel_jobs SET lease_until_ms = $3
             WHERE id = $1 AND attempts = $2 AND status = 'in_progress'",
        )
        .bind(id)
        .bind(i64::from(attempt))
        .bind(lease_end(lease))
        .execute(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "WITH changed AS (
                 UPDATE sorrel_jobs SET status = 'completed', progress = 100, completed_at = $3,
                                        expires_at = $4, lease_until_ms = NULL
                 WHERE id = $1 AND attempts = $2 AND status = 'in_progress'
                 RETURNING id)
             SELECT pg_notify($5, id) FROM changed",
        )
        .bind(id)
        .bind(i64::from(attempt))
        .bind(completed_at)
        .bind(expires_at)
        .bind(JOBS_CHANNEL)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
        finish_with_event(tx, changed, event).await
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
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "WITH changed AS (
                 UPDATE sorrel_jobs SET status = 'failed', completed_at = $3, expires_at = $4,
                                        error = $5, lease_until_ms = NULL
                 WHERE id = $1 AND attempts = $2 AND status = 'in_progress'
                 RETURNING id)
             SELECT pg_notify($6, id) FROM changed",
        )
        .bind(id)
        .bind(i64::from(attempt))
        .bind(at)
        .bind(expires_at)
        .bind(error)
        .bind(JOBS_CHANNEL)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
        finish_with_event(tx, changed, event).await
    }

    async fn due_events(&self, now_ms: i64, limit: u32) -> StoreResult<Vec<OutboxEvent>> {
        // Held for a minute by whoever takes it, so nodes do not deliver one event at once; if that node
        // dies, another delivers it when the hold ends (at least once, with the same id).
        let rows = sqlx::query(
            "UPDATE sorrel_outbox SET next_ms = $2
             WHERE seq IN (SELECT seq FROM sorrel_outbox WHERE next_ms <= $1
                           ORDER BY next_ms, seq LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING seq, event_id, body, attempts",
        )
        .bind(now_ms)
        .bind(now_ms + EVENT_HOLD_MS)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        row::oldest_first(&rows)
    }

    async fn forget_event(&self, event_id: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM sorrel_outbox WHERE event_id = $1")
            .bind(event_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn retry_event(&self, event_id: &str, attempts: u32, next_ms: i64) -> StoreResult<()> {
        sqlx::query("UPDATE sorrel_outbox SET attempts = $2, next_ms = $3 WHERE event_id = $1")
            .bind(event_id)
            .bind(i64::from(attempts))
            .bind(next_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn requeue(&self, id: &str, attempt: u32) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let model: Option<String> = sqlx::query_scalar(
            "UPDATE sorrel_jobs SET status = 'queued', progress = 0, lease_until_ms = NULL
             WHERE id = $1 AND attempts = $2 AND status = 'in_progress'
             RETURNING model",
        )
        .bind(id)
        .bind(i64::from(attempt))
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(model) = &model {
            for (channel, payload) in [(JOBS_CHANNEL, id), (QUEUE_CHANNEL, model.as_str())] {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(channel)
                    .bind(payload)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(model.is_some())
    }

    async fn delete(&self, id: &str) -> StoreResult<bool> {
        let row = sqlx::query(
            "WITH gone AS (DELETE FROM sorrel_jobs WHERE id = $1 RETURNING id)
             SELECT pg_notify($2, id) FROM gone",
        )
        .bind(id)
        .bind(JOBS_CHANNEL)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    async fn expired(&self, now: i64) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM sorrel_jobs WHERE expires_at IS NOT NULL AND expires_at <= $1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_kept_out_of_messages() {
        assert_eq!(
            redact("postgres://sorrel:hunter2@db:5432/jobs"),
            "postgres://sorrel:***@db:5432/jobs"
        );
        assert_eq!(redact("postgres://db/jobs"), "postgres://db/jobs");
        assert_eq!(redact("postgres://me@db/jobs"), "postgres://me@db/jobs");
    }
}
