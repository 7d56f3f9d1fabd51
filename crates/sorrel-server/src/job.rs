//! A video job as stored, and the OpenAI `Video` object it is shown as.

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
    /// `video_` + 32 hex digits.
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
    /// The OpenAI `Video` object, plus Sorrel's extras under their own names (`seed`, `steps`, ...).
    pub fn to_api(&self) -> Value {
        let p = &self.params;
        json!({
            "id": self.id,
            "object": "video",
            "model": self.model,
            "status": self.status.as_str(),
            "progress": self.progress,
            "created_at": self.created_at,
            "completed_at": self.completed_at,
            "expires_at": self.expires_at,
            "prompt": p.prompt,
            "seconds": p.seconds.to_string(),
            "size": format!("{}x{}", p.width, p.height),
            "remixed_from_video_id": self.remixed_from,
            "error": self.error,
            "negative_prompt": p.negative_prompt,
            "seed": p.seed,
            "steps": p.steps,
            "guidance": p.guidance,
            "frames": p.frames,
            "fps": p.fps,
        })
    }
}

/// A fresh job id: `video_` and 128 random bits in hex.
pub fn new_id() -> String {
    format!("video_{:032x}", rand::random::<u128>())
}

/// True for ids this server could have issued. Everything else is refused before it reaches the
/// database or the file system, so ids like `../x` never become paths.
pub fn is_valid_id(id: &str) -> bool {
    id.strip_prefix("video_").is_some_and(|hex| {
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
        ] {
            assert!(!is_valid_id(bad), "{bad}");
        }
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
