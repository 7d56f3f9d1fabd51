//! An exponential moving average of the weights: what gets shipped, since it samples better than the
//! last step's weights.

use candle_core::{Tensor, Var};

use crate::Result;

/// The averaged copy of a set of named parameters.
pub struct Ema {
    /// Weight of the old average at each update (0.998 means a horizon of about 500 steps).
    pub decay: f64,
    pub(crate) shadow: Vec<(String, Tensor)>,
}

impl Ema {
    /// Starts the average at the parameters' current values.
    pub fn new(params: &[(String, Var)], decay: f64) -> Result<Self> {
        let shadow = params
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().detach().copy()?)))
            .collect::<Result<_>>()?;
        Ok(Self { decay, shadow })
    }

    /// Moves the average towards the parameters' current values (matched by position).
    pub fn update(&mut self, params: &[(String, Var)]) -> Result<()> {
        for ((_, avg), (_, var)) in self.shadow.iter_mut().zip(params) {
            let p = var.as_tensor().detach();
            *avg = ((&*avg * self.decay)? + (p * (1.0 - self.decay))?)?;
        }
        Ok(())
    }

    /// The averaged weights by name.
    pub fn weights(&self) -> &[(String, Tensor)] {
        &self.shadow
    }
}
