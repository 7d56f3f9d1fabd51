//! The durable job store, behind a small trait with two backends: the embedded SQLite file (one server
//! process) and PostgreSQL (many workers on many machines, claiming with `FOR UPDATE SKIP LOCKED`).
//!
//! A worker holds a claimed job under a lease it renews while it works; a job whose lease ran out (its worker
//! died) can be claimed again. Every state change is one conditional update on the job's id *and* attempt
//! number, so a worker that lost its job (deleted, re-queued, or claimed again by another worker after its
//! lease ran out) finds out from the update's result instead of overwriting someone else's state.

mod any;
pub(crate) mod postgres;
mod row;
mod sqlite;

use std::future::Future;
use std::time::Duration;

pub use any::{Store, StoreUrl};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use crate::error::StoreError;
use crate::job::{Job, JobError};

/// How long an event handed out by [`JobStore::due_events`] is held before another node may try it.
pub const EVENT_HOLD_MS: i64 = 60_000;

/// Unix milliseconds `lease` from now.
pub(crate) fn lease_end(lease: Duration) -> i64 {
    crate::job::now_ms() + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2)
}

/// Result with [`StoreError`].
pub type StoreResult<T> = std::result::Result<T, StoreError>;

/// Sort order of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Oldest first.
    Asc,
    /// Newest first (OpenAI's default).
    Desc,
}

/// Outcome of [`JobStore::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// The job is queued.
    Yes,
    /// The owner already has this many unfinished jobs.
    OverLimit,
}

/// A webhook event waiting in the store's outbox: kept until it is delivered (or its attempts run out), so a
/// restart neither loses it nor changes its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// The event id, sent as `webhook-id` on every attempt.
    pub id: String,
    /// The JSON body, fixed when the event was recorded.
    pub body: String,
    /// Attempts made so far.
    pub attempts: u32,
}

/// A model that a worker of a shared store published (see [`JobStore::register_worker`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The API name.
    pub name: String,
    /// Its description, `sorrel_pipeline::ModelInfo` as JSON: what an API node checks requests against.
    pub info: String,
    /// Whether a worker that runs it is alive now (its registration was renewed in time).
    pub live: bool,
}

/// A job store. Implementations are shared by the HTTP handlers and the workers.
pub trait JobStore: Send + Sync + 'static {
    /// Whether processes on other machines share this store: then workers publish their models in it
    /// ([`JobStore::register_worker`]), and every job's end is recorded for webhooks whether or not this
    /// process delivers them (another node may).
    fn is_shared(&self) -> bool {
        false
    }

    /// Publishes that worker process `worker` runs `models` (API name, description JSON) and is alive until
    /// `alive_until_ms`; called again before then to stay alive. A store one process owns needs no registry:
    /// the default does nothing.
    fn register_worker(
        &self,
        worker: &str,
        models: &[(String, String)],
        alive_until_ms: i64,
    ) -> impl Future<Output = StoreResult<()>> + Send {
        let _ = (worker, models, alive_until_ms);
        async { Ok(()) }
    }

    /// Withdraws worker `worker` (it is stopping); its models stay known, and jobs for them wait.
    fn unregister_worker(&self, worker: &str) -> impl Future<Output = StoreResult<()>> + Send {
        let _ = worker;
        async { Ok(()) }
    }

    /// Every model any worker ever published, in the order they were first published, each marked live
    /// if a worker that runs it is alive at `now_ms`.
    fn registered_models(
        &self,
        now_ms: i64,
    ) -> impl Future<Output = StoreResult<Vec<Registered>>> + Send {
        let _ = now_ms;
        async { Ok(Vec::new()) }
    }

    /// Drops outbox events recorded before `before_ms` that no node delivered: in a shared store every job's
    /// end is recorded, and a cluster without webhooks must not keep them forever. Returns how many.
    fn prune_events(&self, before_ms: i64) -> impl Future<Output = StoreResult<u64>> + Send {
        let _ = before_ms;
        async { Ok(0) }
    }

    /// Queues `job` unless its owner already has `max_unfinished` queued or running jobs.
    fn insert(
        &self,
        job: &Job,
        max_unfinished: u32,
    ) -> impl Future<Output = StoreResult<Inserted>> + Send;

    /// The job with this id, whoever owns it.
    fn get(&self, id: &str) -> impl Future<Output = StoreResult<Option<Job>>> + Send;

    /// One page of `owner`'s jobs of `kind` after the job `after` (exclusive) in `order`, and whether more
    /// follow.
    fn list(
        &self,
        owner: &str,
        kind: crate::job::Kind,
        after: Option<&str>,
        limit: u32,
        order: Order,
    ) -> impl Future<Output = StoreResult<(Vec<Job>, bool)>> + Send;

    /// Takes the oldest job for one of `models` that is queued, or running under a lease that ran out; marks
    /// it in progress under a lease of `lease` and counts the attempt (the returned job's `attempts` is the
    /// claim's number, which every later update names). `None` when there is none.
    fn claim_next(
        &self,
        models: &[&str],
        lease: Duration,
    ) -> impl Future<Output = StoreResult<Option<Job>>> + Send;

    /// Records progress of attempt `attempt` of a running job and renews its lease for `lease`. `false`
    /// means the job is no longer this claim's to run (deleted, or claimed again after the lease ran out):
    /// the worker must stop.
    fn set_progress(
        &self,
        id: &str,
        attempt: u32,
        progress: u8,
        lease: Duration,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Renews the lease of attempt `attempt` without recording progress (a step can outlast a lease);
    /// `false` as for [`JobStore::set_progress`].
    fn renew(
        &self,
        id: &str,
        attempt: u32,
        lease: Duration,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Marks attempt `attempt` of a running job completed and, in the same transaction, records `event` (its
    /// webhook) in the outbox. `false` if it is no longer this claim's (and then no event is recorded).
    fn complete(
        &self,
        id: &str,
        attempt: u32,
        completed_at: i64,
        expires_at: i64,
        event: Option<&OutboxEvent>,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Marks attempt `attempt` of a running job failed, recording `event` as [`JobStore::complete`] does.
    /// `false` if it is no longer this claim's.
    #[allow(clippy::too_many_arguments)]
    fn fail(
        &self,
        id: &str,
        attempt: u32,
        error: &JobError,
        at: i64,
        expires_at: i64,
        event: Option<&OutboxEvent>,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Outbox events due for a delivery attempt at `now_ms` (Unix milliseconds), oldest first. A store that
    /// nodes share holds each for this caller for [`EVENT_HOLD_MS`] (its next attempt moved on), so two
    /// nodes do not deliver it at once; [`JobStore::forget_event`] or [`JobStore::retry_event`] settles it.
    /// A node killed mid-attempt thus delays that event's next attempt by the hold.
    fn due_events(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> impl Future<Output = StoreResult<Vec<OutboxEvent>>> + Send;

    /// Removes an event from the outbox: delivered, or given up on.
    fn forget_event(&self, event_id: &str) -> impl Future<Output = StoreResult<()>> + Send;

    /// Records a failed attempt: `attempts` made so far, the next one due at `next_ms`.
    fn retry_event(
        &self,
        event_id: &str,
        attempts: u32,
        next_ms: i64,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Puts attempt `attempt` of a running job back in the queue (its worker is shutting down).
    fn requeue(&self, id: &str, attempt: u32) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Removes a job, whatever its state; `false` if there was none.
    fn delete(&self, id: &str) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Ids of finished jobs whose files expire at or before `now`.
    fn expired(&self, now: i64) -> impl Future<Output = StoreResult<Vec<String>>> + Send;
}
