//! f32 attention without the score matrix: each head's queries in blocks of [`QM`] rows against its keys in
//! tiles of [`KT`], with flash attention's running softmax, the tiles' products by `gemm` (candle's own
//! matrix kernel, called on strided views, so nothing is copied or transposed).
//!
//! The blocked version held 128 Mi scores and their softmax at a time (1 GB at Wan2.1's 32,760 tokens) and
//! wrote and read each through memory; here one work item's scores (96 x 256) and running output stay in L2.

use candle_core::{Result, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::ops::{contiguous_f32, cpu_storage};

/// The op's name, for errors.
const NAME: &str = "f32 attention";

/// Query rows per work item.
const QM: usize = 96;
/// Keys per tile.
const KT: usize = 256;

/// softmax(q k^T · scale) v for q (B, H, S, d), k and v (B, H, L, d), f32 on the CPU.
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let l = k.dim(2)?;
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let values = |s, l| contiguous_f32(cpu_storage(s, NAME)?, l, NAME);
    let (qv, kv, vv) = (values(&qs, ql)?, values(&ks, kl)?, values(&vs, vl)?);
    if kv.len() != b * h * l * d || vv.len() != kv.len() {
        candle_core::bail!(
            "attention: keys and values must both be (B, H, L, d) for queries {:?}",
            q.dims()
        );
    }
    let mut out = vec![0f32; b * h * s * d];
    out.par_chunks_mut((s * d).max(1))
        .enumerate()
        .flat_map(|(bh, o)| {
            o.par_chunks_mut(QM * d)
                .enumerate()
                .map(move |(qb, o)| (bh, qb, o))
        })
        .for_each_init(
            || (vec![0f32; QM * KT], vec![0f32; QM], vec![0f32; QM]),
            |(scores, max, sum), (bh, qb, o)| {
                let rows = QM.min(s - qb * QM);
                let q_rows = &qv[(bh * s + qb * QM) * d..][..rows * d];
                let keys = &kv[bh * l * d..][..l * d];
                let values = &vv[bh * l * d..][..l * d];
                block(
                    q_rows,
                    keys,
                    values,
                    (rows, l, d),
                    scale,
                    scores,
                    max,
                    sum,
                    o,
                );
            },
        );
    drop((qs, ks, vs));
    Tensor::from_vec(out, (b, h, s, d), q.device())
}

/// `rows` queries (rows, d) against `l` keys and values (l, d), into `out` (rows, d), which starts at zero.
#[allow(clippy::too_many_arguments)]
fn block(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    (rows, l, d): (usize, usize, usize),
    scale: f32,
    scores: &mut [f32],
    max: &mut [f32],
    sum: &mut [f32],
    out: &mut [f32],
) {
    max[..rows].fill(f32::NEG_INFINITY);
    sum[..rows].fill(0.0);
    for k0 in (0..l).step_by(KT) {
        let live = KT.min(l - k0);
        // scores (rows, live), row stride KT = q (rows, d) times keys[k0..k0 + live]^T.
        // SAFETY: every pointer and stride describes memory inside the slices above: q is rows x d
        // (strides 1, d), the keys' transpose is d x live read from (live, d) rows (strides d, 1), and the
        // scores tile rows x live with row stride KT >= live.
        unsafe {
            gemm::gemm(
                rows,
                live,
                d,
                scores.as_mut_ptr(),
                1,
                KT as isize,
                false,
                q.as_ptr(),
                1,
                d as isize,
                keys[k0 * d..].as_ptr(),
                d as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        for i in 0..rows {
            let row = &mut scores[i * KT..i * KT + live];
            let tile_max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) * scale;
            let new_max = max[i].max(tile_max);
            let correction = if max[i] == f32::NEG_INFINITY {
                0.0
            } else {
                crate::ops::exp_f32(max[i] - new_max)
            };
            let tile_sum = crate::simd::exp_row_shifted_f32(row, scale, new_max);
            sum[i] = sum[i] * correction + tile_sum;
            max[i] = new_max;
            if correction != 1.0 {
                out[i * d..(i + 1) * d]
                    .iter_mut()
                    .for_each(|a| *a *= correction);
            }
        }
        // out (rows, d) += weights (rows, live) times values[k0..k0 + live] (live, d).
        // SAFETY: the weights tile is rows x live with row stride KT, the values' rows k0..k0 + live lie
        // inside `values` (strides 1, d), and `out` is rows x d.
        unsafe {
            gemm::gemm(
                rows,
                d,
                live,
                out.as_mut_ptr(),
                1,
                d as isize,
                true,
                scores.as_ptr(),
                1,
                KT as isize,
                values[k0 * d..].as_ptr(),
                1,
                d as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    }
    for i in 0..rows {
        let total = sum[i];
        out[i * d..(i + 1) * d].iter_mut().for_each(|a| *a /= total);
    }
}
