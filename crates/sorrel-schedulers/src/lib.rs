//! Diffusion samplers. Each file holds one sampler and depends on nothing but this small trait, so it can be
//! read (and checked against diffusers) on its own.

pub mod flow_euler;
pub mod unipc;

use std::path::Path;

use candle_core::Tensor;
use serde_json::Value;
use sorrel_core::{Error, Result};

pub use flow_euler::FlowMatchEulerScheduler;
pub use unipc::UniPcScheduler;

/// A noise level `s` in [0, 1] moved towards 1 by a flow `shift`: `shift * s / (1 + (shift - 1) * s)`, the map
/// diffusers' flow-matching schedulers apply to their sigmas (a shift of 1 leaves `s` as it is).
pub fn shift_sigma(s: f64, shift: f64) -> f64 {
    shift * s / (1.0 + (shift - 1.0) * s)
}

/// [`shift_sigma`] in f32 throughout, as torch builds its training table (and as training draws its levels),
/// so the rounding is theirs.
pub fn shift_sigma_f32(s: f32, shift: f32) -> f32 {
    shift * s / (1.0 + (shift - 1.0) * s)
}

/// A sampler that turns model predictions into the next, less noisy, latents.
pub trait Scheduler: Send {
    /// Prepares `n` inference steps and resets all state.
    fn set_timesteps(&mut self, n: usize) -> Result<()>;
    /// The timestep the model sees at each step (integers for UniPC, fractional for Euler).
    fn timesteps(&self) -> &[f32];
    /// The noise level at each step boundary, `timesteps().len() + 1` values ending at the final sigma.
    fn sigmas(&self) -> &[f32];
    /// One step: the model's prediction for `sample` at the current step -> the sample for the next step.
    /// Both: (B, C, F, H, W), f32.
    fn step(&mut self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor>;
    /// As [`Scheduler::step`], for a caller that writes the result back into the tensor it passed as
    /// `sample`, as diffusers' diffusion-forcing pipelines (and SkyReels-V2's own code) do: a sampler that
    /// kept a reference to that tensor sees the new values at its next step. Stateless samplers behave as
    /// [`Scheduler::step`].
    fn step_in_place(&mut self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor> {
        self.step(model_output, sample)
    }
    /// A short name, as accepted by [`from_name`].
    fn name(&self) -> &'static str;
    /// Starts the next [`Scheduler::step`] at step `index` instead of 0, for generations that begin part-way
    /// down the noise schedule (video-to-video). Call after [`Scheduler::set_timesteps`].
    fn begin_at(&mut self, index: usize) -> Result<()>;

    /// `original` noised to the level of step `index`: `(1 - sigma) * original + sigma * noise`, the
    /// flow-matching forward process (diffusers' `add_noise` for UniPC, `scale_noise` for Euler).
    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        let sigma = *self.sigmas().get(index).ok_or_else(|| {
            Error::invalid(format!(
                "step {index} is past the {} prepared steps",
                self.timesteps().len()
            ))
        })?;
        Ok(((original * (1.0 - sigma) as f64)? + (noise * sigma as f64)?)?)
    }
}

/// Rejects a begin index past the prepared steps (shared by the samplers' [`Scheduler::begin_at`]).
pub(crate) fn check_begin(index: usize, steps: usize) -> Result<()> {
    if index >= steps {
        return Err(Error::invalid(format!(
            "cannot begin at step {index}: only {steps} steps are prepared"
        )));
    }
    Ok(())
}

/// Scheduler names accepted by `--scheduler`.
pub const NAMES: [&str; 2] = ["unipc", "euler"];

/// Builds a scheduler from a diffusers `scheduler_config.json` (its `_class_name` picks the sampler).
pub fn from_config_file(path: &Path) -> Result<Box<dyn Scheduler>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let cfg: Value = serde_json::from_str(&text)
        .map_err(|e| Error::model(format!("{} is not valid JSON: {e}", path.display())))?;
    let class = cfg.get("_class_name").and_then(Value::as_str).unwrap_or("");
    let ctx = |e: Error| Error::model(format!("{}: {e}", path.display()));
    match class {
        "UniPCMultistepScheduler" => Ok(Box::new(UniPcScheduler::from_config(&cfg).map_err(ctx)?)),
        "FlowMatchEulerDiscreteScheduler" => Ok(Box::new(FlowMatchEulerScheduler::from_config(&cfg).map_err(ctx)?)),
        other => Err(Error::model(format!(
            "{}: scheduler class `{other}` is not supported; Sorrel has UniPCMultistepScheduler and \
             FlowMatchEulerDiscreteScheduler (pick one with --scheduler {})",
            path.display(),
            NAMES.join("|")
        ))),
    }
}

/// Builds the named scheduler with the model's flow shift (`unipc` as Wan-AI ship it, or `euler`).
pub fn from_name(name: &str, flow_shift: f64) -> Result<Box<dyn Scheduler>> {
    match name {
        "unipc" => Ok(Box::new(UniPcScheduler::new(flow_shift))),
        "euler" => Ok(Box::new(FlowMatchEulerScheduler::new(flow_shift))),
        other => Err(Error::invalid(format!(
            "unknown scheduler `{other}`: choose one of {}",
            NAMES.join(", ")
        ))),
    }
}

/// Reads a config field, falling back to `default` when absent or null.
pub(crate) fn field<T: serde::de::DeserializeOwned>(
    cfg: &Value,
    key: &str,
    default: T,
) -> Result<T> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| Error::model(format!("field `{key}` has an unexpected value {v}: {e}"))),
    }
}

/// Rejects a config whose boolean `key` is set: a feature this sampler does not implement.
pub(crate) fn reject_flag(cfg: &Value, key: &str) -> Result<()> {
    if field(cfg, key, false)? {
        return Err(Error::model(format!(
            "`{key}: true` is not supported by Sorrel's sampler"
        )));
    }
    Ok(())
}
