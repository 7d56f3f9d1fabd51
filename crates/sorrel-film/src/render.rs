//! Rendering a plan shot by shot: each character's reference picture made once, cuts started from their lead
//! character's picture where the model does image to video (or shown every character's picture as VACE
//! references), continuous shots continued from the shot before (a rollout, diffusion forcing, or VACE
//! extension windows), and every finished shot (and picture) cached under a SHA-256 of what made it, written atomically, so a
//! crash or Ctrl-C resumes where it stopped and an edited plan re-renders only the shots that changed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};
use sorrel_core::{Error, Result};
use sorrel_pipeline::compose::context_frames;
use sorrel_pipeline::film::Plan;
use sorrel_pipeline::{
    Conditioning, Event, Forcing, GenerateRequest, Picture, Splice, WanPipeline,
};

use crate::fingerprint::hex;
use crate::layout::{Continuation, FilmLayout, References};

/// Where and for which model a film renders.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// The work folder: `plan.json`, `shots/` and `characters/` (the cache a rerun resumes from).
    pub work: PathBuf,
    /// The identity of the model and its adapters ([`crate::model_fingerprint`] and whatever else changes
    /// the weights), part of every cache key.
    pub fingerprint: String,
    /// Refuse a shot that will not fit this many bytes of memory (`None`: what the machine has now).
    pub memory_room: Option<u64>,
}

/// What a render reports as it goes.
#[derive(Debug, Clone)]
pub enum FilmEvent {
    /// `done` of the film's frames are made (a shot in progress counts by its steps); `label` says what is
    /// being made ("shot 3/6", or a character's name for its picture).
    Frames {
        /// Frames made so far.
        done: usize,
        /// What is being made.
        label: String,
    },
    /// A line worth showing: a shot finished or taken from the cache.
    Line(String),
}

/// A rendered film: each shot's frames, in order.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// Each shot's frames, (F, H, W, 3) f32 in [0, 1].
    pub shots: Vec<Tensor>,
    /// Each shot's cache key (hex SHA-256).
    pub keys: Vec<String>,
    /// The film's key, from its shots' keys: names this exact film (its watermark payload comes from it).
    pub film_key: String,
    /// Prompt words the model's tokenizer does not know, each once.
    pub unknown_words: Vec<String>,
}

/// Frames (F, H, W, 3) f32 in [0, 1] as pictures.
pub(crate) fn pictures(frames: &Tensor) -> Result<Vec<Picture>> {
    let (f, h, w, _) = frames.dims4()?;
    let data = frames.flatten_all()?.to_vec1::<f32>()?;
    Ok((0..f)
        .map(|i| Picture {
            width: w,
            height: h,
            rgb: data[i * h * w * 3..(i + 1) * h * w * 3]
                .iter()
                .map(|&v| sorrel_media::to_u8(v))
                .collect(),
        })
        .collect())
}

fn picture_hash(p: &Picture) -> String {
    let mut h = Sha256::new();
    h.update((p.width as u64).to_le_bytes());
    h.update((p.height as u64).to_le_bytes());
    h.update(&p.rgb);
    hex(&h.finalize())
}

/// A cached shot's frames, or `None` when the cache has none (or a damaged one, which is redone).
fn read_cached(path: &Path) -> Option<Tensor> {
    let mut t = candle_core::safetensors::load(path, &Device::Cpu).ok()?;
    t.remove("frames")
}

/// The frames of finished shot `index` (from 0) in a film's work folder, RGB8 per frame (for scoring a film
/// after it is made; the cache keeps them in f32, before encoding). `None` when the shot is not there.
pub fn finished_shot(work: &Path, index: usize) -> Option<Vec<Vec<u8>>> {
    let prefix = format!("{:02}-", index + 1);
    let path = std::fs::read_dir(work.join("shots"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with(&prefix) && name.ends_with(".safetensors")
        })?;
    let pictures = pictures(&read_cached(&path)?).ok()?;
    Some(pictures.into_iter().map(|p| p.rgb).collect())
}

/// Writes frames to the cache atomically: a reader (or a resumed run) sees the whole shot or none of it.
fn write_cached(path: &Path, frames: &Tensor) -> Result<()> {
    let tmp = path.with_extension("partial");
    candle_core::safetensors::save(
        &[("frames".to_string(), frames.clone())]
            .into_iter()
            .collect(),
        &tmp,
    )?;
    std::fs::rename(&tmp, path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// What a shot's first generation starts from.
enum Start {
    /// One generation (text, a first frame, references, or a rollout or forcing continuation).
    Generate(Conditioning),
    /// VACE extension windows from these frames (the shot before).
    Extend(Vec<Picture>),
}

/// A name as a file name: letters and digits, the rest as `-`.
pub fn slug(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_alphanumeric() { c } else { '-' })
        .collect()
}

/// Renders `plan` laid out as `layout` on `pipe`, reporting to `on` (which returns `false` to stop: the render
/// then ends with [`Error::Cancelled`], keeping every shot already finished in the cache).
pub fn render(
    pipe: &WanPipeline,
    plan: &Plan,
    layout: &FilmLayout,
    opts: &RenderOptions,
    on: &mut dyn FnMut(FilmEvent) -> bool,
) -> Result<Rendered> {
    let work = &opts.work;
    for sub in ["shots", "characters"] {
        let d = work.join(sub);
        std::fs::create_dir_all(&d).map_err(|source| Error::Io { path: d, source })?;
    }
    sorrel_media::write_file(&work.join("plan.json"), plan.to_json().as_bytes())
        .map_err(crate::output)?;
    let key = |parts: &[&str]| {
        let mut h = Sha256::new();
        h.update(b"sorrel-film-shot-v1");
        h.update(opts.fingerprint.as_bytes());
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p.as_bytes());
        }
        hex(&h.finalize())
    };
    let request =
        |prompt: String, frames: usize, seed: u64, conditioning: Conditioning| GenerateRequest {
            prompt,
            negative_prompt: String::new(),
            width: layout.width,
            height: layout.height,
            frames,
            steps: layout.steps,
            guidance: layout.guidance,
            guidance_2: None,
            seed,
            max_sequence_length: None,
            scheduler: None,
            flow_shift: None,
            init_latents: None,
            conditioning,
            forcing: Forcing::default(),
        };
    let settings = layout.settings();
    let mut unknown: Vec<String> = Vec::new();
    let mut run = |req: &GenerateRequest,
                   done: usize,
                   label: String,
                   on: &mut dyn FnMut(FilmEvent) -> bool|
     -> Result<Tensor> {
        req.validate(pipe)?;
        pipe.check_memory(req, opts.memory_room)?;
        let shot_frames = req.frames;
        let mut on_event = |ev: &Event| match ev {
            Event::Step { index, total, .. } => on(FilmEvent::Frames {
                done: done + shot_frames * index / (*total).max(1),
                label: label.clone(),
            }),
            _ => true,
        };
        let video = pipe.generate(req, &mut on_event)?;
        for w in video.unknown_words {
            if !unknown.contains(&w) {
                unknown.push(w);
            }
        }
        Ok(video.frames)
    };

    // Each character's reference picture: the first frame of its first shot as lead, made once.
    let mut refs: Vec<(String, Picture)> = Vec::new();
    if layout.references != References::None {
        for c in &plan.characters {
            let Some(first) = (0..plan.shots.len()).find(|&i| {
                !plan.shots[i].continues && plan.shots[i].characters.first() == Some(&c.name)
            }) else {
                continue;
            };
            let seed = Plan::character_seed(c);
            let prompt = plan.prompt_of(first);
            let k = key(&["character", &prompt, &seed.to_string(), &settings]);
            let path =
                work.join("characters")
                    .join(format!("{}-{}.safetensors", slug(&c.name), &k[..16]));
            let frames = match read_cached(&path) {
                Some(f) => f,
                None => {
                    let req = request(prompt, layout.character_frames, seed, Conditioning::None);
                    let f = run(&req, 0, c.name.clone(), on)?.narrow(0, 0, 1)?;
                    write_cached(&path, &f)?;
                    f
                }
            };
            let pic = pictures(&frames)?.remove(0);
            let png =
                sorrel_media::Frame::new(pic.width as u32, pic.height as u32, pic.rgb.clone())
                    .and_then(|f| sorrel_media::encode_png(&f))
                    .map_err(crate::output)?;
            let png_path = work
                .join("characters")
                .join(format!("{}.png", slug(&c.name)));
            sorrel_media::write_file(&png_path, &png).map_err(crate::output)?;
            refs.push((c.name.clone(), pic));
        }
    }

    let mut shots: Vec<Tensor> = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    let mut done = 0usize;
    let n = plan.shots.len();
    let tc = layout.time_compression;
    for (i, s) in plan.shots.iter().enumerate() {
        let seed = plan.shot_seed(i);
        let prompt = plan.prompt_of(i);
        let label = format!("shot {}/{n}", i + 1);
        let count = layout.frames[i];
        // The pictures of the shot's characters that have one, lead first.
        let shown: Vec<&Picture> = s
            .characters
            .iter()
            .filter_map(|name| refs.iter().find(|(r, _)| r == name).map(|(_, p)| p))
            .collect();
        let vace_refs: Vec<Picture> = match layout.references {
            References::Vace => shown.iter().map(|p| (*p).clone()).collect(),
            _ => vec![],
        };
        let refs_key = vace_refs
            .iter()
            .map(picture_hash)
            .collect::<Vec<_>>()
            .join(" ");
        // What the shot starts from, named for its cache key.
        let (start, given) = if s.continues {
            let given = format!("continues {} refs {refs_key}", keys[i - 1]);
            match layout.continuation {
                Continuation::VaceExtension => {
                    // A window keeps at most the last few frames: the rest of the shot before is not needed.
                    let before = &shots[i - 1];
                    let keep = before.dim(0)?.min(context_frames(tc));
                    let tail = before.narrow(0, before.dim(0)? - keep, keep)?;
                    (Start::Extend(pictures(&tail)?), given)
                }
                _ => (
                    Start::Generate(Conditioning::Continue {
                        before: pictures(&shots[i - 1])?,
                        after: vec![],
                    }),
                    given,
                ),
            }
        } else {
            match (layout.references, shown.first()) {
                (References::FirstFrame, Some(p)) => (
                    Start::Generate(Conditioning::Image {
                        first: (*p).clone(),
                        last: None,
                    }),
                    format!("from {}", picture_hash(p)),
                ),
                (References::Vace, Some(_)) => (
                    Start::Generate(Conditioning::Compose {
                        video: None,
                        mask: None,
                        references: vace_refs.clone(),
                    }),
                    format!("refs {refs_key}"),
                ),
                _ => (Start::Generate(Conditioning::None), "text".to_string()),
            }
        };
        let k = key(&[
            "shot",
            &prompt,
            &count.to_string(),
            &seed.to_string(),
            &settings,
            &given,
        ]);
        let path = work
            .join("shots")
            .join(format!("{:02}-{}.safetensors", i + 1, &k[..16]));
        let frames = match read_cached(&path) {
            Some(f) => {
                on(FilmEvent::Line(format!(
                    "{label}: cached ({})",
                    path.display()
                )));
                f
            }
            None => {
                let t = Instant::now();
                let mut made = Vec::new();
                let mut context = match start {
                    Start::Generate(conditioning) => {
                        let first = layout.first_window(count);
                        let req = request(prompt.clone(), first, seed, conditioning);
                        let f = run(&req, done, label.clone(), on)?;
                        let c = pictures(&f)?;
                        made.push(f);
                        c
                    }
                    Start::Extend(before) => before,
                };
                // The rest of a shot the film makes window by window (VACE): each window keeps the last
                // frames made so far (mask black) and generates the next ones.
                let mut have: usize = made.iter().map(|f| f.dim(0).unwrap_or(0)).sum();
                let mut window = 1u64;
                while have < count && layout.continuation == Continuation::VaceExtension {
                    let keep = context.len().min(context_frames(tc));
                    let new = (count - have).min(layout.window.saturating_sub(keep).max(1));
                    let mut splice = Splice::extend(
                        &context[context.len() - keep..],
                        new,
                        false,
                        tc,
                        (layout.width, layout.height),
                    )?;
                    if let Conditioning::Compose { references, .. } = &mut splice.conditioning {
                        references.clone_from(&vace_refs);
                    }
                    let req = request(
                        prompt.clone(),
                        splice.frames,
                        seed.wrapping_add(window),
                        splice.conditioning.clone(),
                    );
                    let f = splice.new_part(&run(&req, done + have, label.clone(), on)?)?;
                    // The next window's context: the last frames of what came before and of this window.
                    context.extend(pictures(&f)?);
                    let drop = context.len().saturating_sub(context_frames(tc));
                    context.drain(..drop);
                    have += f.dim(0)?;
                    made.push(f);
                    window += 1;
                }
                let f = Tensor::cat(&made, 0)?;
                write_cached(&path, &f)?;
                on(FilmEvent::Line(format!(
                    "{label}: {} frames in {:.1} s: {}",
                    f.dim(0)?,
                    t.elapsed().as_secs_f64(),
                    s.text
                )));
                f
            }
        };
        done += count;
        if !on(FilmEvent::Frames { done, label }) {
            return Err(Error::Cancelled);
        }
        shots.push(frames);
        keys.push(k);
    }
    let film_key = key(&keys.iter().map(String::as_str).collect::<Vec<_>>());
    Ok(Rendered {
        shots,
        keys,
        film_key,
        unknown_words: unknown,
    })
}
