//! Reading request bodies and queries into generation settings, with an OpenAI-style 400 naming the field for
//! every value that is wrong, unknown or unsupported (never a silent ignore).
//!
//! JSON and multipart bodies are first reduced to one list of named fields, so both get the same checks and
//! the same messages.

use serde_json::Value;
use sorrel_pipeline::{Conditioning, GenerateRequest, Picture};

use crate::config::{Defaults, Limits};
use crate::error::ApiError;
use crate::job::{GenParams, JobInput, Kind};
use crate::models::{Catalog, ModelCard};
use sorrel_pipeline::Mode;

/// A field's value as it arrived.
#[derive(Debug, Clone)]
pub enum Field {
    /// From a JSON body.
    Json(Value),
    /// A multipart text part.
    Text(String),
    /// A multipart file part.
    File {
        /// The client's file name.
        filename: Option<String>,
        /// Its contents.
        bytes: axum::body::Bytes,
    },
}

/// The fields of a JSON object body; anything else is a 400.
pub fn json_fields(body: &[u8]) -> Result<Vec<(String, Field)>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "invalid_json",
            "The request body is empty: send a JSON object such as {\"prompt\": \"...\"}.",
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("We could not parse the JSON body of your request ({e}). Send a JSON object."),
        )
    })?;
    match value {
        Value::Object(map) => Ok(map.into_iter().map(|(k, v)| (k, Field::Json(v))).collect()),
        other => Err(ApiError::bad_request(
            "invalid_json",
            format!(
                "The request body must be a JSON object, not {}.",
                type_name(&other)
            ),
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Fields by name, each readable once; duplicates and leftovers are errors.
struct Fields(Vec<(String, Field)>);

impl Fields {
    fn new(fields: Vec<(String, Field)>) -> Result<Self, ApiError> {
        for (i, (name, _)) in fields.iter().enumerate() {
            if fields[..i].iter().any(|(n, _)| n == name) {
                return Err(ApiError::invalid(
                    name.as_str(),
                    format!("Parameter '{name}' is given more than once."),
                ));
            }
        }
        Ok(Self(fields))
    }

    fn take(&mut self, name: &str) -> Option<Field> {
        let i = self.0.iter().position(|(n, _)| n == name)?;
        Some(self.0.remove(i).1)
    }

    /// A string field; JSON null counts as absent.
    fn string(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        match self.take(name) {
            None | Some(Field::Json(Value::Null)) => Ok(None),
            Some(Field::Json(Value::String(s))) | Some(Field::Text(s)) => Ok(Some(s)),
            Some(Field::Json(v)) => Err(ApiError::invalid(
                name,
                format!(
                    "Invalid type for '{name}': expected a string, but got {}.",
                    type_name(&v)
                ),
            )),
            Some(Field::File { .. }) => Err(ApiError::invalid(
                name,
                format!("'{name}' must be a text field, not a file upload."),
            )),
        }
    }

    /// A number field: a JSON number, or a decimal string (multipart sends everything as text).
    fn number(&mut self, name: &str) -> Result<Option<(f64, String)>, ApiError> {
        let text = match self.take(name) {
            None | Some(Field::Json(Value::Null)) => return Ok(None),
            Some(Field::Json(Value::Number(n))) => n.to_string(),
            Some(Field::Json(Value::String(s))) | Some(Field::Text(s)) => s,
            Some(Field::Json(v)) => {
                return Err(ApiError::invalid(
                    name,
                    format!(
                        "Invalid type for '{name}': expected a number, but got {}.",
                        type_name(&v)
                    ),
                ))
            }
            Some(Field::File { .. }) => {
                return Err(ApiError::invalid(
                    name,
                    format!("'{name}' must be a number, not a file."),
                ))
            }
        };
        let text = text.trim().to_string();
        match text.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(Some((x, text))),
            _ => Err(ApiError::invalid(
                name,
                format!("'{name}' must be a number, but got '{text}'."),
            )),
        }
    }

    /// A whole number in `lo..=hi`.
    fn whole(&mut self, name: &str, lo: u64, hi: u64, hint: &str) -> Result<Option<u64>, ApiError> {
        let Some((x, text)) = self.number(name)? else {
            return Ok(None);
        };
        // Parsed from the text too, so seeds above 2^53 stay exact.
        let v = text
            .parse::<u64>()
            .ok()
            .or_else(|| (x.fract() == 0.0 && x >= 0.0 && x <= u64::MAX as f64).then_some(x as u64));
        match v {
            Some(v) if (lo..=hi).contains(&v) => Ok(Some(v)),
            _ => Err(ApiError::invalid(
                name,
                format!(
                    "Invalid '{name}': '{text}'. Expected a whole number from {lo} to {hi}{hint}."
                ),
            )),
        }
    }

    /// Errors on the first field nobody read.
    fn finish(self) -> Result<(), ApiError> {
        match self.0.into_iter().next() {
            None => Ok(()),
            Some((name, _)) => Err(ApiError {
                code: Some("unknown_parameter"),
                ..ApiError::invalid(name.as_str(), format!("Unknown parameter: '{name}'."))
            }),
        }
    }
}

/// A validated create request.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// The model's API name.
    pub model: String,
    /// The settings.
    pub params: GenParams,
    /// An uploaded picture or clip to start from, stored under the name `params.input` gives.
    pub upload: Option<axum::body::Bytes>,
}

/// Largest side of an uploaded picture, checked from its header before it is decoded.
pub const MAX_UPLOAD_SIDE: u32 = 8192;

/// Checks an `input_reference` upload from its header, then decodes it; returns the file extension of its
/// format and the picture.
fn check_image_upload(
    bytes: &[u8],
    filename: Option<&str>,
) -> Result<(&'static str, Picture), ApiError> {
    let bad = |m: String| ApiError::invalid("input_reference", m);
    let name = filename.unwrap_or("the upload");
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(format!("Cannot read '{name}': {e}.")))?;
    let ext = match reader.format() {
        Some(image::ImageFormat::Png) => "png",
        Some(image::ImageFormat::Jpeg) => "jpg",
        Some(image::ImageFormat::WebP) => "webp",
        Some(image::ImageFormat::Gif) => "gif",
        _ => {
            return Err(bad(format!(
                "'{name}' is not a PNG, JPEG, WebP or GIF picture: send one of those as 'input_reference'."
            )))
        }
    };
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| bad(format!("'{name}' is not a readable picture: {e}.")))?;
    if w > MAX_UPLOAD_SIDE || h > MAX_UPLOAD_SIDE {
        return Err(bad(format!(
            "'{name}' is {w}x{h}; pictures up to {MAX_UPLOAD_SIDE}x{MAX_UPLOAD_SIDE} are accepted: send a smaller one."
        )));
    }
    let rgb = image::load_from_memory(bytes)
        .map_err(|e| bad(format!("'{name}' is not a readable picture: {e}.")))?
        .into_rgb8();
    Ok((
        ext,
        Picture {
            width: w as usize,
            height: h as usize,
            rgb: rgb.into_raw(),
        },
    ))
}

/// What a request that leaves a setting out gets, for one model: the server's `--default-*` flags, else the
/// model's own defaults. `/v1/models` lists them so clients (the studio page) can show them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestDefaults {
    /// Width and height.
    pub size: (usize, usize),
    /// Length in seconds.
    pub seconds: u32,
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale.
    pub guidance: f64,
}

impl RequestDefaults {
    /// The defaults for `model` on a server started with `defaults`.
    pub fn of(model: &ModelCard, defaults: &Defaults) -> Self {
        let d = &model.info.defaults;
        Self {
            size: defaults.size.unwrap_or((d.width, d.height)),
            seconds: defaults
                .seconds
                .unwrap_or(((d.frames as f64 / d.fps as f64).round() as u32).max(1)),
            steps: defaults.steps.unwrap_or(d.steps),
            guidance: defaults.guidance.unwrap_or(d.guidance),
        }
    }
}

/// Reads `POST /v1/videos`.
pub fn parse_create(
    fields: Vec<(String, Field)>,
    models: &Catalog,
    limits: &Limits,
    defaults: &Defaults,
) -> Result<CreateRequest, ApiError> {
    let mut f = Fields::new(fields)?;
    let upload = match f.take("input_reference") {
        None => None,
        Some(Field::File { filename, bytes }) => {
            let (ext, picture) = check_image_upload(&bytes, filename.as_deref())?;
            Some((ext, picture, bytes))
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "input_reference",
                "'input_reference' must be a picture sent as a file in a multipart/form-data body (the OpenAI \
                 SDKs do this for a file object).",
            ))
        }
    };
    let clip = match f.take("input_video") {
        None => None,
        Some(Field::File { filename, bytes }) => {
            if upload.is_some() {
                return Err(ApiError::invalid(
                    "input_video",
                    "Send 'input_reference' (a picture to start from) or 'input_video' (a clip to restyle), \
                     not both.",
                ));
            }
            let (ext, clip) = check_video_upload(&bytes, filename.as_deref())?;
            Some((ext, clip, bytes))
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "input_video",
                "'input_video' must be a clip sent as a file in a multipart/form-data body.",
            ))
        }
    };
    let prompt = f
        .string("prompt")?
        .ok_or_else(|| ApiError::invalid("prompt", "Missing required parameter: 'prompt'."))?;
    check_prompt("prompt", &prompt, limits, true)?;
    let negative_prompt = f.string("negative_prompt")?.unwrap_or_default();
    check_prompt("negative_prompt", &negative_prompt, limits, false)?;

    let model = resolve_model(models, f.string("model")?)?;
    // A request the model cannot run is refused here, not after the job is queued.
    let (mode, param) = match (&upload, &clip) {
        (Some(_), _) => (Mode::ImageToVideo, "input_reference"),
        (_, Some(_)) => (Mode::VideoToVideo, "input_video"),
        _ => (Mode::TextToVideo, "model"),
    };
    model
        .info
        .check_mode(mode)
        .map_err(|e| ApiError::invalid(param, e.to_string()))?;
    let fallback = RequestDefaults::of(model, defaults);
    let seconds = f
        .whole(
            "seconds",
            1,
            limits.max_seconds as u64,
            " (this server's --max-seconds)",
        )?
        .map(|s| s as u32);
    let fps = model.info.defaults.fps;
    let frames_of =
        |seconds: u32| frames_for(seconds, fps, model.info.compression.1, model.info.patch[0]);
    let seconds = match (seconds, &clip) {
        (Some(s), _) => s,
        // Restyling a clip: as long as the clip, in the whole seconds whose frames it holds.
        (None, Some((_, c, _))) => (1..=limits.max_seconds)
            .take_while(|&s| frames_of(s) <= c.len())
            .last()
            .unwrap_or(1),
        (None, None) => fallback.seconds,
    };
    let (width, height) = match f.string("size")? {
        None => fallback.size,
        Some(s) => parse_size(&s, limits)?,
    };
    let steps = f
        .whole(
            "steps",
            1,
            limits.max_steps as u64,
            " (this server's --max-steps)",
        )?
        .map(|s| s as usize)
        .unwrap_or(fallback.steps);
    let guidance = match f.number("guidance")? {
        None => fallback.guidance,
        Some((g, _)) if (0.0..=100.0).contains(&g) => g,
        Some((_, text)) => {
            return Err(ApiError::invalid(
                "guidance",
                format!(
                    "Invalid 'guidance': '{text}'. Expected a number from 0 to 100 (5 is typical)."
                ),
            ))
        }
    };
    let seed = f
        .whole("seed", 0, u64::MAX, "")?
        .unwrap_or_else(rand::random::<u64>);
    let strength = match &clip {
        Some(_) => parse_strength(&mut f)?.unwrap_or(REMIX_STRENGTH),
        None if f.number("strength")?.is_some() => {
            return Err(ApiError::invalid(
                "strength",
                "'strength' says how much to change a clip: send it with 'input_video'.",
            ))
        }
        None => 0.0,
    };
    f.finish()?;

    let params = GenParams {
        prompt,
        negative_prompt,
        width,
        height,
        seconds,
        frames: frames_of(seconds),
        fps,
        steps,
        guidance,
        seed,
        input: match (&upload, &clip) {
            (Some((ext, _, _)), _) => Some(JobInput::Image {
                file: format!("input.{ext}"),
            }),
            (_, Some((ext, _, _))) => Some(JobInput::Video {
                file: format!("input.{ext}"),
                strength,
            }),
            _ => None,
        },
        film: None,
    };
    let (conditioning, upload) = match (upload, clip) {
        (Some((_, first, bytes)), _) => (Conditioning::Image { first, last: None }, Some(bytes)),
        (_, Some((_, clip, bytes))) => (
            Conditioning::Video {
                frames: clip.frames().iter().cloned().map(picture).collect(),
                strength,
            },
            Some(bytes),
        ),
        _ => (Conditioning::None, None),
    };
    if let Conditioning::Video { frames, strength } = &conditioning {
        check_strength_runs(*strength, params.steps, "its")?;
        if frames.len() < params.frames {
            return Err(ApiError::invalid(
                "input_video",
                format!(
                    "The clip has {} frames, and {} seconds of this model's video take {}: send a longer \
                     clip or fewer 'seconds'.",
                    frames.len(),
                    params.seconds,
                    params.frames
                ),
            ));
        }
    }
    // What the model itself cannot do (its patch grid, positional range) is a 400 now, not a failed job later.
    to_request(&params, conditioning)
        .validate_described(&model.info)
        .map_err(|e| {
            ApiError::invalid(
                "size",
                format!("Invalid request for model '{}': {e}", model.name),
            )
        })?;
    Ok(CreateRequest {
        model: model.name.clone(),
        params,
        upload,
    })
}

/// Reads `POST /v1/videos/{id}/remix`: a new prompt, and optionally a new seed and (a Sorrel extra) the
/// strength of a video-to-video remix. `restyles`: whether the model restyles the source video; on one that
/// does not, the remix generates again from the source's inputs with the new prompt.
pub fn parse_remix(
    fields: Vec<(String, Field)>,
    source: &GenParams,
    limits: &Limits,
    restyles: bool,
) -> Result<GenParams, ApiError> {
    let mut f = Fields::new(fields)?;
    let prompt = f
        .string("prompt")?
        .ok_or_else(|| ApiError::invalid("prompt", "Missing required parameter: 'prompt'."))?;
    check_prompt("prompt", &prompt, limits, true)?;
    let seed = f.whole("seed", 0, u64::MAX, "")?.unwrap_or(source.seed);
    let strength = if restyles {
        parse_strength(&mut f)?.unwrap_or(REMIX_STRENGTH)
    } else if f.number("strength")?.is_some() {
        return Err(ApiError::invalid(
            "strength",
            "'strength' needs a model that restyles video (a text-to-video model); this one remixes by \
             generating again with the new prompt.",
        ));
    } else {
        REMIX_STRENGTH
    };
    f.finish()?;
    if restyles {
        check_strength_runs(strength, source.steps, "the source's")?;
    }
    Ok(GenParams {
        prompt,
        seed,
        input: if restyles {
            Some(JobInput::Video {
                file: REMIX_SOURCE.into(),
                strength,
            })
        } else {
            source.input.clone()
        },
        ..source.clone()
    })
}

/// The `strength` of a video-to-video request, if given: a number in (0, 1].
fn parse_strength(f: &mut Fields) -> Result<Option<f64>, ApiError> {
    match f.number("strength")? {
        None => Ok(None),
        Some((s, _)) if s > 0.0 && s <= 1.0 => Ok(Some(s)),
        Some((_, text)) => Err(ApiError::invalid(
            "strength",
            format!(
                "Invalid 'strength': '{text}'. Expected a number in (0, 1]: 0.3 stays close to the source \
                 video, 1 ignores it."
            ),
        )),
    }
}

/// A decoded frame as the pipeline's picture.
pub fn picture(frame: sorrel_media::Frame) -> Picture {
    Picture {
        width: frame.width as usize,
        height: frame.height as usize,
        rgb: frame.rgb,
    }
}

/// Refuses a `strength` so small that `steps` steps run no denoising step at all.
fn check_strength_runs(strength: f64, steps: usize, whose: &str) -> Result<(), ApiError> {
    if sorrel_pipeline::strength_steps(steps, strength) == 0 {
        return Err(ApiError::invalid(
            "strength",
            format!(
                "'strength' {strength} with {whose} {steps} steps runs no denoising step: raise it to at \
                 least {:.2}.",
                1.0 / steps as f64
            ),
        ));
    }
    Ok(())
}

/// Decodes an `input_video` upload (H.264 MP4, GIF, APNG or WebP); returns the file extension to store it under
/// and the clip.
fn check_video_upload(
    bytes: &[u8],
    filename: Option<&str>,
) -> Result<(&'static str, sorrel_media::Clip), ApiError> {
    let name = filename.unwrap_or("the upload");
    let Some(ext) = sorrel_media::native_video_extension(bytes) else {
        return Err(ApiError::invalid(
            "input_video",
            format!(
                "'{name}' is not an MP4, GIF, APNG or WebP clip: convert it with \
                  `ffmpeg -i INPUT -c:v libx264 -pix_fmt yuv420p OUTPUT.mp4`."
            ),
        ));
    };
    let clip = sorrel_media::read_video_bytes(bytes, std::path::Path::new(name))
        .map_err(|e| ApiError::invalid("input_video", format!("Cannot read '{name}': {e}.")))?;
    Ok((ext, clip))
}

/// How much a remix changes its source video when the request does not say.
pub const REMIX_STRENGTH: f64 = 0.7;

/// The file name of a remix's source video in its input folder.
pub const REMIX_SOURCE: &str = "source.mp4";

fn check_prompt(name: &str, text: &str, limits: &Limits, required: bool) -> Result<(), ApiError> {
    if required && text.trim().is_empty() {
        return Err(ApiError::invalid(
            name,
            format!("'{name}' is empty: say what the video should show."),
        ));
    }
    let n = text.chars().count();
    if n > limits.max_prompt_chars {
        return Err(ApiError::invalid(
            name,
            format!(
                "'{name}' is {n} characters long; this server accepts at most {} (--max-prompt-chars).",
                limits.max_prompt_chars
            ),
        ));
    }
    Ok(())
}

/// `WIDTHxHEIGHT`, both positive multiples of 16 within the limits.
pub fn parse_size(s: &str, limits: &Limits) -> Result<(usize, usize), ApiError> {
    let bad = |why: String| {
        ApiError::invalid(
            "size",
            format!(
                "Invalid 'size': '{s}'. {why} Use WIDTHxHEIGHT such as '832x480' or '480x832'."
            ),
        )
    };
    let (w, h) = s
        .split_once('x')
        .ok_or_else(|| bad("It is not WIDTHxHEIGHT.".into()))?;
    let (Ok(w), Ok(h)) = (w.parse::<usize>(), h.parse::<usize>()) else {
        return Err(bad("Width and height must be whole numbers.".into()));
    };
    if w == 0 || h == 0 || w % 16 != 0 || h % 16 != 0 {
        return Err(bad(
            "Width and height must be positive multiples of 16 (the model works on 16x16 pixel patches)."
                .into(),
        ));
    }
    if w > limits.max_width || h > limits.max_height {
        return Err(bad(format!(
            "This server allows at most {}x{} (--max-size).",
            limits.max_width, limits.max_height
        )));
    }
    Ok((w, h))
}

/// Frames covering `seconds` at `fps` that the model can make: for a VAE compressing time `tc`x (Wan2.1: 4)
/// the nearest `tc`k+1 (4 s at 16 fps is 65 frames); for one that does not (`tc` 1) exactly `seconds * fps`;
/// then latent frames rounded up to a multiple of the transformer's temporal patch `pt`.
pub fn frames_for(seconds: u32, fps: u32, tc: usize, pt: usize) -> usize {
    let want = seconds as usize * fps as usize;
    let latent = if tc <= 1 {
        want.max(1)
    } else {
        (want + tc / 2) / tc + 1
    };
    let pt = pt.max(1);
    let latent = latent.div_ceil(pt) * pt;
    (latent - 1) * tc.max(1) + 1
}

/// The pipeline request for stored settings and the inputs read for them.
pub fn to_request(p: &GenParams, conditioning: Conditioning) -> GenerateRequest {
    GenerateRequest {
        prompt: p.prompt.clone(),
        negative_prompt: p.negative_prompt.clone(),
        width: p.width,
        height: p.height,
        frames: p.frames,
        steps: p.steps,
        guidance: p.guidance,
        seed: p.seed,
        conditioning,
        ..GenerateRequest::default()
    }
}

/// A parsed `GET /v1/videos` query.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    /// Cursor: the last id of the previous page.
    pub after: Option<String>,
    /// Page size, 1 to 100.
    pub limit: u32,
    /// Newest first unless `asc`.
    pub order: crate::store::Order,
}

/// Reads the list query; unknown keys are errors.
pub fn parse_list(query: &[(String, String)]) -> Result<ListQuery, ApiError> {
    let mut f = Fields::new(
        query
            .iter()
            .map(|(k, v)| (k.clone(), Field::Text(v.clone())))
            .collect(),
    )?;
    let after = f.string("after")?;
    let limit = f.whole("limit", 1, 100, "")?.unwrap_or(20) as u32;
    let order = match f.string("order")?.as_deref() {
        None | Some("desc") => crate::store::Order::Desc,
        Some("asc") => crate::store::Order::Asc,
        Some(o) => {
            return Err(ApiError::invalid(
                "order",
                format!("Invalid 'order': '{o}'. Expected 'asc' or 'desc'."),
            ))
        }
    };
    f.finish()?;
    Ok(ListQuery {
        after,
        limit,
        order,
    })
}

/// Which file `GET /v1/videos/{id}/content` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The MP4.
    Video,
    /// The middle frame, WebP.
    Thumbnail,
    /// A grid of frames, JPEG.
    Spritesheet,
    /// A film's storyboard: one frame per shot beside its line of text, PNG.
    Storyboard,
}

impl Variant {
    /// File name inside the job's folder.
    pub fn file_name(self) -> &'static str {
        match self {
            Variant::Video => "video.mp4",
            Variant::Thumbnail => "thumbnail.webp",
            Variant::Spritesheet => "spritesheet.jpg",
            Variant::Storyboard => "storyboard.png",
        }
    }

    /// HTTP content type.
    pub fn content_type(self) -> &'static str {
        match self {
            Variant::Video => "video/mp4",
            Variant::Thumbnail => "image/webp",
            Variant::Spritesheet => "image/jpeg",
            Variant::Storyboard => "image/png",
        }
    }
}

/// Reads the content query of a job of `kind` (only films have a storyboard).
pub fn parse_variant(query: &[(String, String)], kind: Kind) -> Result<Variant, ApiError> {
    let mut f = Fields::new(
        query
            .iter()
            .map(|(k, v)| (k.clone(), Field::Text(v.clone())))
            .collect(),
    )?;
    let v = match f.string("variant")?.as_deref() {
        None | Some("video") => Variant::Video,
        Some("thumbnail") => Variant::Thumbnail,
        Some("spritesheet") => Variant::Spritesheet,
        Some("storyboard") if kind == Kind::Film => Variant::Storyboard,
        Some(v) => {
            let films = if kind == Kind::Film {
                ", 'spritesheet' or 'storyboard'"
            } else {
                " or 'spritesheet'"
            };
            return Err(ApiError::invalid(
                "variant",
                format!("Invalid 'variant': '{v}'. Expected 'video', 'thumbnail'{films}."),
            ));
        }
    };
    f.finish()?;
    Ok(v)
}

/// The model a request names (`None`: the default), or a 400 naming the models there are.
pub fn resolve_model(models: &Catalog, name: Option<String>) -> Result<&ModelCard, ApiError> {
    match name {
        None => models.default_model().ok_or_else(|| {
            ApiError::invalid(
                "model",
                "No worker has published a model yet, so there is nothing to generate with: start \
                 `sorrel worker --store ...` with the same store (it serves the embedded model without \
                 --model).",
            )
        }),
        Some(name) => models.get(&name).ok_or_else(|| {
            let has = models.names();
            ApiError::invalid(
                "model",
                if has.is_empty() {
                    format!(
                        "Invalid 'model': '{name}'. No worker has published a model yet: start \
                         `sorrel worker --store ... --model {name}=DIR` with the same store."
                    )
                } else {
                    format!(
                        "Invalid 'model': '{name}'. This server has: {}.",
                        has.join(", ")
                    )
                },
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_map_to_4k_plus_1_frames() {
        assert_eq!(frames_for(4, 16, 4, 1), 65);
        assert_eq!(frames_for(1, 16, 4, 1), 17);
        assert_eq!(frames_for(5, 16, 4, 1), 81);
        assert_eq!(frames_for(1, 24, 4, 1), 25);
        assert_eq!(frames_for(1, 30, 4, 1), 33);
        for s in 1..30 {
            for fps in [8, 16, 24, 25, 30] {
                assert_eq!((frames_for(s, fps, 4, 1) - 1) % 4, 0);
                // The embedded model: no time compression, 2-frame patches.
                let f = frames_for(s, fps, 1, 2);
                assert!(
                    f.is_multiple_of(2) && f >= (s * fps) as usize && f <= (s * fps) as usize + 1
                );
            }
        }
        assert_eq!(frames_for(1, 8, 1, 2), 8);
    }

    #[test]
    fn sizes() {
        let l = Limits::default();
        assert_eq!(parse_size("832x480", &l).unwrap(), (832, 480));
        for bad in [
            "832", "832x", "x480", "832X480", "-16x16", "0x16", "830x480", "1296x16", " 832x480",
        ] {
            let e = parse_size(bad, &l).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("size"), "{bad}");
            assert!(e.message.contains(bad), "{}", e.message);
        }
    }

    #[test]
    fn list_query() {
        let q = |pairs: &[(&str, &str)]| {
            parse_list(
                &pairs
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            q(&[]).unwrap(),
            ListQuery {
                after: None,
                limit: 20,
                order: crate::store::Order::Desc
            }
        );
        assert_eq!(q(&[("limit", "100"), ("order", "asc")]).unwrap().limit, 100);
        assert_eq!(
            q(&[("limit", "0")]).unwrap_err().param.as_deref(),
            Some("limit")
        );
        assert_eq!(
            q(&[("limit", "1.5")]).unwrap_err().param.as_deref(),
            Some("limit")
        );
        assert_eq!(
            q(&[("order", "up")]).unwrap_err().param.as_deref(),
            Some("order")
        );
        assert_eq!(
            q(&[("cursor", "x")]).unwrap_err().code,
            Some("unknown_parameter")
        );
        assert_eq!(
            q(&[("limit", "2"), ("limit", "3")])
                .unwrap_err()
                .param
                .as_deref(),
            Some("limit")
        );
    }

    #[test]
    fn json_bodies_must_be_objects() {
        assert_eq!(json_fields(b"").unwrap_err().code, Some("invalid_json"));
        assert_eq!(
            json_fields(b"{\"prompt\": ").unwrap_err().code,
            Some("invalid_json")
        );
        assert!(json_fields(b"[1]")
            .unwrap_err()
            .message
            .contains("an array"));
        assert_eq!(json_fields(b"{\"a\": 1}").unwrap().len(), 1);
    }
}
