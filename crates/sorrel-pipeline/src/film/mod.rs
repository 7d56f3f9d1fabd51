//! Films: a story planned into shots with recurring characters ([`plan`], [`planner`]). Rendering the
//! plan into files lives with the command line and the server, which own encoding and signing.

pub mod plan;
pub mod planner;

pub use plan::{Character, Plan, Shot, MAX_SHOT_SECONDS, PLAN_VERSION};
pub use planner::{plan_story, PlannerOptions};
