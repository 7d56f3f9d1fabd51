//! Films from plans ([`sorrel_pipeline::film::Plan`]): what a plan asks of a model ([`FilmLayout`]), its shots
//! rendered in order with each character's reference picture and long takes continued ([`render`]), every
//! finished shot cached under a hash of what made it so an interrupted or edited film redoes only what changed,
//! and the storyboard sheet. `sorrel film` and the server's `/v1/films` both render through here; each writes
//! and signs the files its own way.

pub mod fingerprint;
pub mod layout;
pub mod render;
pub mod storyboard;

pub use fingerprint::{hash_ends, hex, model_fingerprint};
pub use layout::FilmLayout;
pub use render::{finished_shot, render, FilmEvent, RenderOptions, Rendered};

/// A media error (encoding, writing) as the library's error.
pub(crate) fn output(e: sorrel_media::MediaError) -> sorrel_core::Error {
    sorrel_core::Error::Output(e.to_string())
}
