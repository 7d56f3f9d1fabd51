//! The attention seam: softmax(q k^T / sqrt(d)) v for every model family, in bounded memory.
//!
//! The score matrix of Wan2.1 at its own size (832x480, 81 frames: 32,760 tokens, 12 heads) is 12.9 G
//! elements: 51 GB in f32, which aborted the process. On the CPU, f32 and bf16 (with AVX512-BF16 and an even
//! head size) never hold it: flash attention tiles queries and keys ([`crate::f32_attention`],
//! [`crate::bf16_attention`]). Everything else (f16, tensors tracked for gradients, other devices) takes the
//! queries in blocks so that no call holds more than [`SCORE_BUDGET`] scores; each query's softmax only reads
//! its own row, so a block gives exactly the rows the whole product would.

use candle_core::{DType, Result, Tensor};

/// The most scores (batch x heads x queries x keys) one block holds: 128 Mi, 512 MB in f32.
pub const SCORE_BUDGET: usize = 128 << 20;

/// q: (B, H, S, d), k and v: (B, H, L, d) -> (B, H, S, d), in q's dtype.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    attention_in_blocks(q, k, v, SCORE_BUDGET)
}

/// Whether attention in `dtype` on the CPU takes a fused path that holds no scores (for tensors not tracked
/// for gradients; bf16 also needs an even head size): f32 always, bf16 where the CPU has AVX512-BF16.
pub fn fused_on_cpu(dtype: DType) -> bool {
    dtype == DType::F32 || (dtype == DType::BF16 && crate::bf16_matmul::available())
}

/// [`attention`] with another budget for the blocked paths (tests use small ones to exercise the blocks).
pub fn attention_in_blocks(q: &Tensor, k: &Tensor, v: &Tensor, budget: usize) -> Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let l = k.dim(2)?;
    let scale = 1.0 / (d as f64).sqrt();
    let dt = q.dtype();
    let fused = crate::device::cpu_kernels(q.device())
        && fused_on_cpu(dt)
        && [q, k, v].iter().all(|t| t.dtype() == dt && !t.track_op());
    let (fast_bf16, fast_f32) = (fused && dt == DType::BF16, fused && dt == DType::F32);
    // The bf16 kernel multiplies by transposes: the keys as they are and the values transposed, each head's
    // packed once here for every block of queries (at 32,760 tokens, 96 blocks).
    let packed = if fast_bf16 {
        use crate::bf16_matmul::PackedB;
        let pack = |t: &Tensor| PackedB::pack_batched(t).map(std::sync::Arc::new);
        Some((pack(k)?, pack(&v.transpose(2, 3)?)?))
    } else {
        None
    };
    let (kt, vt) = (k.t()?, v.clone());
    if let Some((pk, pv)) = &packed {
        if d % 2 == 0 {
            // Fused: no score matrix at all, so no blocks of queries either.
            return crate::bf16_attention::attention(q, pk, pv, scale as f32);
        }
    }
    if fast_f32 {
        // Fused as well: no score matrix, the tiles' products by gemm.
        return crate::f32_attention::attention(q, k, v, scale as f32);
    }
    // Half-precision keys and values widened once here, not once per block of queries (96 blocks at
    // 32,760 tokens on a GPU).
    let widened = if packed.is_none() && matches!(dt, DType::BF16 | DType::F16) {
        Some((kt.to_dtype(DType::F32)?, vt.to_dtype(DType::F32)?))
    } else {
        None
    };
    let block = |q: &Tensor| -> Result<Tensor> {
        if let Some((pk, pv)) = &packed {
            // As PyTorch's CPU flash attention for bf16: scores in f32 from bf16 products; exp(score - row
            // max) in f32, summed in f32 and rounded to bf16 (the row's largest weight, 1, stays exact); their
            // product with the values accumulated in f32 and divided by the sum before the one rounding.
            let scores = pk.matmul(q, None, DType::F32)?;
            let (weights, sums) = exp_rows_bf16(&scores, scale as f32)?;
            let out = pv.matmul(&weights, None, DType::F32)?;
            return out.broadcast_div(&sums)?.to_dtype(DType::BF16);
        }
        if let Some((kt, vt)) = &widened {
            // Half-precision scores lose about 2^-9 of their size (0.01 at a score of 4) before the
            // softmax magnifies it; PyTorch's CPU attention keeps scores and softmax in f32 for bf16 and
            // f16, so the blocks do too (CPUs without AVX512-BF16 land here). bf16 then rounds the
            // weights as the fused kernel and PyTorch do: a bf16 Wan forward then lands 0.00363 (mean)
            // from fp32, against 0.00371 for diffusers' bf16, where all-f32 weights landed 0.00378.
            let w = |t: &Tensor| t.to_dtype(DType::F32);
            let scores = w(q)?.matmul(kt)?;
            if dt == DType::BF16 && crate::device::cpu_kernels(q.device()) && !q.track_op() {
                // The fused kernel's numerics (above) without its products.
                let (weights, sums) = exp_rows_bf16(&scores, scale as f32)?;
                let out = w(&weights)?.matmul(vt)?;
                return out.broadcast_div(&sums)?.to_dtype(DType::BF16);
            }
            return crate::ops::softmax_last_dim(&(scores * scale)?)?
                .matmul(vt)?
                .to_dtype(dt);
        }
        let scores = (q.matmul(&kt)? * scale)?;
        crate::ops::softmax_last_dim(&scores)?.matmul(&vt)
    };
    let rows = (budget / (b * h * l).max(1)).max(1);
    if rows >= s {
        return block(q);
    }
    let parts = (0..s)
        .step_by(rows)
        .map(|i| block(&q.narrow(2, i, rows.min(s - i))?.contiguous()?))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 2)
}

/// For f32 `scores` (…, L) on the CPU: exp(scale · row - scale · row max) rounded to bf16, and each row's sum
/// of the unrounded values (…, 1) in f32. One pass, with the vectorisable exp.
fn exp_rows_bf16(scores: &Tensor, scale: f32) -> Result<(Tensor, Tensor)> {
    use rayon::prelude::*;
    let scores = scores.contiguous()?;
    let dims = scores.dims().to_vec();
    let l = *dims.last().unwrap_or(&1);
    let (storage, layout) = scores.storage_and_layout();
    let op = "attention";
    let v = crate::ops::contiguous_f32(crate::ops::cpu_storage(&storage, op)?, layout, op)?;
    let rows = v.len() / l.max(1);
    let mut weights = vec![half::bf16::ZERO; v.len()];
    let mut sums = vec![0f32; rows];
    weights
        .par_chunks_mut(l.max(1))
        .zip(sums.par_iter_mut())
        .zip(v.par_chunks(l.max(1)))
        .for_each(|((w, sum), row)| {
            // The flash kernel's tile function with the row's own max as the shift (scaled scores).
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            *sum = crate::simd::exp_row_shifted_bf16(row, scale, scale * max, w);
        });
    drop(storage);
    let mut sum_dims = dims.clone();
    *sum_dims.last_mut().unwrap_or(&mut 0) = 1;
    let dev = scores.device();
    Ok((
        Tensor::from_vec(weights, dims, dev)?,
        Tensor::from_vec(sums, sum_dims, dev)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand((a, b, c, d): (usize, usize, usize, usize), seed: u64) -> Tensor {
        sorrel_testkit::lcg_tensor(&[a, b, c, d], seed, 2.0)
    }

    #[test]
    fn blocks_of_queries_give_the_whole_products_rows() {
        // Sizes that the blocks do not divide, self- and cross-attention, several head sizes.
        // Over one tile of keys (256) and one block of queries (96) of the fused path as well.
        for (b, h, s, l, d) in [
            (1, 2, 37, 37, 8),
            (2, 3, 50, 19, 16),
            (1, 1, 7, 300, 12),
            (1, 2, 150, 520, 20),
        ] {
            let (q, k, v) = (
                rand((b, h, s, d), 1),
                rand((b, h, l, d), 2),
                rand((b, h, l, d), 3),
            );
            let whole = attention_in_blocks(&q, &k, &v, usize::MAX).unwrap();
            // The plain composition, written out.
            let scores = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
            let plain = candle_nn::ops::softmax_last_dim(&scores)
                .unwrap()
                .matmul(&v)
                .unwrap();
            assert!(sorrel_testkit::max_abs_diff(&whole, &plain) <= 1e-6);
            // Tracked queries take the blocked path (the fused kernels have no backward pass).
            let tracked = candle_core::Var::from_tensor(&q).unwrap();
            for rows in [1, 5, 13] {
                let blocked =
                    attention_in_blocks(tracked.as_tensor(), &k, &v, rows * b * h * l).unwrap();
                let err = sorrel_testkit::max_abs_diff(&blocked, &whole);
                assert!(
                    err <= 1e-6,
                    "{rows} rows a block, ({b},{h},{s},{l},{d}): {err}"
                );
            }
        }
    }

    #[test]
    fn bf16_attention_matches_the_exact_attention_of_its_values() {
        // The AVX512-BF16 path where the CPU has it (f32 scores and softmax, bf16 probabilities), candle's
        // widened products elsewhere; against the f64 composition over the same bf16 values. Sizes the
        // kernel's tiles (12 x 32) do not divide, head sizes 8 to 128, cross-attention, blocks of queries.
        for (b, h, s, l, d, budget) in [
            (1, 2, 37, 37, 8, usize::MAX),
            (2, 3, 50, 19, 16, usize::MAX),
            (1, 1, 7, 300, 128, usize::MAX),
            (1, 2, 100, 77, 64, 13 * 2 * 77),
            // Over one tile of keys (256) and one block of queries (96), and an odd head size (the
            // unfused bf16 path).
            (1, 2, 200, 600, 32, usize::MAX),
            (1, 1, 9, 40, 7, 3 * 40),
        ] {
            let to = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
            let (q, k, v) = (
                to(rand((b, h, s, d), 7)),
                to(rand((b, h, l, d), 8)),
                to(rand((b, h, l, d), 9)),
            );
            let f = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
            let scores = (f(&q).matmul(&f(&k).t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
            let exact = candle_nn::ops::softmax_last_dim(&scores)
                .unwrap()
                .matmul(&f(&v))
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let got = attention_in_blocks(&q, &k, &v, budget).unwrap();
            assert_eq!(got.dtype(), DType::BF16);
            let err = sorrel_testkit::max_abs_diff(&got.to_dtype(DType::F32).unwrap(), &exact);
            // Rounding the probabilities and the output to bf16 (8 bits) with |v| < 2: at most about 2 x 2^-8.
            println!("bf16 attention ({b},{h},{s},{l},{d}): max abs err {err}");
            assert!(err <= 0.01, "({b},{h},{s},{l},{d}): {err}");
        }
    }

    #[test]
    fn half_precision_blocks_run() {
        let (q, k, v) = (
            rand((1, 2, 20, 8), 4),
            rand((1, 2, 20, 8), 5),
            rand((1, 2, 20, 8), 6),
        );
        let f = attention(&q, &k, &v).unwrap();
        let to = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let h = attention_in_blocks(&to(&q), &to(&k), &to(&v), 3 * 2 * 20).unwrap();
        assert_eq!(h.dtype(), DType::BF16);
        assert!(sorrel_testkit::max_abs_diff(&h.to_dtype(DType::F32).unwrap(), &f) < 0.05);
    }
}
