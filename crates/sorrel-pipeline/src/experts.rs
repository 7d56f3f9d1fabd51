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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Weak;

    use candle_core::{DType, Device};
    use sorrel_core::TensorSource;
    use sorrel_models::wan::config::WanTransformerConfig;

    fn tiny(sub: &str) -> Result<WanTransformer3DModel> {
        let dir = sorrel_testkit::fixture("wan22-tiny-a14b/pipeline").join(sub);
        let cfg = WanTransformerConfig::from_diffusers_file(&dir.join("config.json"))?;
        let vb = TensorSource::open_dir(&dir, "diffusion_pytorch_model")?
            .into_var_builder(DType::F32, &Device::Cpu);
        Ok(WanTransformer3DModel::new(&cfg, vb)?)
    }

    /// Each expert loads only once the other is gone: the loader of one checks that nothing holds the other.
    #[test]
    fn the_two_experts_are_never_resident_together() {
        let last: Arc<Mutex<Option<Weak<WanTransformer3DModel>>>> = Arc::new(Mutex::new(None));
        let loader = |sub: &'static str| -> ExpertLoader {
            let last = last.clone();
            Box::new(move || {
                let other = last.lock().unwrap().take();
                assert!(
                    other.and_then(|w| w.upgrade()).is_none(),
                    "the other expert is still resident while {sub} loads"
                );
                tiny(sub)
            })
        };
        let experts = Experts::two(
            tiny("transformer").unwrap(),
            875.0,
            [loader("transformer"), loader("transformer_2")],
        );
        assert_eq!(
            (
                experts.index_for(999.0),
                experts.index_for(875.0),
                experts.index_for(874.0)
            ),
            (0, 0, 1)
        );
        for k in [0, 1, 0, 1] {
            let m = experts.get(k).unwrap();
            *last.lock().unwrap() = Some(Arc::downgrade(&m));
            // A caller drops its handle before asking for the other expert, as the denoising loop does.
            drop(m);
        }
    }
}
