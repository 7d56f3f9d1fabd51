//! The durable job store, behind a small trait so a second backend (PostgreSQL, for many workers on many
//! machines, claiming with `FOR UPDATE SKIP LOCKED`) can sit beside the embedded SQLite one.
//!
//! Every state change is one conditional update, so a worker that lost its job (deleted, or re-queued after a
//! restart) finds out from the update's result instead of overwriting someone else's state.

mod sqlite;

use std::future::Future;

pub use sqlite::SqliteStore;

use crate::error::StoreError;
use crate::job::{Job, JobError};

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

/// A job store. Implementations are shared by the HTTP handlers and the workers.
pub trait JobStore: Send + Sync + 'static {
    /// Queues `job` unless its owner already has `max_unfinished` queued or running jobs.
    fn insert(
        &self,
        job: &Job,
        max_unfinished: u32,
    ) -> impl Future<Output = StoreResult<Inserted>> + Send;

    /// The job with this id, whoever owns it.
    fn get(&self, id: &str) -> impl Future<Output = StoreResult<Option<Job>>> + Send;

    /// One page of `owner`'s jobs after the job `after` (exclusive) in `order`, and whether more follow.
    fn list(
        &self,
        owner: &str,
        after: Option<&str>,
        limit: u32,
        order: Order,
    ) -> impl Future<Output = StoreResult<(Vec<Job>, bool)>> + Send;

    /// Takes the oldest queued job for a worker, marking it in progress, or `None` when the queue is empty.
    fn claim_next(&self) -> impl Future<Output = StoreResult<Option<Job>>> + Send;

    /// Records progress of a running job. `false` means the job is no longer this worker's to run
    /// (deleted meanwhile): the worker must stop.
    fn set_progress(
        &self,
        id: &str,
        progress: u8,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Marks a running job completed and, in the same transaction, records `event` (its webhook) in the
    /// outbox. `false` if it was deleted meanwhile (and then no event is recorded).
    fn complete(
        &self,
        id: &str,
        completed_at: i64,
        expires_at: i64,
        event: Option<&OutboxEvent>,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Marks a running job failed, recording `event` as [`JobStore::complete`] does. `false` if it was
    /// deleted meanwhile.
    fn fail(
        &self,
        id: &str,
        error: &JobError,
        at: i64,
        expires_at: i64,
        event: Option<&OutboxEvent>,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Outbox events due for a delivery attempt at `now_ms` (Unix milliseconds), oldest first.
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

    /// Puts a running job back in the queue (the server is shutting down while it runs).
    fn requeue(&self, id: &str) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Puts every job left running by a previous process back in the queue; returns how many.
    fn requeue_abandoned(&self) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Removes a job, whatever its state; `false` if there was none.
    fn delete(&self, id: &str) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Ids of finished jobs whose files expire at or before `now`.
    fn expired(&self, now: i64) -> impl Future<Output = StoreResult<Vec<String>>> + Send;
}
