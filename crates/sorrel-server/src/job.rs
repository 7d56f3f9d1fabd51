//! A job as stored (a video, or a film: many shots from one plan), and the API object it is shown as: OpenAI's
//! `Video`, or Sorrel's `Film`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Waiting for a worker.
    Queued,
    /// A worker is generating it.
    InProgress,
    /// Its files are ready.
    Completed,
    /// It failed; `error` says why.
    Failed,
}

impl JobStatus {
    /// The API (and database) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::InProgress => "in_progress",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
        }
    }

    /// Parses the database spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobStatus::Queued,
            "in_progress" => JobStatus::InProgress,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            _ => return None,
        })
    }

    /// Completed or failed: nothing more will happen.
    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed)
    }
}

/// What a job makes: one video, or a film of many shots. The id's prefix says which, so a film's id is never
/// found under `/v1/videos` (nor a video's under `/v1/films`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A video (`/v1/videos`, ids `video_...`).
    Video,
    /// A film (`/v1/films`, ids `film_...`).
    Film,
}

impl Kind {
    /// The id prefix, `video_` or `film_`.
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Video => "video_",
            Kind::Film => "film_",
        }
    }

    /// The API object's name, `video` or `film`.
    pub fn object(self) -> &'static str {
        match self {
            Kind::Video => "video",
            Kind::Film => "film",
        }
    }

    /// The kind of a valid id.
    pub fn of(id: &str) -> Option<Kind> {
        [Kind::Video, Kind::Film]
            .into_iter()
            .find(|k| is_valid_id_of(id, *k))
    }
}

/// A film job's plan (its shots, characters and lengths), checked when the job was created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilmParams {
    /// The plan, as `sorrel film --plan-only` writes it.
    pub plan: sorrel_pipeline::film::Plan,
    /// Each shot's frame count on the job's model.
    pub frames: Vec<usize>,
}

/// What to generate; stored as JSON so new fields do not need a schema change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenParams {
    /// What the video shows.
    pub prompt: String,
    /// What to steer away from.
    #[serde(default)]
    pub negative_prompt: String,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Whole seconds asked for.
    pub seconds: u32,
    /// Frames generated (4k+1, covering `seconds` at `fps`).
    pub frames: usize,
    /// Frames per second of the written MP4.
    pub fps: u32,
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale.
    pub guidance: f64,
    /// Noise seed.
    pub seed: u64,
    /// What the video starts from besides the prompt (absent: text alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<JobInput>,
    /// A film's plan (absent: a video). `frames` and `seconds` are then the whole film's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub film: Option<FilmParams>,
}

/// A job's input, a file in its input folder ([`crate::files::DataDir::input_dir`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobInput {
    /// Image to video from this picture (the API's `input_reference`).
    Image {
        /// File name in the input folder.
        file: String,
    },
    /// Video to video from this clip (a remix on a model that restyles video).
    Video {
        /// File name in the input folder.
        file: String,
        /// How much to change it, in (0, 1].
        strength: f64,
    },
}

/// Why a job failed, in OpenAI's `error` shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    /// Machine-readable code.
    pub code: String,
    /// What happened.
    pub message: String,
}

/// One job as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// `video_` or `film_`, and 32 hex digits.
    pub id: String,
    /// Who may see it: a hash of the API key, or `local` when the server has no keys.
    pub owner: String,
    /// The model's API name.
    pub model: String,
    /// The generation settings.
    pub params: GenParams,
    /// Lifecycle state.
    pub status: JobStatus,
    /// 0 to 100.
    pub progress: u8,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, once finished.
    pub completed_at: Option<i64>,
    /// Unix seconds after which the files are removed.
    pub expires_at: Option<i64>,
    /// Set when failed.
    pub error: Option<JobError>,
    /// The video this one remixes.
    pub remixed_from: Option<String>,
    /// How many times a worker has started it (more than 1 after a crash or restart).
    pub attempts: u32,
}

impl Job {
    /// A job just accepted: queued, no progress, no attempt yet; `remixed_from` names the video it remixes.
    pub fn queued(
        id: String,
        owner: String,
        model: String,
        params: GenParams,
        remixed_from: Option<String>,
    ) -> Self {
        Self {
            id,
            owner,
            model,
            params,
            status: JobStatus::Queued,
            progress: 0,
            created_at: now(),
            completed_at: None,
            expires_at: None,
            error: None,
            remixed_from,
            attempts: 0,
        }
    }

    /// What the job makes.
    pub fn kind(&self) -> Kind {
        Kind::of(&self.id).unwrap_or(Kind::Video)
    }

    /// The OpenAI `Video` object, plus Sorrel's extras under their own names (`seed`, `steps`, ...); for a
    /// film, Sorrel's `Film` object: the same fields, with its shots and characters.
    pub fn to_api(&self) -> Value {
        let p = &self.params;
        if let Some(film) = &p.film {
            return self.film_api(film);
        }
        self.with_life(json!({
            "object": "video",
            "prompt": p.prompt,
            "seconds": p.seconds.to_string(),
            "size": format!("{}x{}", p.width, p.height),
            "remixed_from_video_id": self.remixed_from,
            "negative_prompt": p.negative_prompt,
            "seed": p.seed,
            "steps": p.steps,
            "guidance": p.guidance,
            "frames": p.frames,
            "fps": p.fps,
        }))
    }

    /// `fields` with what every job object says of its life: id, model, status, progress and times.
    fn with_life(&self, mut fields: Value) -> Value {
        let life = json!({
            "id": self.id,
            "model": self.model,
            "status": self.status.as_str(),
            "progress": self.progress,
            "created_at": self.created_at,
            "completed_at": self.completed_at,
            "expires_at": self.expires_at,
            "error": self.error,
        });
        if let (Value::Object(f), Value::Object(l)) = (&mut fields, life) {
            f.extend(l);
        }
        fields
    }

    fn film_api(&self, film: &FilmParams) -> Value {
        let p = &self.params;
        let plan = &film.plan;
        let mut at = 0.0;
        let shots: Vec<Value> = plan
            .shots
            .iter()
            .zip(&film.frames)
            .enumerate()
            .map(|(i, (s, &frames))| {
                let seconds = frames as f64 / p.fps as f64;
                let v = json!({
                    "index": i + 1,
                    "text": s.text,
                    "prompt": plan.prompt_of(i),
                    "start": at,
                    "seconds": seconds,
                    "frames": frames,
                    "continues": s.continues,
                    "characters": s.characters,
                    "seed": plan.shot_seed(i),
                });
                at += seconds;
                v
            })
            .collect();
        self.with_life(json!({
            "object": "film",
            "seconds": p.frames as f64 / p.fps as f64,
            "size": format!("{}x{}", p.width, p.height),
            "frames": p.frames,
            "fps": p.fps,
            "steps": p.steps,
            "guidance": p.guidance,
            "characters": plan.characters,
            "shots": shots,
        }))
    }
}

/// A fresh job id: `video_` (or `film_`) and 128 random bits in hex.
pub fn new_id_of(kind: Kind) -> String {
    format!("{}{:032x}", kind.prefix(), rand::random::<u128>())
}

/// A fresh video id.
pub fn new_id() -> String {
    new_id_of(Kind::Video)
}

/// True for ids this server could have issued, of either kind. Everything else is refused before it
/// reaches the database or the file system, so ids like `../x` never become paths.
pub fn is_valid_id(id: &str) -> bool {
    Kind::of(id).is_some()
}

/// True for ids of `kind` this server could have issued.
pub fn is_valid_id_of(id: &str, kind: Kind) -> bool {
    id.strip_prefix(kind.prefix()).is_some_and(|hex| {
        hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_use() {
        let id = new_id();
        assert!(is_valid_id(&id), "{id}");
        for bad in [
            "",
            "video_",
            "../../etc/passwd",
            "video_../../../etc/passwd",
            "video_0123456789abcdef0123456789ABCDEF",
            "video_0123456789abcdef0123456789abcde",
            "video_0123456789abcdef0123456789abcdef0",
            "vid_0123456789abcdef0123456789abcdef",
            "film_../../../etc/passwd",
            "film_0123456789abcdef0123456789abcde",
        ] {
            assert!(!is_valid_id(bad), "{bad}");
        }
        let film = new_id_of(Kind::Film);
        assert_eq!(Kind::of(&film), Some(Kind::Film));
        assert!(!is_valid_id_of(&film, Kind::Video), "{film}");
        assert!(!is_valid_id_of(&id, Kind::Film), "{id}");
    }

    #[test]
    fn status_round_trips() {
        for s in [
            JobStatus::Queued,
            JobStatus::InProgress,
            JobStatus::Completed,
            JobStatus::Failed,
        ] {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobStatus::parse("expired"), None);
    }
}
