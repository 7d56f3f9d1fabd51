//! Webhook delivery of `video.completed` and `video.failed`, signed the way Standard Webhooks (and OpenAI's
//! webhooks) are: headers `webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "id.timestamp.body">`, so receivers can use the same verification libraries.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::config::WebhookConfig;
use crate::job::{now, Job, JobStatus};

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

    /// Sends the event for a finished job in the background, retrying with back-off.
    pub fn announce(&self, job: &Job) {
        let kind = match job.status {
            JobStatus::Completed => "video.completed",
            JobStatus::Failed => "video.failed",
            _ => return,
        };
        let event_id = format!("evt_{:032x}", rand::random::<u128>());
        let body = json!({
            "id": event_id,
            "object": "event",
            "type": kind,
            "created_at": now(),
            "data": {"id": job.id},
        })
        .to_string();
        let this = self.clone();
        tokio::spawn(async move { this.deliver(event_id, body).await });
    }

    async fn deliver(&self, event_id: String, body: String) {
        let mut delay = self.config.first_retry;
        for attempt in 1..=self.config.attempts.max(1) {
            let ts = now();
            let res = self
                .client
                .post(&self.config.url)
                .header("content-type", "application/json")
                .header("webhook-id", &event_id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", self.sign(&event_id, ts, &body))
                .body(body.clone())
                .send()
                .await;
            match res {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => tracing::warn!(
                    "webhook {event_id} attempt {attempt}: receiver answered {}",
                    r.status()
                ),
                Err(e) => tracing::warn!("webhook {event_id} attempt {attempt}: {e}"),
            }
            if attempt < self.config.attempts {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        tracing::error!(
            "webhook {event_id}: gave up after {} attempts",
            self.config.attempts
        );
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
