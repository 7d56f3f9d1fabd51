//! Webhook delivery of `video.completed` and `video.failed`, signed the way Standard Webhooks (and OpenAI's
//! webhooks) are: headers `webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "id.timestamp.body">`, so receivers can use the same verification libraries. Events wait in the store's
//! outbox, recorded in the same transaction as the job's end, until they are delivered: at least once, with
//! one `webhook-id` on every attempt, across restarts.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::config::WebhookConfig;
use crate::job::{now, now_ms, JobStatus};
use crate::store::{JobStore, OutboxEvent, StoreResult};
use crate::App;

/// A webhook sender.
#[derive(Clone)]
pub struct Webhook {
    config: WebhookConfig,
    key: Vec<u8>,
    client: reqwest::Client,
}

impl Webhook {
    /// Checks the URL and builds the client.
    pub fn new(config: WebhookConfig) -> Result<Self, String> {
        let url = reqwest::Url::parse(&config.url)
            .map_err(|e| format!("--webhook-url `{}` is not a URL: {e}", config.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "--webhook-url `{}` must be http:// or https://",
                config.url
            ));
        }
        if config.secret.is_empty() {
            return Err(
                "a webhook needs a signing secret (--webhook-secret or SORREL_WEBHOOK_SECRET)"
                    .into(),
            );
        }
        let key = match config.secret.strip_prefix("whsec_") {
            Some(b64) => B64.decode(b64).map_err(|e| {
                format!("the webhook secret starts with whsec_ but is not base64 after it: {e}")
            })?,
            None => config.secret.as_bytes().to_vec(),
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| format!("cannot build the webhook HTTP client: {e}"))?;
        Ok(Self {
            config,
            key,
            client,
        })
    }

    /// The signature header value for one delivery.
    pub fn sign(&self, id: &str, timestamp: i64, body: &str) -> String {
        signature(&self.key, id, timestamp, body)
    }

    /// One delivery attempt, freshly timestamped and signed.
    async fn attempt(&self, event: &OutboxEvent) -> Result<(), String> {
        let ts = now();
        let res = self
            .client
            .post(&self.config.url)
            .header("content-type", "application/json")
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", self.sign(&event.id, ts, &event.body))
            .body(event.body.clone())
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("receiver answered {}", r.status())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Delivers `event` once and records the outcome: gone from the outbox when delivered or out of attempts,
    /// else due again after the back-off (`first_retry`, doubling).
    async fn deliver<S: JobStore>(&self, store: &S, event: &OutboxEvent) -> StoreResult<()> {
        let attempts = event.attempts + 1;
        match self.attempt(event).await {
            Ok(()) => return store.forget_event(&event.id).await,
            Err(e) => tracing::warn!("webhook {} attempt {attempts}: {e}", event.id),
        }
        if attempts >= self.config.attempts.max(1) {
            tracing::error!("webhook {}: gave up after {attempts} attempts", event.id);
            return store.forget_event(&event.id).await;
        }
        let delay = self.config.first_retry * 2u32.saturating_pow(attempts - 1);
        let next = now_ms() + delay.as_millis().min(i64::MAX as u128) as i64;
        store.retry_event(&event.id, attempts, next).await
    }
}

/// The event announcing that job `id` ended with `status` (`video.completed`, `film.failed`, ...), to be
/// recorded in the outbox with the job's change; `None` for other statuses. It needs no secret (deliveries are
/// signed when sent), so a worker records it even where another node delivers.
pub fn event_for(id: &str, status: JobStatus) -> Option<OutboxEvent> {
    let object = crate::job::Kind::of(id)
        .unwrap_or(crate::job::Kind::Video)
        .object();
    let kind = match status {
        JobStatus::Completed => format!("{object}.completed"),
        JobStatus::Failed => format!("{object}.failed"),
        _ => return None,
    };
    let event_id = format!("evt_{:032x}", rand::random::<u128>());
    let body = json!({
        "id": event_id,
        "object": "event",
        "type": kind,
        "created_at": now(),
        "data": {"id": id},
    })
    .to_string();
    Some(OutboxEvent {
        id: event_id,
        body,
        attempts: 0,
    })
}

/// Delivers the outbox until the server stops: events recorded by this process or left by an earlier one
/// (a restart resumes their retries with the same ids), woken when a job ends and at least every second.
pub async fn run_outbox<S: JobStore>(app: Arc<App<S>>) {
    let Some(hook) = app.webhook.clone() else {
        return;
    };
    let mut shutdown = app.shutdown.subscribe();
    loop {
        match app.store.due_events(now_ms(), 32).await {
            Ok(events) => {
                for event in &events {
                    if let Err(e) = hook.deliver(&app.store, event).await {
                        tracing::error!("webhook {}: cannot record the attempt: {e}", event.id);
                    }
                }
            }
            Err(e) => tracing::error!("cannot read the webhook outbox: {e}"),
        }
        tokio::select! {
            _ = app.outbox_wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// `v1,` + base64(HMAC-SHA256(key, "id.timestamp.body")).
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A film's end is announced as a film's, a video's as a video's; nothing else is announced.
    #[test]
    fn events_name_the_kind_of_job() {
        let kind = |id: &str, status| {
            event_for(id, status).map(|e| {
                serde_json::from_str::<serde_json::Value>(&e.body).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
        };
        let film = crate::job::new_id_of(crate::job::Kind::Film);
        let video = crate::job::new_id();
        assert_eq!(
            kind(&film, JobStatus::Completed).as_deref(),
            Some("film.completed")
        );
        assert_eq!(
            kind(&film, JobStatus::Failed).as_deref(),
            Some("film.failed")
        );
        assert_eq!(
            kind(&video, JobStatus::Completed).as_deref(),
            Some("video.completed")
        );
        assert_eq!(kind(&film, JobStatus::InProgress), None);
    }

    /// The worked example of the Standard Webhooks specification (its published test vector).
    #[test]
    fn signature_matches_the_standard_webhooks_vector() {
        let key = B64.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn bad_configs_are_refused() {
        let cfg = |url: &str, secret: &str| WebhookConfig {
            url: url.into(),
            secret: secret.into(),
            attempts: 3,
            first_retry: Duration::from_millis(10),
        };
        assert!(Webhook::new(cfg("ftp://x", "s")).is_err());
        assert!(Webhook::new(cfg("not a url", "s")).is_err());
        assert!(Webhook::new(cfg("http://127.0.0.1:1/", "")).is_err());
        assert!(Webhook::new(cfg("http://127.0.0.1:1/", "whsec_!!")).is_err());
        assert!(Webhook::new(cfg(
            "http://127.0.0.1:1/",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        ))
        .is_ok());
    }
}
