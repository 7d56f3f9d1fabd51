//! bf16 attention without the score matrix: each head's queries in blocks of [`QM`] rows against its keys
//! in tiles of [`KT`], with the running (online) softmax of flash attention, on the AVX512-BF16 micro-kernel.
//!
//! Materialising scores, even a block of queries at a time, wrote and read every score three times through
//! memory (f32 scores, bf16 weights, then their product with the values): at Wan2.1's 32,760 tokens that was
//! the most of a forward's time, and the blocks needed 0.8 GB. Here one work item's scores (96 x 256 f32),
//! weights and running output (96 x head size f32) stay in L2. Numerics as PyTorch's CPU flash attention for
//! bf16: f32 scores, exp(score - running max) summed in f32 and rounded to bf16 for the product with the
//! values, which accumulates in f32; one rounding of the output.

use candle_core::{Result, Tensor};
use half::bf16;
use rayon::prelude::*;

use crate::bf16_matmul::{micro_kernel, ATile, PackedB, KC, MR, NR};
use crate::ops::{contiguous_bf16, cpu_storage};

/// The op's name, for errors.
const NAME: &str = "bf16 attention";

/// Query rows per work item.
const QM: usize = 96;
/// Keys per tile (a multiple of [`NR`]).
const KT: usize = 256;

/// softmax(q k^T · scale) v for q (B, H, S, d) bf16, with `keys` the heads' keys (B·H matrices of (L, d)) and
/// `values_t` their values transposed (B·H of (d, L)), both packed ([`PackedB::pack_batched`]). `d` must be
/// even (the caller falls back otherwise) and the CPU must have AVX512-BF16.
pub(crate) fn attention(
    q: &Tensor,
    keys: &PackedB,
    values_t: &PackedB,
    scale: f32,
) -> Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let l = keys.n;
    if keys.k != d || values_t.n != d || values_t.k != l || keys.batch != b * h {
        candle_core::bail!(
            "bf16 attention: packed keys and values do not match queries {:?}",
            q.dims()
        );
    }
    if d % 2 == 1 || !crate::bf16_matmul::available() {
        candle_core::bail!("bf16 attention: needs an even head size and AVX512-BF16");
    }
    let q = q.contiguous()?;
    let (storage, layout) = q.storage_and_layout();
    let qv = contiguous_bf16(cpu_storage(&storage, NAME)?, layout, NAME)?;
    let mut out = vec![bf16::ZERO; b * h * s * d];
    out.par_chunks_mut(s * d)
        .enumerate()
        .flat_map(|(bh, o)| {
            o.par_chunks_mut(QM * d)
                .enumerate()
                .map(move |(qb, o)| (bh, qb, o))
        })
        .for_each_init(Scratch::new, |scratch, (bh, qb, o)| {
            let rows = QM.min(s - qb * QM);
            let q_rows = &qv[(bh * s + qb * QM) * d..(bh * s + qb * QM + rows) * d];
            block(scratch, q_rows, rows, bh, keys, values_t, scale, o);
        });
    drop(storage);
    Tensor::from_vec(out, (b, h, s, d), q.device())
}

/// One work item's buffers, reused across items on a thread.
struct Scratch {
    /// Scores of the block's rows against one tile of keys (QM x KT).
    scores: Vec<f32>,
    /// Their exponentials, rounded (QM x KT).
    weights: Vec<bf16>,
    /// Running output (QM x d), running max and sum per row.
    acc: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
}

impl Scratch {
    fn new() -> Self {
        Self {
            scores: vec![0.0; QM * KT],
            weights: vec![bf16::ZERO; QM * KT],
            acc: Vec::new(),
            max: vec![0.0; QM],
            sum: vec![0.0; QM],
        }
    }
}

/// Attention of `rows` query rows (`q_rows`, row-major (rows, d)) of head `bh`, into `out` (rows, d).
#[allow(clippy::too_many_arguments)]
fn block(
    sc: &mut Scratch,
    q_rows: &[bf16],
    rows: usize,
    bh: usize,
    keys: &PackedB,
    values_t: &PackedB,
    scale: f32,
    out: &mut [bf16],
) {
    let (l, d) = (keys.n, keys.k);
    let kp = d / 2; // pairs per key (d is even)
    let lp = l.div_ceil(2); // pairs per value row of the transposed values
    sc.acc.clear();
    sc.acc.resize(rows * d, 0.0);
    sc.max[..rows].fill(f32::NEG_INFINITY);
    sc.sum[..rows].fill(0.0);
    let kdata = &keys.data[bh * keys.stride..];
    let vdata = &values_t.data[bh * values_t.stride..];
    for k0 in (0..l).step_by(KT) {
        let live = KT.min(l - k0);
        // Scores: the block's rows times each panel of NR keys in the tile, d/2 pairs deep (in KC chunks).
        for j in 0..live.div_ceil(NR) {
            let panel = k0 / NR + j;
            let cols = NR.min(live - j * NR);
            for c0 in (0..kp).step_by(KC / 2) {
                let pairs = (KC / 2).min(kp - c0);
                for r in 0..rows.div_ceil(MR) {
                    let tile_rows = MR.min(rows - r * MR);
                    let a = ATile {
                        ptr: q_rows[r * MR * d + 2 * c0..].as_ptr(),
                        row_stride: d,
                        pair_stride: 2,
                    };
                    // SAFETY: `a` has tile_rows rows of `pairs` pairs of the queries (d even, c0 + pairs <=
                    // d/2); the key panel holds kp pairs of NR keys from pair c0 on; the scores tile has
                    // tile_rows rows of KT f32 from column j·NR with `cols` <= NR inside; AVX512-BF16 checked.
                    unsafe {
                        micro_kernel(
                            pairs,
                            a,
                            kdata[(panel * kp + c0) * NR * 2..].as_ptr(),
                            NR * 2,
                            sc.scores[r * MR * KT + j * NR..].as_mut_ptr(),
                            KT,
                            tile_rows,
                            cols,
                            c0 > 0,
                        );
                    }
                }
            }
        }
        // Online softmax over the tile's live keys; the running output is rescaled to the new maxima.
        for i in 0..rows {
            let s_row = &sc.scores[i * KT..i * KT + live];
            let w_row = &mut sc.weights[i * KT..(i + 1) * KT];
            let tile_max = s_row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) * scale;
            let new_max = sc.max[i].max(tile_max);
            let correction = if sc.max[i] == f32::NEG_INFINITY {
                0.0
            } else {
                crate::ops::exp_f32(sc.max[i] - new_max)
            };
            let tile_sum =
                crate::simd::exp_row_shifted_bf16(s_row, scale, new_max, &mut w_row[..live]);
            // Keys past the end of the last tile weigh nothing.
            w_row[live..].fill(bf16::ZERO);
            sc.sum[i] = sc.sum[i] * correction + tile_sum;
            sc.max[i] = new_max;
            if correction != 1.0 {
                sc.acc[i * d..(i + 1) * d]
                    .iter_mut()
                    .for_each(|a| *a *= correction);
            }
        }
        // Output += weights (rows x live) times the tile's values: the transposed values' panels of NR
        // head dims, from key pair k0/2 on.
        let pairs = live.div_ceil(2);
        for j in 0..d.div_ceil(NR) {
            let cols = NR.min(d - j * NR);
            for r in 0..rows.div_ceil(MR) {
                let tile_rows = MR.min(rows - r * MR);
                let a = ATile {
                    ptr: sc.weights[r * MR * KT..].as_ptr(),
                    row_stride: KT,
                    pair_stride: 2,
                };
                // SAFETY: the weights tile has tile_rows rows of KT values (pairs <= KT/2, the tail zeroed);
                // the transposed values' panel j holds lp pairs from pair k0/2 on (k0 + 2·pairs <= the
                // packed, even-padded L); the output tile has tile_rows rows of d f32 with `cols` <= NR.
                unsafe {
                    micro_kernel(
                        pairs,
                        a,
                        vdata[(j * lp + k0 / 2) * NR * 2..].as_ptr(),
                        NR * 2,
                        sc.acc[r * MR * d + j * NR..].as_mut_ptr(),
                        d,
                        tile_rows,
                        cols,
                        true,
                    );
                }
            }
        }
    }
    for i in 0..rows {
        let inv = sc.sum[i];
        let row = &mut sc.acc[i * d..(i + 1) * d];
        row.iter_mut().for_each(|a| *a /= inv);
        crate::simd::f32_to_bf16(row, &mut out[i * d..(i + 1) * d]);
    }
}
