//! AdamW as `torch.optim.AdamW` computes it (decoupled weight decay, bias-corrected moments, epsilon added
//! after the square root), with its moments kept by parameter name so that checkpoints can hold them.

use candle_core::{backprop::GradStore, Tensor, Var};

use crate::Result;

/// AdamW's settings, with PyTorch's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay (per unit of learning rate).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

/// One parameter and its moments.
pub(crate) struct Slot {
    pub name: String,
    pub var: Var,
    pub m: Tensor,
    pub v: Tensor,
}

/// The optimiser over a set of named parameters.
pub struct AdamW {
    pub(crate) slots: Vec<Slot>,
    /// Steps taken so far (the bias correction's exponent).
    pub(crate) step: u64,
    /// Settings; `lr` may be changed between steps (schedules).
    pub config: AdamWConfig,
}

impl AdamW {
    /// Starts with zero moments for `params` (name, variable).
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let slots = params
            .into_iter()
            .map(|(name, var)| {
                let zeros = var.as_tensor().zeros_like()?;
                Ok(Slot {
                    name,
                    var,
                    m: zeros.clone(),
                    v: zeros,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            slots,
            step: 0,
            config,
        })
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update from `grads`. Parameters without a gradient are left alone, as PyTorch does.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        for slot in self.slots.iter_mut() {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            // Gradients carry the graph of the backward pass; kept in the moments, every step's graph
            // would stay alive (memory grows by the activations of each step).
            let g = &g.detach();
            let p = slot.var.as_tensor().detach();
            let p = (p * (1.0 - c.lr * c.weight_decay))?;
            // torch's lerp: m + (1 - beta1) (g - m).
            slot.m = (&slot.m + ((g - &slot.m)? * (1.0 - c.beta1))?)?;
            slot.v = ((&slot.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((slot.v.sqrt()? / bias2_sqrt)? + c.eps)?;
            let update = ((&slot.m / denom)? * (c.lr / bias1))?;
            slot.var.set(&(p - update)?)?;
        }
        Ok(())
    }
}
