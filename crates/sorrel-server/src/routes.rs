//! The HTTP routes: OpenAI's `/v1/videos` family plus Sorrel's extras (`/events`, `/logs`, `/v1/models`,
//! `/health`, `/credentials`), films (`/v1/films`: the same job life, plus the storyboard and each shot) and
//! the studio page at `/`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Path, RawQuery, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::json;

use crate::auth::{require_key, Owner};
use crate::error::ApiError;
use crate::job::{is_valid_id_of, new_id, new_id_of, Job, JobInput, JobStatus, Kind};
use crate::models::Catalog;
use crate::params::{self, Field, Variant};
use crate::store::{Inserted, JobStore};
use crate::App;
use sorrel_pipeline::Mode;

/// The router with every route, auth and the body limit.
pub fn router<S: JobStore>(app: Arc<App<S>>) -> Router {
    let limit = app.config.limits.max_body_bytes;
    // Videos and films share their handlers; each route knows which kind of job its ids name.
    let videos = Router::new()
        .route("/v1/videos", post(create::<S>).get(list::<S>))
        .route("/v1/videos/{id}", get(retrieve::<S>).delete(delete::<S>))
        .route("/v1/videos/{id}/content", get(content::<S>))
        .route("/v1/videos/{id}/remix", post(remix::<S>))
        .route("/v1/videos/{id}/events", get(events::<S>))
        .route("/v1/videos/{id}/logs", get(logs::<S>))
        .route("/v1/videos/{id}/credentials", get(credentials::<S>))
        .route_layer(Extension(Kind::Video));
    let films = Router::new()
        .route("/v1/films", post(create_film::<S>).get(list::<S>))
        .route("/v1/films/{id}", get(retrieve::<S>).delete(delete::<S>))
        .route("/v1/films/{id}/content", get(content::<S>))
        .route("/v1/films/{id}/shots/{n}/content", get(shot_content::<S>))
        .route("/v1/films/{id}/events", get(events::<S>))
        .route("/v1/films/{id}/logs", get(logs::<S>))
        .route("/v1/films/{id}/credentials", get(credentials::<S>))
        .route_layer(Extension(Kind::Film));
    let api = Router::new()
        .merge(videos)
        .merge(films)
        .route("/v1/models", get(models::<S>))
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            require_key::<S>,
        ));
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(crate::studio::router())
        .merge(api)
        .fallback(no_route)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(app)
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::no_route(method.as_str(), uri.path())
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

/// A Video (or Film) object response, with the polling hint the SDKs' `poll` helpers read.
fn video_response(job: &Job, poll_after_ms: u64) -> Response {
    let mut res = Json(job.to_api()).into_response();
    if !job.status.is_final() {
        res.headers_mut().insert(
            "openai-poll-after-ms",
            HeaderValue::from_str(&poll_after_ms.to_string()).expect("digits"),
        );
    }
    res
}

/// The caller's job `id` of `kind`; malformed ids and other callers' jobs are both "not found" (never
/// revealing that someone else's id exists).
async fn owned_job<S: JobStore>(
    app: &App<S>,
    owner: &Owner,
    id: &str,
    kind: Kind,
) -> Result<Job, ApiError> {
    if !is_valid_id_of(id, kind) {
        let what = kind.object();
        return Err(ApiError {
            code: Some(match kind {
                Kind::Video => "invalid_video_id",
                Kind::Film => "invalid_film_id",
            }),
            ..ApiError::invalid(
                format!("{what}_id"),
                format!(
                    "Invalid {what} id '{id}': ids look like '{}' followed by 32 hex digits.",
                    kind.prefix()
                ),
            )
        });
    }
    match app.store.get(id).await? {
        Some(job) if job.owner == owner.0 => Ok(job),
        _ => Err(not_found(kind, id)),
    }
}

/// 404 for a job of `kind` that does not exist (or is someone else's).
fn not_found(kind: Kind, id: &str) -> ApiError {
    match kind {
        Kind::Video => ApiError::video_not_found(id),
        Kind::Film => ApiError::film_not_found(id),
    }
}

/// The caller's finished job `id`; an unfinished one is a 409 saying that `what` (e.g. "its content can be
/// downloaded") waits for `completed`.
async fn completed_job<S: JobStore>(
    app: &App<S>,
    owner: &Owner,
    (id, kind): (&str, Kind),
    what: &str,
) -> Result<Job, ApiError> {
    let job = owned_job(app, owner, id, kind).await?;
    if job.status != JobStatus::Completed {
        let name = match kind {
            Kind::Video => "Video",
            Kind::Film => "Film",
        };
        return Err(ApiError::conflict(format!(
            "{name} '{id}' is {}: {what} once its status is 'completed'.",
            job.status.as_str()
        )));
    }
    Ok(job)
}

/// The body's fields, from JSON or multipart/form-data (what the OpenAI SDKs send for `create`). `limit` is
/// the body limit (enforced by the router's `DefaultBodyLimit`), named in the 413.
async fn body_fields(req: Request, limit: usize) -> Result<Vec<(String, Field)>, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    // Over the limit is a 413; anything else wrong with reading the body is a 400.
    let read_error = |status: StatusCode, code: &'static str, message: String| {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(limit)
        } else {
            ApiError::bad_request(code, message)
        }
    };
    if content_type.starts_with("multipart/form-data") {
        let multipart_error = |e: axum::extract::multipart::MultipartError, what: &str| {
            let message = format!("Malformed multipart {what}: {}", e.body_text());
            read_error(e.status(), "invalid_multipart", message)
        };
        let mut form = Multipart::from_request(req, &()).await.map_err(|e| {
            ApiError::bad_request(
                "invalid_multipart",
                format!("Malformed multipart body: {}", e.body_text()),
            )
        })?;
        let mut fields = Vec::new();
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| multipart_error(e, "body"))?
        {
            let name = field.name().unwrap_or("").to_string();
            let filename = field.file_name().map(str::to_string);
            let is_file = filename.is_some() || name == "input_reference" || name == "input_video";
            let bytes = field
                .bytes()
                .await
                .map_err(|e| multipart_error(e, &format!("field '{name}'")))?;
            let value = if is_file {
                Field::File { filename, bytes }
            } else {
                Field::Text(String::from_utf8(bytes.to_vec()).map_err(|_| {
                    ApiError::invalid(name.as_str(), format!("Field '{name}' is not UTF-8 text."))
                })?)
            };
            fields.push((name, value));
        }
        Ok(fields)
    } else if content_type.is_empty() || content_type.starts_with("application/json") {
        let bytes = Bytes::from_request(req, &()).await.map_err(|e| {
            let message = format!("Cannot read the request body: {}", e.body_text());
            read_error(e.status(), "invalid_body", message)
        })?;
        params::json_fields(&bytes)
    } else {
        Err(ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ..ApiError::bad_request(
                "unsupported_content_type",
                format!(
                    "Unsupported Content-Type '{content_type}': send application/json or multipart/form-data."
                ),
            )
        })
    }
}

fn query_pairs(q: Option<String>) -> Result<Vec<(String, String)>, ApiError> {
    let Some(q) = q else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for part in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let dec = |s: &str| {
            percent_decode(s).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("Malformed query string near '{part}'."),
                )
            })
        };
        out.push((dec(k)?, dec(v)?));
    }
    Ok(out)
}

/// Decodes `%XX` and `+` in a query component (axum's `Query` would turn errors into plain-text 400s).
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

async fn create<S: JobStore>(
    State(app): State<Arc<App<S>>>,
    Extension(owner): Extension<Owner>,
    req: Request,
) -> Result<Response, ApiError> {
    let fields = body_fields(req, app.config.limits.max_body_bytes).await?;
    let catalog = Arc::new(app.catalog().await?);
    // Checking an upload decodes it (a picture, or every frame of a clip): off the async workers.
    let shared = app.clone();
    let models = catalog.clone();
    let parsed = tokio::task::spawn_blocking(move || {
        params::parse_create(
            fields,
            &models,
            &shared.config.limits,
            &shared.config.defaults,
        )
    })
    .await
    .map_err(|e| ApiError::internal(format!("checking the request stopped: {e}")))??;
    check_memory(&app, &parsed.model, &parsed.params)?;
    let id = new_id();
    if let (Some(bytes), Some(JobInput::Image { file } | JobInput::Video { file, .. })) =
        (&parsed.upload, &parsed.params.input)
    {
        store_input(&app, &id, file, bytes)?;
    }
    let job = Job::queued(id, owner.0, parsed.model, parsed.params, None);
    enqueue_or_clean(&app, job, &catalog).await
}

/// `POST /v1/films` (a Sorrel extension): a story or plan, laid out and checked now, then queued as one job.
async fn create_film<S: JobStore>(
    State(app): State<Arc<App<S>>>,
    Extension(owner): Extension<Owner>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let catalog = app.catalog().await?;
    let parsed = crate::film_params::parse_film(&body, &catalog, &app.config.limits)?;
    // Shots are made one at a time: the longest is what must fit.
    let longest = crate::job::GenParams {
        frames: parsed.longest_shot,
        film: None,
        ..parsed.params.clone()
    };
    check_memory(&app, &parsed.model, &longest)?;
    let job = Job::queued(
        new_id_of(Kind::Film),
        owner.0,
        parsed.model,
        parsed.params,
        None,
    );
    enqueue_or_clean(&app, job, &catalog).await
}

async fn enqueue<S: JobStore>(
    app: &Arc<App<S>>,
    job: Job,
    catalog: &Catalog,
) -> Result<Response, ApiError> {
    match app
        .store
        .insert(&job, app.config.limits.max_queued_per_key)
        .await?
    {
        Inserted::Yes => {
            app.wake.notify_one();
            tracing::info!("queued {} ({})", job.id, job.model);
            if !catalog.is_running(&job.model) {
                note_no_worker(app, &job);
            }
            Ok(video_response(&job, app.config.poll_after_ms))
        }
        Inserted::OverLimit => Err(ApiError::too_many_jobs(
            app.config.limits.max_queued_per_key,
        )),
    }
}

async fn retrieve<S: JobStore>(
    State(app): State<Arc<App<S>>>,
    Extension(owner): Extension<Owner>,
    Extension(kind): Extension<Kind>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = owned_job(&app, &owner, &id, kind).await?;
    Ok(video_response(&job, app.config.poll_after_ms))
}

async fn list<S: JobStore>(
    State(app): State<Arc<App<S>>>,
    Extension(owner): Extension<Owner>,
    Extension(kind): Extension<Kind>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = params::parse_list(&query_pairs(q)?)?;
    if let Some(after) = &q.after {
        // An unknown cursor would silently restart the listing; say so instead.
        owned_job(&app, &owner, after, kind).await.map_err(|_| {
            ApiError::invalid(
                "after",
                format!(
                    "Invalid 'after': no {} '{after}' to continue after.",
                    kind.object()
                ),
            )
        })?;
    }
    let (jobs, has_more) = app
        .store
        .list(&owner.0, kind, q.after.as_deref(), q.limit, q.order)
        .await?;
    let data: Vec<_> = jobs.iter().map(Job::to_api).collect();
    Ok(Json(json!({
        "object": "list",
        "first_id": jobs.first().map(|j| &j.id),
        "last_id": jobs.last().map(|j| &j.id),
        "has_more": has_more,
        "data": data,
    }))
    .into_response())
}

async fn delete<S: JobStore>(
    State(app): State<Arc<App<S>>>,
    Extension(owner): Extension<Owner>,
    Extension(kind): Extension<Kind>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = owned_job(&app, &owner, &id, kind).await?;
    if let Some(flag) = app.running.lock().expect("running map").get(&id) {
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    app.store.delete(&id).await?;
    // A running job's worker also removes the folder when it stops; removing it now frees the space at once.
    app.data.remove_job(&id)?;
    app.changed(&id);
    tracing::info!("deleted {id} (was {})", job.status.as_str());
    let object = format!("{}.deleted", kind.object());
    Ok(Json(json!({"id": id, "object": object, "deleted": true})).into_response())
}

async fn content<S: JobStore>(
    State(app): State<Arc<App<S>>>,
    Extension(owner): Extension<Owner>,
    Extension(kind): Extension<Kind>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let variant = params::parse_variant(&query_pairs(q)?, kind)?;
    completed_job(&app, &owner, (&id, kind), "its content can be downloaded").await?;
    let path = app.data.job_dir(&id).join(variant.file_name());
    file_response(&path, variant.content_type(), not_found(kind, &id)).await
}

/// `GET /v1/films/{id}/shots/{n}/content`: shot `n` (from 1) of a finished film, as its own signed MP4.
async fn shot_content<S: JobStore>(
    State(app): State<Arc<App<S>>>,
    Extension(owner): Extension<Owner>,
    Path((id, n)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let job = completed_job(
        &app,
        &owner,
        (&id, Kind::Film),
        "its shots can be downloaded",
    )
    .await?;
    let shots = job.params.film.as_ref().map_or(0, |f| f.plan.shots.len());
    let n = match n.parse::<usize>() {
        Ok(n) if (1..=shots).contains(&n) => n,
        _ => {
            return Err(ApiError::invalid(
                "shot",
                format!("Invalid shot '{n}': film '{id}' has shots 1 to {shots}."),
            ))
        }
    };
    let path = app
        .data
        .job_dir(&id)
        .join("shots")
        .join(crate::film_job::shot_file(n));
    file_response(&path, "video/mp4", ApiError::film_not_found(&id)).await
}

/// A finished job's file; `missing` when it is gone (removed as the job expired).
async fn file_response(
    path: &std::path::Path,
    content_type: &'static str,
    missing: ApiError,
) -> Result<Response, ApiError> {
    let bytes = match tokio::fs::read(path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing),
        Err(e) => return Err(ApiError::internal(format!("{}: {e}", path.display()))),
    };
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, bytes.len())
        .body(Body::from(bytes))
        .expect("static headers"))
}

async fn remix<S: JobStore>(
    State(app): State<Arc<App<S>>>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let source = owned_job(&app, &owner, &id, Kind::Video).await?;
    if source.status != JobStatus::Completed {
        return Err(ApiError::conflict(format!(
            "Video '{id}' is {}: only completed videos can be remixed.",
            source.status.as_str()
        )));
    }
    let fields = body_fields(req, app.config.limits.max_body_bytes).await?;
    let catalog = app.catalog().await?;
    let Some(model) = catalog.get(&source.model) else {
        return Err(ApiError::invalid(
            "video_id",
            format!(
                "Video '{id}' was made by model '{}', which this server no longer has loaded.",
                source.model
            ),
        ));
    };
    let restyles = model.info.can(sorrel_pipeline::Mode::VideoToVideo);
    let params = params::parse_remix(fields, &source.params, &app.config.limits, restyles)?;
    let new = new_id();
    // The remix keeps its own copy of what it starts from, so deleting the source cannot break it.
    match &params.input {
        Some(JobInput::Video { file, .. }) => {
            let from = app
                .data
                .job_dir(&source.id)
                .join(Variant::Video.file_name());
            copy_input(&app, &new, file, &from)?;
        }
        Some(JobInput::Image { file }) => {
            copy_input(&app, &new, file, &app.data.input_dir(&source.id).join(file))?;
        }
        None => {}
    }
    let job = Job::queued(
        new,
        owner.0,
        source.model.clone(),
        params,
        Some(source.id.clone()),
    );
    enqueue_or_clean(&app, job, &catalog).await
}

/// Refuses a request too large for this node's memory, when this node runs the model (an API-only node
/// cannot tell: the worker checks at the job's start).
fn check_memory<S: JobStore>(
    app: &App<S>,
    model: &str,
    params: &crate::job::GenParams,
) -> Result<(), ApiError> {
    let (Some(loaded), Some(room)) = (app.models.get(model), app.memory_room) else {
        return Ok(());
    };
    let req = params::to_request(params, sorrel_pipeline::Conditioning::None);
    let need = loaded
        .pipe
        .memory_need(&req)
        .map_err(|e| ApiError::internal(format!("cannot size the request: {e}")))?;
    need.check(room, &req)
        .map_err(|e| ApiError::invalid("size", e.to_string()))
}

/// Says in the job's log (and this node's) that no running worker has its model: the job waits for one
/// rather than failing, and whoever looks at it learns why it does not start. The first attempt empties
/// the log, so the note goes once a worker takes the job.
fn note_no_worker<S: JobStore>(app: &App<S>, job: &Job) {
    let msg = format!(
        "waiting for a worker with model '{}': none of the running workers has it (start one with \
         `sorrel worker --store ... --model {}=DIR`)",
        job.model, job.model
    );
    tracing::warn!("{}: {msg}", job.id);
    let dir = app.data.job_dir(&job.id);
    match std::fs::create_dir_all(&dir) {
        Ok(()) => crate::files::JobLog::open(&dir).line(&msg),
        Err(e) => tracing::warn!("cannot create {}: {e}", dir.display()),
    }
}

/// Queues the job; if it is refused, its stored inputs go too.
async fn enqueue_or_clean<S: JobStore>(
    app: &Arc<App<S>>,
    job: Job,
    catalog: &Catalog,
) -> Result<Response, ApiError> {
    let id = job.id.clone();
    let res = enqueue(app, job, catalog).await;
    if res.is_err() {
        if let Err(e) = app.data.remove_job(&id) {
            tracing::warn!("cannot remove the inputs of refused {id}: {e}");
        }
    }
    res
}

/// Writes an uploaded input into the job's input folder, atomically.
fn store_input<S: JobStore>(
    app: &App<S>,
    id: &str,
    file: &str,
    bytes: &[u8],
) -> Result<(), ApiError> {
    let dir = app.data.input_dir(id);
    std::fs::create_dir_all(&dir)
        .map_err(|e| ApiError::internal(format!("cannot create {}: {e}", dir.display())))?;
    sorrel_media::write_file(&dir.join(file), bytes)
        .map_err(|e| ApiError::internal(format!("cannot store the upload: {e}")))
}

/// Copies another job's file into this job's input folder.
fn copy_input<S: JobStore>(
    app: &App<S>,
    id: &str,
    file: &str,
    from: &std::path::Path,
) -> Result<(), ApiError> {
    let bytes = std::fs::read(from).map_err(|e| {
        ApiError::internal(format!("cannot read the source {}: {e}", from.display()))
    })?;
    store_input(app, id, file, &bytes)
}

async fn events<S: JobStore>(
    State(app): State<Arc<App<S>>>,
    Extension(owner): Extension<Owner>,
    Extension(kind): Extension<Kind>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    owned_job(&app, &owner, &id, kind).await?;
    Ok(crate::events::stream(app, id).into_response())
}

async fn logs<S: JobStore>(
    State(app): State<Arc<App<S>>>,
    Extension(owner): Extension<Owner>,
    Extension(kind): Extension<Kind>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    owned_job(&app, &owner, &id, kind).await?;
    let text = tokio::fs::read_to_string(app.data.job_dir(&id).join("log.txt"))
        .await
        .unwrap_or_default();
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// OpenAI's model list, with Sorrel extras a client needs to build a form: what each model can be asked
/// (`modes`: `text_to_video`, `image_to_video` with `input_reference`, `video_to_video` by remixing) and what
/// a request that leaves a setting out gets (`defaults`), plus this server's `limits`.
async fn models<S: JobStore>(State(app): State<Arc<App<S>>>) -> Result<Response, ApiError> {
    let limits = &app.config.limits;
    let catalog = app.catalog().await?;
    let data: Vec<_> = catalog
        .cards()
        .map(|model| {
            let info = &model.info;
            let modes: Vec<&str> = [
                (Mode::TextToVideo, "text_to_video"),
                (Mode::ImageToVideo, "image_to_video"),
                (Mode::VideoToVideo, "video_to_video"),
            ]
            .into_iter()
            .filter(|(mode, _)| info.can(*mode))
            .map(|(_, name)| name)
            .collect();
            let d = params::RequestDefaults::of(model, &app.config.defaults);
            json!({
                "id": model.name,
                "object": "model",
                "created": app.started_at,
                "owned_by": "sorrel",
                "modes": modes,
                "fps": info.defaults.fps,
                "defaults": {
                    "size": format!("{}x{}", d.size.0, d.size.1),
                    "seconds": d.seconds,
                    "steps": d.steps,
                    "guidance": d.guidance,
                },
                "limits": {
                    "max_seconds": limits.max_seconds,
                    "max_steps": limits.max_steps,
                    "max_size": format!("{}x{}", limits.max_width, limits.max_height),
                    "max_prompt_chars": limits.max_prompt_chars,
                    "max_upload_bytes": limits.max_body_bytes,
                },
            })
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

/// `GET /v1/videos/{id}/credentials` and `/v1/films/{id}/credentials` (Sorrel extras): what `sorrel verify --json` says about the finished
/// video, checked now against the file on disk with this server's trust anchor and watermark key.
async fn credentials<S: JobStore>(
    State(app): State<Arc<App<S>>>,
    Extension(owner): Extension<Owner>,
    Extension(kind): Extension<Kind>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    completed_job(&app, &owner, (&id, kind), "its credentials can be checked").await?;
    let path = app.data.job_dir(&id).join(Variant::Video.file_name());
    let anchor = app.identity.anchor_pem.clone();
    let key = app.config.watermark.clone();
    let verdict = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => not_found(kind, &id),
            _ => ApiError::internal(format!("{}: {e}", path.display())),
        })?;
        let credentials = sorrel_provenance::verify(&bytes, "video/mp4", anchor.as_deref())
            .map_err(|e| ApiError::internal(format!("cannot read the credentials: {e}")))?;
        let (pixels, key) = match key {
            Some(key) => (
                sorrel_media::read_video(&path).map_err(|e| e.to_string()),
                key,
            ),
            None => (
                Err("this server was started with --no-watermark".to_string()),
                Default::default(),
            ),
        };
        Ok(sorrel_provenance::Verdict::judge(Some(credentials), pixels, &key).to_json())
    })
    .await
    .map_err(|e| ApiError::internal(format!("the credentials check stopped: {e}")))??;
    Ok(Json(verdict).into_response())
}
