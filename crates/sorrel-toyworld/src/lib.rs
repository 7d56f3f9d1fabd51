//! The toy world: clips of 1–3 coloured shapes (balls, boxes, triangles) moving over a dark background above a
//! coloured floor, each with a caption that describes it exactly ("two red balls bounce on a blue floor").
//!
//! Because every clip is generated from a [`Scene`], the ground truth of every caption is known, so a model's
//! output can be scored for what critics of video models point at: wrong colours or shapes, objects whose
//! number changes mid-clip, motion in the wrong direction, bounces that go through the floor or ignore
//! gravity ([`score`]). Some colour–shape and count–motion pairs are kept out of training ([`Split`]) to
//! measure generalisation.
//!
//! Everything is deterministic by seed and streamed: no dataset on disk.

pub mod appearance;
pub mod caption;
pub mod palette;
pub mod paraphrase;
pub mod render;
pub mod scene;
pub mod score;
pub mod window_score;

pub use appearance::{appearance, carries_on_across, floor_of, kept, Appearance, Kept, Look};
pub use caption::{caption, caption_styled, CaptionStyle};
pub use palette::{Colour, COLOURS};
pub use paraphrase::{
    held_out_paraphrase, paraphrase, paraphrase_without_floor, HeldOutForm, HELD_OUT_FORMS,
};
pub use render::{render, render_span, Clip, WorldSize};
pub use scene::{Motion, Scene, Shape, Size, Split};
pub use score::{score_clip, ClipScore, Summary};
pub use window_score::{score_join, score_long, JoinScore, LongScore};
