//! The transformer a pipeline runs: one model (Wan2.1, Wan2.2 TI2V), or Wan2.2 A14B's two experts, a high-noise
//! one for the steps whose timestep is at or above the boundary and a low-noise one for the rest.
//!
//! At most one expert is resident. Loading both would double the largest part of the memory (two 14B
//! transformers: 57 GB in bf16) while only one runs at a time; the loaded one is let go before the other
//! loads, which costs one load per switch (twice per generation) against minutes of denoising.

use std::sync::{Arc, Mutex};

use sorrel_core::{Error, Result};
use sorrel_models::wan::transformer::WanTransformer3DModel;

/// Builds one expert from its weights.
pub(crate) type ExpertLoader = Box<dyn Fn() -> Result<WanTransformer3DModel> + Send + Sync>;

/// One transformer, or two experts switched by timestep.
pub(crate) struct Experts {
    /// The timestep at and above which expert 0 runs (diffusers' `boundary_ratio * num_train_timesteps`);
    /// `None`: one model.
    boundary: Option<f64>,
    /// How to load each expert again after it was let go (empty for one model, which is never let go).
    loaders: Vec<ExpertLoader>,
    /// The resident expert and its index.
    resident: Mutex<Option<(usize, Arc<WanTransformer3DModel>)>>,
}

impl Experts {
    /// A single transformer, resident for the pipeline's life.
    pub(crate) fn one(model: WanTransformer3DModel) -> Self {
        Self {
            boundary: None,
            loaders: Vec::new(),
            resident: Mutex::new(Some((0, Arc::new(model)))),
        }
    }

    /// Two experts switched at `boundary` (a timestep); `first` is expert 0, already loaded.
    pub(crate) fn two(
        first: WanTransformer3DModel,
        boundary: f64,
        loaders: [ExpertLoader; 2],
    ) -> Self {
        Self {
            boundary: Some(boundary),
            loaders: loaders.into(),
            resident: Mutex::new(Some((0, Arc::new(first)))),
        }
    }

    /// The expert that runs at timestep `t`.
    pub(crate) fn index_for(&self, t: f64) -> usize {
        match self.boundary {
            Some(b) if t < b => 1,
            _ => 0,
        }
    }

    /// Expert `k`, loading it when another is resident. Callers drop what they hold of the other expert
    /// first, so its memory is freed before this one loads.
    pub(crate) fn get(&self, k: usize) -> Result<Arc<WanTransformer3DModel>> {
        let mut slot = self.resident.lock().map_err(|_| {
            Error::model("a generation panicked while switching experts".to_string())
        })?;
        if let Some((i, m)) = slot.as_ref() {
            if *i == k {
                return Ok(m.clone());
            }
        }
        let load = self.loaders.get(k).ok_or_else(|| {
            Error::model(format!("this model has no expert {k} (one transformer)"))
        })?;
        *slot = None;
        let model = Arc::new(load()?);
        *slot = Some((k, model.clone()));
        Ok(model)
    }

    /// The resident expert, for what both experts share (configuration, dtype, sizes); expert 0 again if a
    /// load failed and left none.
    pub(crate) fn resident(&self) -> Result<Arc<WanTransformer3DModel>> {
        let k = self
            .resident
            .lock()
            .map_err(|_| Error::model("a generation panicked while switching experts".to_string()))?
            .as_ref()
            .map_or(0, |(i, _)| *i);
        self.get(k)
    }
}
