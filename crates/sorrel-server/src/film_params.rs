//! `POST /v1/films` (a Sorrel extension): a story or a plan, planned, checked against the model and laid out
//! into shots before the job is queued, so a film the model cannot make is a 400 and never a failed job.

use serde::Deserialize;
use serde_json::Value;
use sorrel_film::FilmLayout;
use sorrel_pipeline::film::{plan_story, Plan, PlannerOptions, MAX_SHOT_SECONDS};

use crate::config::Limits;
use crate::error::ApiError;
use crate::job::{FilmParams, GenParams};
use crate::models::Catalog;

/// The body of `POST /v1/films` (JSON).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilmRequest {
    /// The model's API name (default: the server's first).
    model: Option<String>,
    /// Plain text planned by the built-in planner (one sentence a shot, paragraphs as scenes).
    story: Option<String>,
    /// A plan as `sorrel film --plan-only` writes it (docs/film.md), instead of a story.
    plan: Option<Value>,
    /// Length of shots whose sentence gives none, in seconds (default 2).
    shot_seconds: Option<f64>,
    /// Frame size, `WIDTHxHEIGHT` (default: the model's).
    size: Option<String>,
    /// Denoising steps per shot (default: the model's).
    steps: Option<usize>,
    /// Guidance scale (default: the model's).
    guidance: Option<f64>,
}

/// A film request, checked and laid out.
pub struct ParsedFilm {
    /// The model's API name.
    pub model: String,
    /// What the job makes; `film` holds the plan and each shot's frames.
    pub params: GenParams,
    /// Frames of the longest shot: what one generation at a time needs memory for.
    pub longest_shot: usize,
}

/// Reads, plans and lays out a film request.
pub fn parse_film(body: &[u8], models: &Catalog, limits: &Limits) -> Result<ParsedFilm, ApiError> {
    let req: FilmRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            "body",
            format!(
                "Invalid film request: {e}. Send JSON with 'story' (plain text) or 'plan' (a plan as \
                 `sorrel film --plan-only` writes it), and optionally 'model', 'shot_seconds', 'size', \
                 'steps' and 'guidance'."
            ),
        )
    })?;
    let plan = match (&req.story, &req.plan) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "plan",
                "Send either 'story' or 'plan', not both.",
            ))
        }
        (None, None) => {
            return Err(ApiError::invalid(
                "story",
                "Missing required parameter: 'story' (plain text) or 'plan'.",
            ))
        }
        (Some(story), None) => {
            let shot_seconds = req.shot_seconds.unwrap_or(2.0);
            if !(shot_seconds > 0.0 && shot_seconds <= MAX_SHOT_SECONDS) {
                return Err(ApiError::invalid(
                    "shot_seconds",
                    format!(
                        "Invalid 'shot_seconds': {shot_seconds}. Give a length in (0, {MAX_SHOT_SECONDS}] \
                         seconds."
                    ),
                ));
            }
            plan_story(story, &PlannerOptions { shot_seconds })
                .map_err(|e| ApiError::invalid("story", e.to_string()))?
        }
        (None, Some(plan)) => {
            if req.shot_seconds.is_some() {
                return Err(ApiError::invalid(
                    "shot_seconds",
                    "'shot_seconds' is for stories: a plan gives each shot's length.",
                ));
            }
            Plan::from_json(&plan.to_string(), "the request's 'plan'")
                .map_err(|e| ApiError::invalid("plan", e.to_string()))?
        }
    };
    if let Some(steps) = req.steps {
        if steps == 0 || steps > limits.max_steps {
            return Err(ApiError::invalid(
                "steps",
                format!(
                    "Invalid 'steps': {steps}. Give 1 to {} steps.",
                    limits.max_steps
                ),
            ));
        }
    }
    if let Some(g) = req.guidance {
        if !(g.is_finite() && g >= 0.0) {
            return Err(ApiError::invalid(
                "guidance",
                format!("Invalid 'guidance': {g}. Give a scale of 0 or more, such as 5."),
            ));
        }
    }
    let card = crate::params::resolve_model(models, req.model)?;
    let size = req
        .size
        .as_deref()
        .map(|s| crate::params::parse_size(s, limits))
        .transpose()?;
    let layout = FilmLayout::new(&card.info, &plan, &card.name, size, req.steps, req.guidance)
        .map_err(|e| ApiError::invalid("model", e.to_string()))?;
    if size.is_some() {
        // The size against the model's own limits, as a video of its default length would be checked.
        let probe = sorrel_pipeline::GenerateRequest {
            prompt: plan.prompt_of(0),
            width: layout.width,
            height: layout.height,
            frames: layout.character_frames,
            steps: layout.steps,
            guidance: layout.guidance,
            ..Default::default()
        };
        probe
            .validate_described(&card.info)
            .map_err(|e| ApiError::invalid("size", e.to_string()))?;
    }
    let prompt = plan
        .shots
        .iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let frames = layout.total_frames();
    let params = GenParams {
        prompt,
        negative_prompt: String::new(),
        width: layout.width,
        height: layout.height,
        seconds: layout.seconds().ceil() as u32,
        frames,
        fps: layout.fps,
        steps: layout.steps,
        guidance: layout.guidance,
        seed: plan.shot_seed(0),
        input: None,
        film: Some(FilmParams {
            frames: layout.frames.clone(),
            plan,
        }),
    };
    Ok(ParsedFilm {
        model: card.name.clone(),
        longest_shot: layout
            .frames
            .iter()
            .copied()
            .max()
            .unwrap_or(layout.character_frames)
            .max(layout.character_frames),
        params,
    })
}
