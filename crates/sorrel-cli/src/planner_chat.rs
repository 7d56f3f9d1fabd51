//! Planning a film with a chat model: any OpenAI-compatible `/chat/completions` endpoint is asked for the
//! plan as JSON under a schema, and its answer is read and checked as a plan file is.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};
use sorrel_pipeline::film::{Plan, PLAN_VERSION};

/// What the model is told: the plan's rules in a few lines, so any capable chat model can follow them.
const INSTRUCTIONS: &str = "You turn a story into a shot list for a video generator. Answer with one JSON \
object only, following the schema. `characters`: every recurring character, with `name` as the story \
calls it and `look`: a short phrase of how it looks (\"a small red ball\"). `shots`: in order; `text` is \
the story's line the shot shows; `prompt` says what is seen, naming characters by their looks, not their \
names, and where it happens; `seconds` is the shot's length; `characters` lists who is in view by name, \
the lead first; `continues` is true when the shot goes on from the previous one without a cut.";

/// The JSON schema of a plan, as the endpoint's structured-output mode takes it.
fn schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["sorrel_film", "characters", "shots"],
        "properties": {
            "sorrel_film": {"type": "integer", "enum": [PLAN_VERSION]},
            "title": {"type": "string"},
            "characters": {"type": "array", "items": {
                "type": "object",
                "additionalProperties": false,
                "required": ["name", "look"],
                "properties": {"name": {"type": "string"}, "look": {"type": "string"}}
            }},
            "shots": {"type": "array", "minItems": 1, "items": {
                "type": "object",
                "additionalProperties": false,
                "required": ["text", "prompt", "seconds", "characters", "continues"],
                "properties": {
                    "text": {"type": "string"},
                    "prompt": {"type": "string"},
                    "seconds": {"type": "number", "exclusiveMinimum": 0},
                    "characters": {"type": "array", "items": {"type": "string"}},
                    "camera": {"type": "string"},
                    "continues": {"type": "boolean"}
                }
            }}
        }
    })
}

/// Asks the chat endpoint at `base` (e.g. `http://localhost:8080/v1`) for the plan of `story`.
pub fn plan_with_chat(story: &str, base: &str, model: &str, key: Option<&str>) -> Result<Plan> {
    let url = format!("{}/chat/completions", base.trim_end_matches('/'));
    let body = json!({
        "model": model,
        "messages": [
            {"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": story},
        ],
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "sorrel_film_plan", "strict": true, "schema": schema()
        }},
    });
    // A long story can take a chat model minutes; a dead endpoint should not hang the film forever.
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .context("cannot start an HTTP client")?;
    let mut req = client.post(&url).json(&body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req
        .send()
        .with_context(|| format!("cannot reach the planner at {url}"))?;
    let status = resp.status();
    let text = resp
        .text()
        .with_context(|| format!("cannot read the planner's answer from {url}"))?;
    if !status.is_success() {
        let short: String = text.chars().take(300).collect();
        return Err(anyhow!(
            "the planner at {url} answered {status}: {short} (check --planner-url, --planner-model and \
             the key)"
        ));
    }
    let answer: Value = serde_json::from_str(&text).map_err(|e| {
        anyhow!("the planner at {url} did not answer with a chat completion (JSON): {e}")
    })?;
    let content = answer
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            anyhow!("the planner's answer has no choices[0].message.content: it is not a chat completion")
        })?;
    Ok(Plan::from_json(content, "the planner's plan")?)
}
