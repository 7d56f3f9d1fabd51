//! Workers: take the oldest queued job, generate it on a blocking thread, record progress after every
//! denoising step, write the MP4, thumbnail and sprite sheet into the job's folder, then mark it done.
//!
//! Cancellation (a `DELETE`, or the server shutting down) is checked between steps: the pipeline's progress
//! callback returns `false` and the pipeline stops at the next step boundary.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sorrel_media::{EncodeOptions, FrameFeed, StillFormat};
use sorrel_pipeline::{Conditioning, Event, WanPipeline};
use sorrel_provenance::watermark;
use tokio::sync::mpsc;

use crate::job::{now, GenParams, Job, JobError, JobInput, JobStatus};
use crate::params::{picture, to_request, Variant};
use crate::store::{JobStore, OutboxEvent};
use crate::App;

/// Why a generation did not produce files.
pub(crate) enum Failure {
    /// Asked to stop (deleted, or shutdown).
    Cancelled,
    /// The job cannot succeed; the code and message are shown to the client.
    Failed(JobError),
}

/// A pipeline error as a job failure; `output_code` names a failure of the caller's own output (encoding a
/// video, storing a film's shots).
pub(crate) fn failure_of(e: sorrel_core::Error, output_code: &str) -> Failure {
    match e {
        sorrel_core::Error::Cancelled => Failure::Cancelled,
        sorrel_core::Error::Invalid(m) => failed("invalid_request", m),
        sorrel_core::Error::Output(m) => failed(output_code, m),
        other => failed("generation_failed", other.to_string()),
    }
}

pub(crate) fn failed(code: &str, message: impl Into<String>) -> Failure {
    Failure::Failed(JobError {
        code: code.into(),
        message: message.into(),
    })
}

/// A job started this many times without finishing (each time the server died or stopped under it) is failed
/// instead of being run again, so one video that crashes the process cannot take the server down forever.
pub const MAX_ATTEMPTS: u32 = 5;

/// Runs one worker until the server shuts down.
pub async fn run<S: JobStore>(app: Arc<App<S>>, index: usize) {
    let mut shutdown = app.shutdown.subscribe();
    loop {
        if *shutdown.borrow() {
            break;
        }
        match app
            .store
            .claim_next(&app.models.names(), app.config.lease)
            .await
        {
            Ok(Some(job)) => run_job(&app, job, index).await,
            Ok(None) => {
                tokio::select! {
                    _ = app.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => {}
                }
            }
            Err(e) => {
                tracing::error!("worker {index}: cannot read the queue: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// A job's progress from the pipeline's events: text encoding is quick, denoising is most of the work
/// (5 to 90 %), decoding and encoding the rest. Never goes backwards, though a video made window by window
/// decodes after every window.
#[derive(Default)]
struct Percent {
    last: u8,
    window: Option<(usize, usize)>,
}

impl Percent {
    fn of(&mut self, ev: &Event) -> (u8, String) {
        let window = |w: Option<(usize, usize)>| match w {
            Some((i, n)) if n > 1 => format!("window {i}/{n}, "),
            _ => String::new(),
        };
        let (p, msg) = match ev {
            Event::Stage("text encoder") => (1, "encoding the prompt".into()),
            Event::Stage("vae decode") if self.window.is_some_and(|(i, n)| i < n) => (
                self.last,
                format!("{}decoding frames (VAE)", window(self.window)),
            ),
            Event::Stage("vae decode") => (90, "decoding frames (VAE)".into()),
            Event::Stage("vae decode in tiles") => (90, "decoding frames in tiles (VAE)".into()),
            Event::Stage(s) => (5, format!("{}stage: {s}", window(self.window))),
            Event::Window { index, total } => {
                self.window = Some((*index, *total));
                (self.last, format!("window {index}/{total}"))
            }
            Event::Step { index, total, .. } => (
                (5 + 85 * index / (*total).max(1)) as u8,
                format!("{}step {index}/{total}", window(self.window)),
            ),
        };
        self.last = self.last.max(p);
        (self.last, msg)
    }
}

async fn run_job<S: JobStore>(app: &Arc<App<S>>, job: Job, worker: usize) {
    let id = job.id.clone();
    let attempt = job.attempts;
    tracing::info!("worker {worker}: starting {id} (attempt {attempt})");
    let cancel = Arc::new(AtomicBool::new(false));
    app.running
        .lock()
        .expect("running map")
        .insert(id.clone(), cancel.clone());
    let outcome = generate_job(app, &job, &cancel).await;
    app.running.lock().expect("running map").remove(&id);
    // The allocator keeps freed blocks for the next tensor (`keep_freed_memory`); between jobs, an idle server
    // gives them back.
    sorrel_core::threads::release_free_memory();

    let finish = async {
        let shutting_down = *app.shutdown.borrow();
        match outcome {
            Ok(()) => {
                let t = now();
                if app
                    .store
                    .complete(
                        &id,
                        attempt,
                        t,
                        t + app.config.retention.as_secs() as i64,
                        event(app, &id, JobStatus::Completed).as_ref(),
                    )
                    .await?
                {
                    tracing::info!("worker {worker}: {id} completed");
                    app.outbox_wake.notify_one();
                } else {
                    remove_if_deleted(app, &id).await?;
                }
            }
            Err(Failure::Cancelled) if shutting_down => {
                app.store.requeue(&id, attempt).await?;
                tracing::info!("worker {worker}: {id} interrupted by shutdown, back in the queue");
            }
            Err(Failure::Cancelled) => {
                remove_if_deleted(app, &id).await?;
                tracing::info!("worker {worker}: {id} cancelled");
            }
            Err(Failure::Failed(err)) => {
                tracing::warn!("worker {worker}: {id} failed: {}", err.message);
                let t = now();
                let expires = t + app.config.retention.as_secs() as i64;
                let event = event(app, &id, JobStatus::Failed);
                if app
                    .store
                    .fail(&id, attempt, &err, t, expires, event.as_ref())
                    .await?
                {
                    app.outbox_wake.notify_one();
                } else {
                    remove_if_deleted(app, &id).await?;
                }
            }
        }
        Ok::<(), crate::error::StoreError>(())
    };
    if let Err(e) = finish.await {
        tracing::error!("worker {worker}: cannot record the end of {id}: {e}");
    }
    app.changed(&id);
}

/// Removes job `id`'s files once its record is gone (deleted while it ran: the files must not outlive it).
/// A job this worker lost to another (its lease ran out and another worker claimed it) keeps its folder:
/// the other worker is writing there.
async fn remove_if_deleted<S: JobStore>(
    app: &App<S>,
    id: &str,
) -> Result<(), crate::error::StoreError> {
    if app.store.get(id).await?.is_none() {
        app.data.remove_job(id)?;
    } else {
        tracing::warn!("{id} was claimed by another worker after this one's lease ran out");
    }
    Ok(())
}

/// The webhook event for job `id` ending with `status`, when this node delivers webhooks or shares its
/// store (an API node elsewhere may deliver them; a shared store drops what nobody delivered after the
/// retention period).
fn event<S: JobStore>(app: &App<S>, id: &str, status: JobStatus) -> Option<OutboxEvent> {
    if app.webhook.is_none() && !app.store.is_shared() {
        return None;
    }
    crate::webhook::event_for(id, status)
}

async fn generate_job<S: JobStore>(
    app: &Arc<App<S>>,
    job: &Job,
    cancel: &Arc<AtomicBool>,
) -> Result<(), Failure> {
    if job.attempts > MAX_ATTEMPTS {
        return Err(failed(
            "too_many_attempts",
            format!(
                "the server stopped {MAX_ATTEMPTS} times while generating this {}; it is not retried again \
                 (see the server's log for a crash or an out-of-memory kill)",
                job.kind().object()
            ),
        ));
    }
    let dir = app
        .data
        .fresh_job_dir(&job.id)
        .map_err(|e| failed("storage_error", e.to_string()))?;
    let mut log = crate::files::JobLog::open(&dir);
    log.line(&format!(
        "attempt {} on {} with model {}: {}x{}, {} frames at {} fps, {} steps, guidance {}, seed {}",
        job.attempts,
        app.node_id,
        job.model,
        job.params.width,
        job.params.height,
        job.params.frames,
        job.params.fps,
        job.params.steps,
        job.params.guidance,
        job.params.seed
    ));
    let Some(model) = app.models.get(&job.model) else {
        let msg = format!(
            "model '{}' is not loaded by this server any more (it has: {})",
            job.model,
            app.models.names().join(", ")
        );
        log.line(&msg);
        return Err(failed("model_not_loaded", msg));
    };

    let (tx, mut rx) = mpsc::unbounded_channel::<(u8, String)>();
    let pipe = model.pipe.clone();
    let params = job.params.clone();
    let flag = cancel.clone();
    let out_dir = dir.clone();
    let in_dir = app.data.input_dir(&job.id);
    // The payload is the job id's hash, so a watermark found in a stripped copy names the job.
    let watermark = app.config.watermark.as_ref().map(|key| {
        let payload = watermark::payload_for(&job.id);
        (
            payload,
            watermark::Embedder::new(key, payload, watermark::DEFAULT_STRENGTH),
        )
    });
    let signing = Signing {
        identity: app.identity.clone(),
        generation: sorrel_provenance::Generation {
            // Adapters and replaced components change what made the video: named, as the CLI names them.
            model: app.config.weights.describe(job.model.clone()),
            seed: job.params.seed,
            steps: job.params.steps,
            prompt: app.config.record_prompt.then(|| job.params.prompt.clone()),
            watermark: watermark.as_ref().map(|w| w.0),
        },
        mark: watermark.map(|w| w.1),
    };
    let room = app.memory_room;
    let task = match params.film.clone() {
        Some(film) => {
            let dirs = crate::film_job::FilmDirs {
                work: in_dir.join("film"),
                out: out_dir,
                model: model.dir.clone(),
            };
            tokio::task::spawn_blocking(move || {
                crate::film_job::make(&pipe, &params, &film, &dirs, &flag, &tx, &signing, room)
            })
        }
        None => tokio::task::spawn_blocking(move || {
            generate(
                &pipe,
                &params,
                (&in_dir, &out_dir),
                &flag,
                &tx,
                &signing,
                room,
            )
        }),
    };

    let mut shutdown = app.shutdown.subscribe();
    // A shutdown that came before this subscription (between taking the job and here) is not a change the
    // receiver will see: check the value itself, or the job would run to the end through the shutdown.
    if *shutdown.borrow() {
        cancel.store(true, Ordering::Relaxed);
    }
    let lease = app.config.lease;
    // Renewed between progress reports too: one step of a large model can outlast the lease.
    let mut renewal = tokio::time::interval(lease / 3);
    renewal.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some((p, text)) => {
                    log.line(&text);
                    match app.store.set_progress(&job.id, job.attempts, p, lease).await {
                        Ok(true) => app.changed(&job.id),
                        Ok(false) => cancel.store(true, Ordering::Relaxed),
                        Err(e) => tracing::warn!("progress of {}: {e}", job.id),
                    }
                }
                None => break,
            },
            _ = renewal.tick() => match app.store.renew(&job.id, job.attempts, lease).await {
                Ok(true) => {}
                Ok(false) => cancel.store(true, Ordering::Relaxed),
                Err(e) => tracing::warn!("lease of {}: {e}", job.id),
            },
            _ = shutdown.changed() => cancel.store(true, Ordering::Relaxed),
        }
    }
    let result = match task.await {
        Ok(r) => r,
        Err(e) => Err(failed(
            "internal_error",
            format!("the generation thread crashed: {e}"),
        )),
    };
    match &result {
        Ok(()) => log.line("done"),
        Err(Failure::Cancelled) => log.line("cancelled"),
        Err(Failure::Failed(e)) => log.line(&format!("failed: {}", e.message)),
    }
    result
}

/// Who signs a job's files, what the credentials say, and the watermark to embed (if on).
pub(crate) struct Signing {
    pub identity: sorrel_provenance::SigningIdentity,
    pub generation: sorrel_provenance::Generation,
    pub mark: Option<watermark::Embedder>,
}

impl Signing {
    /// `bytes` of a file called `name` with signed credentials listing `ingredients` (a film's shots).
    pub fn sign(
        &self,
        bytes: &[u8],
        name: &str,
        ingredients: &[sorrel_provenance::Ingredient],
    ) -> Result<Vec<u8>, Failure> {
        sorrel_provenance::sign_named_with_ingredients(
            bytes,
            name,
            &self.generation,
            &self.identity,
            ingredients,
        )
        .map_err(|e| failed("signing_failed", e.to_string()))?
        .ok_or_else(|| {
            failed(
                "signing_failed",
                format!("{name} cannot carry content credentials"),
            )
        })
    }

    /// Signs `bytes` (named by `variant`) and writes them atomically into `dir`.
    pub fn write(&self, dir: &Path, variant: Variant, bytes: &[u8]) -> Result<(), Failure> {
        self.write_named(dir, variant.file_name(), bytes)
    }

    /// Signs `bytes` of a file called `name` and writes them atomically into `dir`.
    pub fn write_named(&self, dir: &Path, name: &str, bytes: &[u8]) -> Result<(), Failure> {
        let signed = self.sign(bytes, name, &[])?;
        sorrel_media::write_file(&dir.join(name), &signed)
            .map_err(|e| failed("storage_error", e.to_string()))
    }
}

/// The job's input files as the pipeline takes them.
fn read_input(params: &GenParams, in_dir: &Path) -> Result<Conditioning, Failure> {
    let missing = |file: &str, e: &dyn std::fmt::Display| {
        failed(
            "input_missing",
            format!("cannot read the job's input {file}: {e}"),
        )
    };
    Ok(match &params.input {
        None => Conditioning::None,
        Some(JobInput::Image { file }) => Conditioning::Image {
            first: picture(
                sorrel_media::read_image(&in_dir.join(file)).map_err(|e| missing(file, &e))?,
            ),
            last: None,
        },
        Some(JobInput::Video { file, strength }) => {
            let clip =
                sorrel_media::read_video(&in_dir.join(file)).map_err(|e| missing(file, &e))?;
            Conditioning::Video {
                frames: clip.frames().iter().cloned().map(picture).collect(),
                strength: *strength,
            }
        }
    })
}

/// The blocking part: denoise, decode, encode, sign, write.
fn generate(
    pipe: &WanPipeline,
    params: &GenParams,
    (in_dir, dir): (&Path, &Path),
    cancel: &AtomicBool,
    progress: &mpsc::UnboundedSender<(u8, String)>,
    signing: &Signing,
    memory_room: Option<u64>,
) -> Result<(), Failure> {
    let req = to_request(params, read_input(params, in_dir)?);
    // A job queued by a node that has not loaded the model (or before memory was taken by something
    // else) is checked here: refused with the sizes, not killed halfway.
    pipe.check_memory(&req, memory_room)
        .map_err(|e| failed("insufficient_memory", e.to_string()))?;
    let mut bar = Percent::default();
    let mut on_event = |ev: &Event| {
        let _ = progress.send(bar.of(ev));
        !cancel.load(Ordering::Relaxed)
    };
    let encode_err = |e: &dyn std::fmt::Display| failed("encoding_failed", e.to_string());
    // Frames are marked and encoded as they are decoded (a diffusion-forcing model's window by window),
    // keeping only what the stills need: memory does not grow with the video's length.
    let mut stream = sorrel_media::VideoStream::new(
        &sorrel_media::Format::Mp4,
        params.fps,
        &EncodeOptions::default(),
    )
    .map_err(|e| encode_err(&e))?;
    let mut feed = FrameFeed::default();
    let mut sink = |frames: &candle_core::Tensor, total: usize| -> sorrel_core::Result<()> {
        let (f, h, w, _) = frames.dims4()?;
        let data = frames.flatten_all()?.to_vec1::<f32>()?;
        let out = |e: sorrel_media::MediaError| sorrel_core::Error::Output(e.to_string());
        let marked = feed
            .feed(&data, (f, h, w), total, |frame| {
                if let Some(mark) = &signing.mark {
                    mark.mark_frame(&mut frame.rgb, w, h);
                }
            })
            .map_err(out)?;
        for frame in marked {
            stream.push(frame).map_err(out)?;
        }
        Ok(())
    };
    let made = pipe
        .generate_streamed(&req, &mut on_event, &mut sink)
        .map_err(|e| failure_of(e, "encoding_failed"))?;
    if !made.unknown_words.is_empty() {
        let _ = progress.send((
            90,
            format!("unknown words: {}", made.unknown_words.join(", ")),
        ));
    }
    for (stage, d) in &made.timings {
        let _ = progress.send((90, format!("{stage}: {:.3} s", d.as_secs_f64())));
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(Failure::Cancelled);
    }
    let _ = progress.send((
        95,
        "encoding and signing MP4, thumbnail and sprite sheet".into(),
    ));
    // The stills first and the video last: the MP4's presence is what makes a job's folder complete.
    let (thumb, sheet) = feed.stills().map_err(|e| encode_err(&e))?;
    let bytes =
        sorrel_media::encode_still(&thumb, StillFormat::WebP).map_err(|e| encode_err(&e))?;
    signing.write(dir, Variant::Thumbnail, &bytes)?;
    let bytes =
        sorrel_media::encode_still(&sheet, StillFormat::Jpeg(85)).map_err(|e| encode_err(&e))?;
    signing.write(dir, Variant::Spritesheet, &bytes)?;
    let bytes = stream.finish().map_err(|e| encode_err(&e))?;
    signing.write(dir, Variant::Video, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A video made window by window decodes after every window; the job's progress still only rises, and
    /// says which window it is on.
    #[test]
    fn progress_never_goes_back_across_windows() {
        let mut p = Percent::default();
        let mut seen = vec![p.of(&Event::Stage("text encoder"))];
        for w in 1..=3 {
            seen.push(p.of(&Event::Window { index: w, total: 3 }));
            seen.push(p.of(&Event::Stage("denoising")));
            for s in 1..=2 {
                seen.push(p.of(&Event::Step {
                    index: (w - 1) * 2 + s,
                    total: 6,
                    timestep: 0.0,
                }));
            }
            seen.push(p.of(&Event::Stage("vae decode")));
        }
        let percents: Vec<u8> = seen.iter().map(|(p, _)| *p).collect();
        assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
        assert_eq!(percents.last(), Some(&90));
        assert!(
            seen.iter().any(|(_, m)| m == "window 2/3, step 3/6"),
            "{seen:?}"
        );
    }
}
