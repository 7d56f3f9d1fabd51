//! The models a node can take requests for: those its own workers loaded, and, with a shared store, those
//! that worker processes elsewhere published.

use std::sync::Arc;

use sorrel_pipeline::{LoadOptions, ModelInfo, WanPipeline};

use crate::config::ModelSpec;
use crate::error::ServeError;
use crate::store::Registered;

/// A model as requests see it: its API name and what it is and can do. A node checks a request against
/// this alone, so an API node that loads no weights refuses the same requests a worker would.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCard {
    /// The API name.
    pub name: String,
    /// Its description (defaults, limits, modes, latent geometry).
    pub info: ModelInfo,
}

/// One loaded model.
pub struct LoadedModel {
    /// The API name.
    pub name: String,
    /// The pipeline, shared by all workers.
    pub pipe: Arc<WanPipeline>,
    /// The folder it was loaded from (a film's shot cache is keyed by its files).
    pub dir: std::path::PathBuf,
}

impl LoadedModel {
    /// Its card.
    pub fn card(&self) -> ModelCard {
        ModelCard {
            name: self.name.clone(),
            info: self.pipe.info.clone(),
        }
    }
}

/// Every loaded model; the first is the default. Empty on an API-only node.
pub struct Models {
    list: Vec<LoadedModel>,
}

impl Models {
    /// No models: an API-only node's.
    pub fn none() -> Self {
        Self { list: Vec::new() }
    }

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
                dir: spec.dir.clone(),
            });
        }
        Ok(Self { list })
    }

    /// The model called `name`.
    pub fn get(&self, name: &str) -> Option<&LoadedModel> {
        self.list.iter().find(|m| m.name == name)
    }

    /// All names, default first.
    pub fn names(&self) -> Vec<&str> {
        self.list.iter().map(|m| m.name.as_str()).collect()
    }

    /// The cards of the loaded models, default first.
    pub fn cards(&self) -> Vec<ModelCard> {
        self.list.iter().map(LoadedModel::card).collect()
    }
}

/// The models a request may name, default first: this node's own, then those published in a shared store
/// that this node does not run. A published model no live worker runs is still accepted: its jobs wait.
pub struct Catalog {
    cards: Vec<(ModelCard, bool)>,
}

impl Catalog {
    /// This node's `models` and the store's `registered` ones (whose descriptions cannot be read are
    /// skipped with a warning: a newer worker may describe more than this node knows).
    pub fn new(models: &Models, registered: Vec<Registered>) -> Self {
        let mut cards: Vec<(ModelCard, bool)> =
            models.cards().into_iter().map(|c| (c, true)).collect();
        for r in registered {
            if let Some((_, live)) = cards.iter_mut().find(|(c, _)| c.name == r.name) {
                *live = true;
                continue;
            }
            match serde_json::from_str::<ModelInfo>(&r.info) {
                Ok(info) => cards.push((ModelCard { name: r.name, info }, r.live)),
                Err(e) => tracing::warn!(
                    "model '{}' was published with a description this node cannot read ({e}); \
                     upgrade sorrel on this node to accept requests for it",
                    r.name
                ),
            }
        }
        Self { cards }
    }

    /// The model called `name`.
    pub fn get(&self, name: &str) -> Option<&ModelCard> {
        self.cards.iter().map(|(c, _)| c).find(|c| c.name == name)
    }

    /// The model used when a request names none: this node's first, else the first a worker published.
    pub fn default_model(&self) -> Option<&ModelCard> {
        self.cards.first().map(|(c, _)| c)
    }

    /// All cards, default first.
    pub fn cards(&self) -> impl Iterator<Item = &ModelCard> {
        self.cards.iter().map(|(c, _)| c)
    }

    /// All names, default first.
    pub fn names(&self) -> Vec<&str> {
        self.cards().map(|c| c.name.as_str()).collect()
    }

    /// Whether a running worker (this node's, or a live one elsewhere) has model `name`.
    pub fn is_running(&self, name: &str) -> bool {
        self.cards.iter().any(|(c, live)| c.name == name && *live)
    }
}
