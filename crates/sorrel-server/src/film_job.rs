//! A film job's blocking part: render the plan shot by shot (each finished shot cached in the job's input
//! folder, which outlives an attempt, so a restarted server resumes the film where it stopped), then write each
//! shot's MP4, the storyboard, the stills and the film, watermarked and signed, the film listing every shot as
//! an ingredient.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Tensor;
use sorrel_film::{FilmEvent, FilmLayout, RenderOptions};
use sorrel_media::{EncodeOptions, FrameFeed, StillFormat};
use sorrel_pipeline::WanPipeline;
use tokio::sync::mpsc;

use crate::job::FilmParams;
use crate::params::Variant;
use crate::worker::{failed, failure_of, Failure, Signing};

/// Where a film job reads and writes.
pub(crate) struct FilmDirs {
    /// The shot cache (kept across attempts, removed with the job).
    pub work: std::path::PathBuf,
    /// The job's output folder.
    pub out: std::path::PathBuf,
    /// The model's folder, whose files key the cache.
    pub model: std::path::PathBuf,
}

fn encode_err(e: &dyn std::fmt::Display) -> Failure {
    failed("encoding_failed", e.to_string())
}

/// `shots` encoded as one MP4 at `fps`, every frame watermarked; the feed holds the stills.
fn encode(shots: &[Tensor], fps: u32, signing: &Signing) -> Result<(Vec<u8>, FrameFeed), Failure> {
    let total = shots.iter().map(|s| s.dim(0).unwrap_or(0)).sum();
    let mut stream =
        sorrel_media::VideoStream::new(&sorrel_media::Format::Mp4, fps, &EncodeOptions::default())
            .map_err(|e| encode_err(&e))?;
    let mut feed = FrameFeed::default();
    for shot in shots {
        let pixels = || -> candle_core::Result<_> {
            let (f, h, w, _) = shot.dims4()?;
            Ok((shot.flatten_all()?.to_vec1::<f32>()?, (f, h, w)))
        };
        let (data, (f, h, w)) = pixels().map_err(|e| encode_err(&e))?;
        let frames = feed
            .feed(&data, (f, h, w), total, |frame| {
                if let Some(mark) = &signing.mark {
                    mark.mark_frame(&mut frame.rgb, w, h);
                }
            })
            .map_err(|e| encode_err(&e))?;
        for frame in frames {
            stream.push(frame).map_err(|e| encode_err(&e))?;
        }
    }
    Ok((stream.finish().map_err(|e| encode_err(&e))?, feed))
}

/// Renders and writes film `film` (job settings `params`) into `dirs.out`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make(
    pipe: &WanPipeline,
    params: &crate::job::GenParams,
    film: &FilmParams,
    dirs: &FilmDirs,
    cancel: &AtomicBool,
    progress: &mpsc::UnboundedSender<(u8, String)>,
    signing: &Signing,
    memory_room: Option<u64>,
) -> Result<(), Failure> {
    let plan = &film.plan;
    let model = &signing.generation.model;
    let layout = FilmLayout::new(
        &pipe.info,
        plan,
        model,
        Some((params.width, params.height)),
        Some(params.steps),
        Some(params.guidance),
    )
    .map_err(|e| failed("invalid_request", e.to_string()))?;
    let fingerprint = sorrel_film::model_fingerprint(&dirs.model)
        .map_err(|e| failed("model_unreadable", e.to_string()))?
        + model;
    let opts = RenderOptions {
        work: dirs.work.clone(),
        fingerprint,
        memory_room,
    };
    let total = layout.total_frames().max(1);
    let mut last = 0u8;
    let rendered = sorrel_film::render(pipe, plan, &layout, &opts, &mut |ev| {
        let msg = match ev {
            FilmEvent::Frames { done, label } => {
                // Rendering is most of the work (5 to 90 %); encoding and signing the rest.
                last = last.max((5 + 85 * done.min(total) / total) as u8);
                format!("{label}: {done}/{total} frames")
            }
            FilmEvent::Line(line) => line,
        };
        let _ = progress.send((last, msg));
        !cancel.load(Ordering::Relaxed)
    })
    .map_err(|e| failure_of(e, "storage_error"))?;
    if !rendered.unknown_words.is_empty() {
        let _ = progress.send((
            90,
            format!("unknown words: {}", rendered.unknown_words.join(", ")),
        ));
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(Failure::Cancelled);
    }
    let _ = progress.send((
        92,
        "encoding and signing the shots, the storyboard and the film".into(),
    ));
    let out = &dirs.out;
    let shots_dir = out.join("shots");
    std::fs::create_dir_all(&shots_dir).map_err(|e| failed("storage_error", e.to_string()))?;
    let mut shot_files: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, shot) in rendered.shots.iter().enumerate() {
        let (bytes, _) = encode(std::slice::from_ref(shot), layout.fps, signing)?;
        let name = shot_file(i + 1);
        let signed = signing.sign(&bytes, &name, &[])?;
        write(&shots_dir.join(&name), &signed)?;
        shot_files.push((format!("shot {name}"), signed));
    }
    let board = sorrel_film::storyboard::sheet(plan, &rendered.shots, &layout.frames, layout.fps)
        .map_err(|e| encode_err(&e))?;
    signing.write_named(out, "storyboard.png", &board)?;
    let (bytes, feed) = encode(&rendered.shots, layout.fps, signing)?;
    let (thumb, sheet) = feed.stills().map_err(|e| encode_err(&e))?;
    let still =
        sorrel_media::encode_still(&thumb, StillFormat::WebP).map_err(|e| encode_err(&e))?;
    signing.write(out, Variant::Thumbnail, &still)?;
    let still =
        sorrel_media::encode_still(&sheet, StillFormat::Jpeg(85)).map_err(|e| encode_err(&e))?;
    signing.write(out, Variant::Spritesheet, &still)?;
    // The film last: its presence is what makes a job's folder complete.
    let ingredients = sorrel_provenance::Ingredient::all(&shot_files, "video/mp4");
    let signed = signing.sign(&bytes, Variant::Video.file_name(), &ingredients)?;
    write(&out.join(Variant::Video.file_name()), &signed)?;
    // The film is whole: the cache (every shot's frames in f32, hundreds of MB a shot at 480p) has done its
    // job. Best effort: a cache left behind goes with the job when it expires or is deleted.
    if let Err(e) = std::fs::remove_dir_all(&dirs.work) {
        tracing::warn!("cannot remove the film cache {}: {e}", dirs.work.display());
    }
    Ok(())
}

/// Shot `n`'s file name (1-based) in the job's `shots/` folder.
pub fn shot_file(n: usize) -> String {
    format!("{n:02}.mp4")
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    sorrel_media::write_file(path, bytes).map_err(|e| failed("storage_error", e.to_string()))
}
