//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the matching HTTP status,
//! so clients written against the official SDKs raise the exception they expect.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered to an API client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI's error `type`: `invalid_request_error`, `authentication_error`, `not_found_error`,
    /// `rate_limit_error` or `server_error`.
    pub kind: &'static str,
    /// What was wrong and what to do about it.
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A machine-readable code.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 for a bad value of `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: Some(param.into()),
            code: Some("invalid_value"),
        }
    }

    /// 400 for a request that is malformed as a whole (bad JSON, wrong content type).
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: None,
            code: Some(code),
        }
    }

    /// 404 for a video the caller cannot see (missing, expired, or someone else's).
    pub fn video_not_found(id: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            message: format!("No video found with id '{id}'."),
            param: Some("video_id".into()),
            code: Some("video_not_found"),
        }
    }

    /// 404 for a film id that does not exist (or belongs to someone else).
    pub fn film_not_found(id: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            message: format!("No film found with id '{id}'."),
            param: Some("film_id".into()),
            code: Some("film_not_found"),
        }
    }

    /// 404 for a path that is not part of the API.
    pub fn no_route(method: &str, path: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            message: format!(
                "Invalid URL ({method} {path}): this server implements /v1/videos, /v1/films and /v1/models."
            ),
            param: None,
            code: Some("unknown_url"),
        }
    }

    /// 401: no key or a wrong one.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            kind: "invalid_request_error",
            message: message.into(),
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    /// 429: too many unfinished jobs for this key.
    pub fn too_many_jobs(limit: u32) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "rate_limit_error",
            message: format!(
                "This API key already has {limit} unfinished videos (the server's --max-queued-per-key). \
                 Wait for some to finish, or delete queued ones, then retry."
            ),
            param: None,
            code: Some("rate_limit_exceeded"),
        }
    }

    /// 413: the body is over the server's limit.
    pub fn too_large(limit: usize) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "invalid_request_error",
            message: format!(
                "The request body is larger than this server accepts ({limit} bytes, --max-body-bytes)."
            ),
            param: None,
            code: Some("request_too_large"),
        }
    }

    /// 405 for a method a route does not have.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self {
            status: StatusCode::METHOD_NOT_ALLOWED,
            kind: "invalid_request_error",
            message: format!("{method} is not allowed on {path}."),
            param: None,
            code: Some("method_not_allowed"),
        }
    }

    /// 500: our fault. The message is logged in full and kept short for the client.
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!("internal error: {message}");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            message: format!("The server had an error while processing your request: {message}"),
            param: None,
            code: Some("internal_error"),
        }
    }

    /// 409 for an action the video's state does not allow (e.g. remixing an unfinished video).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::CONFLICT,
            kind: "invalid_request_error",
            message: message.into(),
            param: None,
            code: Some("invalid_state"),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        res
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::internal(e.to_string())
    }
}

/// A failure of the job store (database or files).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("job database: {0}")]
    Db(#[from] sqlx::Error),
    /// A stored record could not be read back.
    #[error("job database holds a malformed record: {0}")]
    Corrupt(String),
    /// The database server could not be reached or refused the login.
    #[error(
        "cannot connect to the job database {url}: {message} (check the --store URL, that PostgreSQL \
         runs there and that the user may log in)"
    )]
    Connect {
        /// The URL, password hidden.
        url: String,
        /// The driver's reason.
        message: String,
    },
    /// The database was made by a newer sorrel.
    #[error("the job database cannot be used: {0}")]
    Incompatible(String),
    /// A file in the data folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path that failed.
        path: std::path::PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
}

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A bad setting; the message names it and the fix.
    #[error("{0}")]
    Config(String),
    /// The job store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A model folder failed to load.
    #[error("cannot load model `{name}` from {dir}: {reason}")]
    Model {
        /// The model's API name.
        name: String,
        /// Its folder.
        dir: std::path::PathBuf,
        /// Why (in the message, not a `source`: error reporters that print the chain would say it twice).
        reason: Box<sorrel_core::Error>,
    },
    /// Binding or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
