//! `GET /v1/videos/{id}/events` and `/v1/films/{id}/events` (Sorrel extras): a server-sent-events stream of the
//! Video (Film) object, one `video` (`film`) event each time its status or progress changes, ending after
//! `completed` or `failed` (or a `deleted` event).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use tokio::sync::broadcast;

use crate::store::JobStore;
use crate::App;

struct Watch<S: JobStore> {
    app: Arc<App<S>>,
    id: String,
    changes: broadcast::Receiver<String>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    last: Option<(String, u8)>,
    done: bool,
}

/// The event stream for job `id` (already checked to exist and belong to the caller).
pub fn stream<S: JobStore>(
    app: Arc<App<S>>,
    id: String,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let changes = app.changes.subscribe();
    let shutdown = app.shutdown.subscribe();
    let watch = Watch {
        app,
        id,
        changes,
        shutdown,
        last: None,
        done: false,
    };
    let s = stream::unfold(watch, |mut w| async move {
        loop {
            if w.done || *w.shutdown.borrow() {
                return None;
            }
            let job = match w.app.store.get(&w.id).await {
                Ok(j) => j,
                Err(e) => {
                    w.done = true;
                    let ev = SseEvent::default().event("error").data(e.to_string());
                    return Some((Ok(ev), w));
                }
            };
            let Some(job) = job else {
                w.done = true;
                let object = format!("{}.deleted", kind_of(&w.id).object());
                let ev = SseEvent::default().event("deleted").data(
                    serde_json::json!({"id": w.id, "object": object, "deleted": true}).to_string(),
                );
                return Some((Ok(ev), w));
            };
            let key = (job.status.as_str().to_string(), job.progress);
            if w.last.as_ref() != Some(&key) {
                w.last = Some(key);
                w.done = job.status.is_final();
                let ev = SseEvent::default()
                    .event(kind_of(&w.id).object())
                    .data(job.to_api().to_string());
                return Some((Ok(ev), w));
            }
            // Wait for a change to this job, with a periodic re-read in case a notice was missed.
            let deadline = tokio::time::sleep(Duration::from_secs(1));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    msg = w.changes.recv() => match msg {
                        Ok(id) if id == w.id => break,
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    _ = &mut deadline => break,
                    _ = w.shutdown.changed() => return None,
                }
            }
        }
    });
    Sse::new(s).keep_alive(KeepAlive::default())
}

/// The kind of job a (valid) id names.
fn kind_of(id: &str) -> crate::job::Kind {
    crate::job::Kind::of(id).unwrap_or(crate::job::Kind::Video)
}
