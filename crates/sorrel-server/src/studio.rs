//! The studio: a page at `/` for people who would rather click than call the API. It is plain HTML, CSS and a
//! JavaScript module, compiled into the binary (no build step, no CDN: it works offline), and it talks to
//! the same `/v1` API as every other client, with the same key.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("../studio/index.html");
const SCRIPT: &str = include_str!("../studio/studio.js");
const STYLE: &str = include_str!("../studio/studio.css");
const ICON: &str = include_str!("../studio/icon.svg");

/// Everything the page loads comes from this server; videos play from `blob:` URLs made of what the API
/// returned (a `<video src>` cannot send the key).
const POLICY: &str = "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; \
                      style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

/// The page's routes. They need no key: the page asks for one when the API does.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/studio/studio.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/studio/studio.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/studio/icon.svg",
            get(|| async { asset("image/svg+xml", ICON) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The assets change with the binary, which a browser cannot know: always revalidate.
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}
