//! Flow-matching Euler sampler: x_next = x + (sigma_next - sigma) * v.
//!
//! Mirrors diffusers 0.42 `FlowMatchEulerDiscreteScheduler` without dynamic shifting. Its sigma range comes
//! from the training table, which is already shifted once in f32; `set_timesteps` then shifts again in f64
//! (so the smallest sigma is shifted twice), exactly as diffusers does.

use candle_core::Tensor;
use serde_json::Value;
use sorrel_core::{Error, Result};

use crate::{field, reject_flag, Scheduler};

/// Flow-matching Euler with a static shift.
pub struct FlowMatchEulerScheduler {
    shift: f64,
    num_train_timesteps: usize,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    step_index: usize,
}

impl FlowMatchEulerScheduler {
    /// With the given shift (diffusers' default is 1.0; Wan's tests use 7.0).
    pub fn new(shift: f64) -> Self {
        Self {
            shift,
            num_train_timesteps: 1000,
            timesteps: vec![],
            sigmas: vec![],
            step_index: 0,
        }
    }

    /// From a diffusers `scheduler_config.json`; options this implementation does not mirror are errors.
    pub fn from_config(cfg: &Value) -> Result<Self> {
        for flag in [
            "use_dynamic_shifting",
            "use_karras_sigmas",
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "invert_sigmas",
            "stochastic_sampling",
        ] {
            reject_flag(cfg, flag)?;
        }
        if field::<Option<f64>>(cfg, "shift_terminal", None)?.is_some() {
            return Err(Error::model(
                "FlowMatchEuler `shift_terminal` is not supported",
            ));
        }
        let mut s = Self::new(field(cfg, "shift", 1.0)?);
        s.num_train_timesteps = field(cfg, "num_train_timesteps", 1000)?;
        Ok(s)
    }

    /// The shift in use.
    pub fn shift(&self) -> f64 {
        self.shift
    }
}

impl Scheduler for FlowMatchEulerScheduler {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Err(Error::invalid("the number of steps must be at least 1"));
        }
        let nt = self.num_train_timesteps;
        // The training table's extremes, in f32 as torch computes them at construction.
        let shift32 = self.shift as f32;
        let train = |t: f32| crate::shift_sigma_f32(t / nt as f32, shift32);
        let (sigma_max, sigma_min) = (train(nt as f32) as f64, train(1.0) as f64);
        let (t0, t1) = (sigma_max * nt as f64, sigma_min * nt as f64);
        let sig: Vec<f32> = (0..n)
            .map(|i| {
                // np.linspace: i*step + start, with the last point set to `stop` exactly.
                let t = match i {
                    0 => t0,
                    i if i == n - 1 => t1,
                    i => i as f64 * ((t1 - t0) / (n - 1) as f64) + t0,
                };
                crate::shift_sigma(t / nt as f64, self.shift) as f32
            })
            .collect();
        self.timesteps = sig.iter().map(|s| s * nt as f32).collect();
        self.sigmas = sig.into_iter().chain(std::iter::once(0.0)).collect();
        self.step_index = 0;
        Ok(())
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn step(&mut self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let i = self.step_index;
        if i >= self.timesteps.len() {
            return Err(Error::invalid(
                "FlowMatchEuler: step() called more times than set_timesteps() prepared",
            ));
        }
        let dt = self.sigmas[i + 1] - self.sigmas[i];
        self.step_index += 1;
        Ok((sample + (model_output * dt as f64)?)?)
    }

    fn name(&self) -> &'static str {
        "euler"
    }

    fn begin_at(&mut self, index: usize) -> Result<()> {
        crate::check_begin(index, self.timesteps.len())?;
        self.step_index = index;
        Ok(())
    }
}
