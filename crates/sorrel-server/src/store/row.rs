//! Reading a job or an outbox event from either backend's rows: both stores use the same columns, with
//! every integer a 64-bit one, so one reader serves both.

use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{OutboxEvent, StoreResult};
use crate::error::StoreError;
use crate::job::{Job, JobStatus};

/// The column reads a job needs, for both backends' rows.
pub(super) trait Columns {
    /// A text column.
    fn text(&self, col: &str) -> StoreResult<Option<String>>;
    /// A 64-bit integer column.
    fn int(&self, col: &str) -> StoreResult<Option<i64>>;
}

macro_rules! columns_for {
    ($row:ty) => {
        impl Columns for $row {
            fn text(&self, col: &str) -> StoreResult<Option<String>> {
                Ok(self.try_get(col)?)
            }
            fn int(&self, col: &str) -> StoreResult<Option<i64>> {
                Ok(self.try_get(col)?)
            }
        }
    };
}
columns_for!(SqliteRow);
columns_for!(PgRow);

fn required<T>(value: Option<T>, what: &str) -> StoreResult<T> {
    value.ok_or_else(|| StoreError::Corrupt(format!("a job row has no {what}")))
}

/// The job in `row` (a `SELECT *` or `RETURNING *` of the jobs table).
pub(super) fn job(row: &impl Columns) -> StoreResult<Job> {
    let id = required(row.text("id")?, "id")?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("job {id}: {what}"));
    let params = required(row.text("params")?, "params")?;
    let status = required(row.text("status")?, "status")?;
    Ok(Job {
        owner: required(row.text("owner")?, "owner")?,
        model: required(row.text("model")?, "model")?,
        params: serde_json::from_str(&params).map_err(|e| corrupt(&format!("params: {e}")))?,
        status: JobStatus::parse(&status).ok_or_else(|| corrupt(&format!("status `{status}`")))?,
        progress: row.int("progress")?.unwrap_or(0).clamp(0, 100) as u8,
        created_at: required(row.int("created_at")?, "created_at")?,
        completed_at: row.int("completed_at")?,
        expires_at: row.int("expires_at")?,
        error: row
            .text("error")?
            .map(|e| serde_json::from_str(&e).map_err(|x| corrupt(&format!("error: {x}"))))
            .transpose()?,
        remixed_from: row.text("remixed_from")?,
        attempts: row
            .int("attempts")?
            .unwrap_or(0)
            .clamp(0, i64::from(u32::MAX)) as u32,
        id,
    })
}

/// The outbox event in `row` (its `event_id`, `body` and `attempts`).
pub(super) fn event(row: &impl Columns) -> StoreResult<OutboxEvent> {
    Ok(OutboxEvent {
        id: required(row.text("event_id")?, "event id")?,
        body: required(row.text("body")?, "event body")?,
        attempts: row
            .int("attempts")?
            .unwrap_or(0)
            .clamp(0, i64::from(u32::MAX)) as u32,
    })
}
