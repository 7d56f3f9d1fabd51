//! UniPC multistep sampler (Zhao et al. 2023) in the configuration Wan-AI ship: flow-matching prediction with
//! flow sigmas, data (x0) prediction, the bh2 variant, order 2, order 1 on the last step, final sigma zero.
//!
//! Mirrors diffusers 0.42 `UniPCMultistepScheduler`: sigmas are built in f64 and stored as f32; the per-step
//! coefficients are computed in f32, as torch does on its 0-dim f32 tensors.

use candle_core::Tensor;
use serde_json::Value;
use sorrel_core::{Error, Result};

use crate::{field, reject_flag, Scheduler};

/// UniPC with `prediction_type="flow_prediction"`, `use_flow_sigmas=True`, `solver_type="bh2"`.
pub struct UniPcScheduler {
    flow_shift: f64,
    num_train_timesteps: usize,
    solver_order: usize,
    lower_order_final: bool,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    step_index: usize,
    lower_order_nums: usize,
    this_order: usize,
    /// x0 predictions of the last `solver_order` steps, oldest first.
    model_outputs: Vec<Option<Tensor>>,
    last_sample: Option<Tensor>,
}

impl UniPcScheduler {
    /// The Wan2.1 configuration with the given flow shift (3.0 for T2V).
    pub fn new(flow_shift: f64) -> Self {
        Self {
            flow_shift,
            num_train_timesteps: 1000,
            solver_order: 2,
            lower_order_final: true,
            timesteps: vec![],
            sigmas: vec![],
            step_index: 0,
            lower_order_nums: 0,
            this_order: 1,
            model_outputs: vec![None, None],
            last_sample: None,
        }
    }

    /// From a diffusers `scheduler_config.json`; options this implementation does not mirror are errors.
    pub fn from_config(cfg: &Value) -> Result<Self> {
        let expect = |key: &str, want: &str, default: &str| -> Result<()> {
            let got: String = field(cfg, key, default.to_string())?;
            if got != want {
                return Err(Error::model(format!(
                    "UniPC `{key}: {got}` is not supported (Sorrel implements `{want}`, as Wan models use)"
                )));
            }
            Ok(())
        };
        expect("prediction_type", "flow_prediction", "epsilon")?;
        expect("solver_type", "bh2", "bh2")?;
        expect("final_sigmas_type", "zero", "zero")?;
        expect("timestep_spacing", "linspace", "linspace")?;
        if !field(cfg, "use_flow_sigmas", false)? {
            return Err(Error::model(
                "UniPC without `use_flow_sigmas: true` is not supported",
            ));
        }
        if !field(cfg, "predict_x0", true)? {
            return Err(Error::model(
                "UniPC with `predict_x0: false` is not supported",
            ));
        }
        for flag in [
            "use_karras_sigmas",
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "use_dynamic_shifting",
            "thresholding",
        ] {
            reject_flag(cfg, flag)?;
        }
        if field::<Option<f64>>(cfg, "shift_terminal", None)?.is_some() {
            return Err(Error::model("UniPC `shift_terminal` is not supported"));
        }
        if !field::<Vec<usize>>(cfg, "disable_corrector", vec![])?.is_empty() {
            return Err(Error::model("UniPC `disable_corrector` is not supported"));
        }
        let order: usize = field(cfg, "solver_order", 2)?;
        if !(1..=2).contains(&order) {
            return Err(Error::model(format!(
                "UniPC solver_order {order} is not supported (1 or 2)"
            )));
        }
        let mut s = Self::new(field(cfg, "flow_shift", 1.0)?);
        s.num_train_timesteps = field(cfg, "num_train_timesteps", 1000)?;
        s.solver_order = order;
        s.lower_order_final = field(cfg, "lower_order_final", true)?;
        s.model_outputs = vec![None; order];
        Ok(s)
    }

    /// The flow shift in use.
    pub fn flow_shift(&self) -> f64 {
        self.flow_shift
    }

    /// alpha, sigma and lambda = log(alpha) - log(sigma) of the sigma at step boundary `i`.
    fn lambda(&self, i: usize) -> (f32, f32, f32) {
        let sigma = self.sigmas[i];
        let alpha = 1.0 - sigma;
        (alpha, sigma, alpha.ln() - sigma.ln())
    }

    /// The bh2 weights shared by predictor and corrector: (h_phi_1, B_h, R, b) for `order` (1 or 2) and `rk`.
    fn coefficients(h: f32, order: usize) -> (f32, f32, Vec<f32>) {
        let hh = -h;
        let h_phi_1 = hh.exp_m1();
        let b_h = hh.exp_m1();
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1.0f32;
        let mut b = Vec::with_capacity(order);
        for i in 1..=order {
            b.push(h_phi_k * factorial / b_h);
            factorial *= (i + 1) as f32;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        (h_phi_1, b_h, b)
    }

    /// Predictor: x_{t} from x_{s0} and the stored x0 predictions.
    fn predictor(&self, x: &Tensor, order: usize) -> Result<Tensor> {
        let i = self.step_index;
        let (alpha_t, sigma_t, lambda_t) = self.lambda(i + 1);
        let (_, sigma_s0, lambda_s0) = self.lambda(i);
        let h = lambda_t - lambda_s0;
        let m0 = self.model_outputs[self.solver_order - 1]
            .as_ref()
            .expect("model output stored");
        let (h_phi_1, b_h, _) = Self::coefficients(h, order);
        let x_t = ((x * (sigma_t / sigma_s0) as f64)? - (m0 * (alpha_t * h_phi_1) as f64)?)?;
        if order == 2 {
            let m1 = self.model_outputs[self.solver_order - 2]
                .as_ref()
                .expect("previous model output stored");
            let (_, _, lambda_s1) = self.lambda(i - 1);
            let rk = (lambda_s1 - lambda_s0) / h;
            // For order 2 diffusers fixes rho = 0.5 rather than solving the 1x1 system.
            let d1 = ((m1 - m0)? / rk as f64)?;
            let pred_res = (d1 * 0.5)?;
            Ok((x_t - (pred_res * (alpha_t * b_h) as f64)?)?)
        } else {
            Ok(x_t)
        }
    }

    /// Corrector: refines the previous step's x_t with the new x0 prediction `model_t`.
    fn corrector(&self, model_t: &Tensor, last_sample: &Tensor, order: usize) -> Result<Tensor> {
        let i = self.step_index;
        let (alpha_t, sigma_t, lambda_t) = self.lambda(i);
        let (_, sigma_s0, lambda_s0) = self.lambda(i - 1);
        let h = lambda_t - lambda_s0;
        let m0 = self.model_outputs[self.solver_order - 1]
            .as_ref()
            .expect("model output stored");
        let (h_phi_1, b_h, b) = Self::coefficients(h, order);
        let x_t_ =
            ((last_sample * (sigma_t / sigma_s0) as f64)? - (m0 * (alpha_t * h_phi_1) as f64)?)?;
        let d1_t = (model_t - m0)?;
        let res = if order == 1 {
            (d1_t * 0.5)?
        } else {
            let m1 = self.model_outputs[self.solver_order - 2]
                .as_ref()
                .expect("previous model output stored");
            let (_, _, lambda_s1) = self.lambda(i - 2);
            let rk = (lambda_s1 - lambda_s0) / h;
            // Solve [[1, 1], [rk, 1]] rho = b (R's rows are rks^0 and rks^1 with rks = [rk, 1]).
            let det = 1.0 - rk;
            let rho0 = (b[0] - b[1]) / det;
            let rho1 = (b[1] - rk * b[0]) / det;
            let d1 = ((m1 - m0)? / rk as f64)?;
            ((d1 * rho0 as f64)? + (d1_t * rho1 as f64)?)?
        };
        Ok((x_t_ - (res * (alpha_t * b_h) as f64)?)?)
    }
}

impl Scheduler for UniPcScheduler {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Err(Error::invalid("the number of steps must be at least 1"));
        }
        let nt = self.num_train_timesteps as f64;
        let shift = self.flow_shift;
        // np.linspace(1, 1/nt, n+1)[:-1], shifted, in f64; numpy computes i*step + start.
        let step = (1.0 / nt - 1.0) / n as f64;
        let mut sig: Vec<f64> = (0..n)
            .map(|i| crate::shift_sigma(i as f64 * step + 1.0, shift))
            .collect();
        if (sig[0] - 1.0).abs() < 1e-6 {
            sig[0] -= 1e-6;
        }
        // The model sees the truncated integer timestep; the solver uses the float sigma.
        self.timesteps = sig.iter().map(|s| (s * nt) as i64 as f32).collect();
        self.sigmas = sig
            .iter()
            .map(|&s| s as f32)
            .chain(std::iter::once(0.0))
            .collect();
        self.step_index = 0;
        self.lower_order_nums = 0;
        self.this_order = 1;
        self.model_outputs = vec![None; self.solver_order];
        self.last_sample = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn step(&mut self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let n = self.timesteps.len();
        if self.step_index >= n {
            return Err(Error::invalid(
                "UniPC: step() called more times than set_timesteps() prepared",
            ));
        }
        let sigma = self.sigmas[self.step_index];
        let x0 = (sample - (model_output * sigma as f64)?)?;
        let sample = match (&self.last_sample, self.step_index > 0) {
            (Some(last), true) => self.corrector(&x0, last, self.this_order)?,
            _ => sample.clone(),
        };
        self.model_outputs.rotate_left(1);
        *self.model_outputs.last_mut().expect("solver_order >= 1") = Some(x0);
        let this_order = if self.lower_order_final {
            self.solver_order.min(n - self.step_index)
        } else {
            self.solver_order
        };
        self.this_order = this_order.min(self.lower_order_nums + 1);
        let prev = self.predictor(&sample, self.this_order)?;
        self.last_sample = Some(sample);
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        self.step_index += 1;
        Ok(prev)
    }

    fn step_in_place(&mut self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let corrected = self.step_index > 0 && self.last_sample.is_some();
        let prev = self.step(model_output, sample)?;
        // Without a corrector diffusers keeps the very tensor it was given as the last sample; the caller
        // then overwrites it with the result, so the next corrector reads the result, not the input.
        if !corrected {
            self.last_sample = Some(prev.clone());
        }
        Ok(prev)
    }

    fn name(&self) -> &'static str {
        "unipc"
    }

    fn begin_at(&mut self, index: usize) -> Result<()> {
        crate::check_begin(index, self.timesteps.len())?;
        // As diffusers' step index found from the first timestep: the solver history stays empty, so the
        // first step taken is first order and has no corrector.
        self.step_index = index;
        Ok(())
    }
}
