//! The models a server has loaded, by API name.

use std::sync::Arc;

use sorrel_pipeline::{LoadOptions, WanPipeline};

use crate::config::ModelSpec;
use crate::error::ServeError;

/// One loaded model.
pub struct LoadedModel {
    /// The API name.
    pub name: String,
    /// The pipeline, shared by all workers.
    pub pipe: Arc<WanPipeline>,
}

/// Every loaded model; the first is the default.
pub struct Models {
    list: Vec<LoadedModel>,
}

impl Models {
    /// Loads each folder (slow: reads all weights).
    pub fn load(specs: &[ModelSpec], opts: &LoadOptions) -> Result<Self, ServeError> {
        if specs.is_empty() {
            return Err(ServeError::Config(
                "no model to serve: pass --model NAME=DIR (a Wan2.1 diffusers or original folder)"
                    .into(),
            ));
        }
        let mut list: Vec<LoadedModel> = Vec::new();
        for spec in specs {
            if list.iter().any(|m| m.name == spec.name) {
                return Err(ServeError::Config(format!(
                    "two models are named `{}`: give each --model a distinct NAME=DIR",
                    spec.name
                )));
            }
            let pipe = WanPipeline::load(&spec.dir, opts).map_err(|e| ServeError::Model {
                name: spec.name.clone(),
                dir: spec.dir.clone(),
                reason: Box::new(e),
            })?;
            list.push(LoadedModel {
                name: spec.name.clone(),
                pipe: Arc::new(pipe),
            });
        }
        Ok(Self { list })
    }

    /// The model called `name`.
    pub fn get(&self, name: &str) -> Option<&LoadedModel> {
        self.list.iter().find(|m| m.name == name)
    }

    /// The model used when a request names none.
    pub fn default_model(&self) -> &LoadedModel {
        &self.list[0]
    }

    /// All names, default first.
    pub fn names(&self) -> Vec<&str> {
        self.list.iter().map(|m| m.name.as_str()).collect()
    }
}
