//! Reading a job or an outbox event from either backend's rows: both stores use the same columns, with
//! every integer a 64-bit one, so one reader serves both.

use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{Order, OutboxEvent, StoreResult};
use crate::error::StoreError;
use crate::job::{Job, JobStatus, Kind};

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

/// Keyset pagination on the jobs table `table` with the backend's placeholders `p` (owner, after, start,
/// limit): the query, and the cursor start for a missing `after`. One more row than asked says whether more
/// follow ([`page`]).
pub(super) fn list_sql(table: &str, kind: Kind, order: Order, p: [&str; 4]) -> (String, i64) {
    let (cmp, dir, start) = match order {
        Order::Asc => (">", "ASC", i64::MIN),
        Order::Desc => ("<", "DESC", i64::MAX),
    };
    let [owner, after, first, limit] = p;
    let prefix = kind.prefix();
    let sql = format!(
        // The prefix is one of two constants (`video_`, `film_`), never the caller's text.
        "SELECT * FROM {table} WHERE owner = {owner} AND id LIKE '{prefix}%' AND seq {cmp} COALESCE(
             (SELECT seq FROM {table} WHERE id = {after} AND owner = {owner}), {first})
         ORDER BY seq {dir} LIMIT {limit}"
    );
    (sql, start)
}

/// The first `limit` jobs of a [`list_sql`] result, and whether more followed.
pub(super) fn page(mut jobs: Vec<Job>, limit: u32) -> (Vec<Job>, bool) {
    let more = jobs.len() > limit as usize;
    jobs.truncate(limit as usize);
    (jobs, more)
}

/// Events returned with their `seq` (an `UPDATE ... RETURNING` gives rows in no particular order), oldest
/// first, as they were recorded.
pub(super) fn oldest_first<R: Columns>(rows: &[R]) -> StoreResult<Vec<OutboxEvent>> {
    let mut events = rows
        .iter()
        .map(|r| Ok((required(r.int("seq")?, "seq")?, event(r)?)))
        .collect::<StoreResult<Vec<_>>>()?;
    events.sort_by_key(|(seq, _)| *seq);
    Ok(events.into_iter().map(|(_, e)| e).collect())
}
