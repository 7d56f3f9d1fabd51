//! Bearer API keys. A caller is known by a hash of its key, which is what jobs store as their owner, so the
//! database never holds a key and one key cannot see another's videos.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::store::JobStore;
use crate::App;

/// Who is calling: the owner string stored with their jobs.
#[derive(Debug, Clone)]
pub struct Owner(pub String);

/// The owner used when the server has no keys (loopback only).
pub const LOCAL_OWNER: &str = "local";

/// The configured keys, kept as hashes.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    hashes: Vec<[u8; 32]>,
}

impl Keys {
    /// From the plain keys.
    pub fn new(keys: &[String]) -> Self {
        Self {
            hashes: keys
                .iter()
                .map(|k| Sha256::digest(k.as_bytes()).into())
                .collect(),
        }
    }

    /// True when no key is configured.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// The owner for an `Authorization` header value, or a 401.
    pub fn check(&self, header: Option<&str>) -> Result<Owner, ApiError> {
        if self.is_empty() {
            return Ok(Owner(LOCAL_OWNER.into()));
        }
        let Some(header) = header else {
            return Err(ApiError::unauthorized(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY' \
                 (the OpenAI SDKs do this from OPENAI_API_KEY).",
            ));
        };
        let key = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthorized("The Authorization header must be 'Bearer YOUR_KEY'.")
            })?;
        // Comparing hashes of fixed length leaks nothing useful about the keys through timing.
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = false;
        for h in &self.hashes {
            found |= h.iter().zip(&hash).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        }
        if !found {
            return Err(ApiError::unauthorized(
                "Incorrect API key provided. Use one of the keys this server was started with.",
            ));
        }
        Ok(Owner(format!("key_{}", hex(&hash[..12]))))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Middleware: rejects callers without a valid key and tells handlers who the caller is.
pub async fn require_key<S: JobStore>(
    State(app): State<Arc<App<S>>>,
    mut req: Request,
    next: Next,
) -> Response {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match app.keys.check(header) {
        Ok(owner) => {
            req.extensions_mut().insert(owner);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let keys = Keys::new(&["sk-a".into(), "sk-b".into()]);
        let a = keys.check(Some("Bearer sk-a")).unwrap().0;
        let b = keys.check(Some("Bearer sk-b")).unwrap().0;
        assert_ne!(a, b);
        assert!(!a.contains("sk-a"));
        assert_eq!(keys.check(Some("Bearer sk-c")).unwrap_err().status, 401);
        assert_eq!(keys.check(Some("sk-a")).unwrap_err().status, 401);
        assert_eq!(keys.check(None).unwrap_err().status, 401);
        assert_eq!(Keys::new(&[]).check(None).unwrap().0, LOCAL_OWNER);
    }
}
