//! The keyed pattern: a tile of 32x32 cells repeated over every frame. Half the cells are a pilot of
//! known signs that the detector finds the tile's position and scale by; each of the others carries one
//! coded bit, times a keyed sign. Cells are measured on a canonical grid where the frame's short side is
//! 480 pixels, so resizing a video keeps the pattern where the detector expects it.

use sha2::{Digest, Sha256};

use super::code::CODED_BITS;

/// Cell size in canonical pixels (a 480-line frame): large enough that H.264 at CRF 28 and a 75% resize
/// keep it, small enough that a 480p frame holds several tiles.
pub const CELL: usize = 6;
/// Cells along each side of the tile.
pub const TILE_CELLS: usize = 32;
/// Tile side in canonical pixels.
pub const TILE: usize = CELL * TILE_CELLS;
/// The short side of a frame on the canonical grid.
pub const CANONICAL_SHORT_SIDE: f64 = 480.0;
/// Cells that carry the pilot; the rest carry data.
const PILOT_CELLS: usize = TILE_CELLS * TILE_CELLS / 2;

/// The secret (or public) key that the pattern is drawn from. A detector needs the embedder's key.
#[derive(Clone, PartialEq, Eq)]
pub struct WatermarkKey {
    seed: u64,
}

impl std::fmt::Debug for WatermarkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WatermarkKey(..)")
    }
}

impl WatermarkKey {
    /// The key Sorrel uses unless configured otherwise. It is public on purpose: anyone can check a file.
    pub const DEFAULT: &'static str = "sorrel-watermark-v1";

    /// A key from any passphrase.
    pub fn new(passphrase: &str) -> Self {
        let digest = Sha256::digest(format!("sorrel watermark key\0{passphrase}").as_bytes());
        let seed = u64::from_be_bytes(digest[..8].try_into().expect("32-byte digest"));
        WatermarkKey { seed }
    }
}

impl Default for WatermarkKey {
    fn default() -> Self {
        WatermarkKey::new(Self::DEFAULT)
    }
}

/// What one cell carries.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// A known sign.
    Pilot(f32),
    /// Coded bit `bit`, multiplied by `sign`.
    Data { bit: usize, sign: f32 },
}

/// The roles of a tile's cells, row-major.
pub struct Tile {
    /// `TILE_CELLS * TILE_CELLS` roles.
    pub cells: Vec<Role>,
}

impl Tile {
    /// Draws the tile for `key`.
    pub fn new(key: &WatermarkKey) -> Self {
        // SplitMix64, written out rather than taken from `rand`: the pattern must stay bit-for-bit the same
        // for as long as files marked with it exist, whatever a dependency's next version does.
        let mut state = key.seed;
        let mut next = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let n = TILE_CELLS * TILE_CELLS;
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (next() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let mut cells = vec![Role::Pilot(1.0); n];
        for (rank, &cell) in order.iter().enumerate() {
            let sign = if next() & 1 == 1 { 1.0 } else { -1.0 };
            cells[cell] = if rank < PILOT_CELLS {
                Role::Pilot(sign)
            } else {
                Role::Data {
                    bit: (rank - PILOT_CELLS) % CODED_BITS,
                    sign,
                }
            };
        }
        Tile { cells }
    }

    /// Each cell's value (+1 or -1) for a codeword.
    pub fn chips(&self, bits: &[bool; CODED_BITS]) -> Vec<f32> {
        self.cells
            .iter()
            .map(|r| match *r {
                Role::Pilot(s) => s,
                Role::Data { bit, sign } => {
                    if bits[bit] {
                        sign
                    } else {
                        -sign
                    }
                }
            })
            .collect()
    }

    /// The pilot as an image of `TILE x TILE` canonical pixels: the pilot sign in pilot cells, 0 elsewhere.
    pub fn pilot_image(&self) -> Vec<f32> {
        let mut img = vec![0.0; TILE * TILE];
        for (i, r) in self.cells.iter().enumerate() {
            if let Role::Pilot(s) = *r {
                let (cy, cx) = (i / TILE_CELLS, i % TILE_CELLS);
                for y in cy * CELL..(cy + 1) * CELL {
                    img[y * TILE + cx * CELL..y * TILE + (cx + 1) * CELL].fill(s);
                }
            }
        }
        img
    }
}

/// Frame pixels per canonical pixel for a frame of `width x height`.
pub fn frame_scale(width: usize, height: usize) -> f64 {
    width.min(height) as f64 / CANONICAL_SHORT_SIDE
}
