//! The colours of the world. They are far apart in RGB so a scorer can tell them apart after a model (or a
//! codec) has blurred them, and far from the near-black background.

use serde::{Deserialize, Serialize};

/// An object or floor colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Colour {
    /// (220, 40, 40)
    Red,
    /// (40, 200, 60)
    Green,
    /// (50, 90, 230)
    Blue,
    /// (235, 215, 40)
    Yellow,
}

/// Every colour, in caption order.
pub const COLOURS: [Colour; 4] = [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow];

/// The background: near black, so objects stand out whatever their colour.
pub const BACKGROUND: [u8; 3] = [16, 16, 20];

impl Colour {
    /// Its RGB value.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 40, 40],
            Colour::Green => [40, 200, 60],
            Colour::Blue => [50, 90, 230],
            Colour::Yellow => [235, 215, 40],
        }
    }

    /// The word in captions.
    pub fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
        }
    }

    /// The palette colour nearest to `px`, if it is nearer to it than to the background and within
    /// `max_dist` (Euclidean, 0–255 units).
    pub fn classify(px: [u8; 3], max_dist: f32) -> Option<Colour> {
        let d = |c: [u8; 3]| {
            let s: f32 = (0..3).map(|i| (px[i] as f32 - c[i] as f32).powi(2)).sum();
            s.sqrt()
        };
        let (best, dist) = COLOURS
            .iter()
            .map(|&c| (c, d(c.rgb())))
            .min_by(|a, b| a.1.total_cmp(&b.1))?;
        (dist <= max_dist && dist < d(BACKGROUND)).then_some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palette_colours_classify_as_themselves_and_background_as_nothing() {
        for c in COLOURS {
            assert_eq!(Colour::classify(c.rgb(), 60.0), Some(c));
        }
        assert_eq!(Colour::classify(BACKGROUND, 60.0), None);
        assert_eq!(Colour::classify([128, 128, 128], 60.0), None);
    }
}
