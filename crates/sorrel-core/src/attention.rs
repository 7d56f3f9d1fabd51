//! The attention seam: softmax(q k^T / sqrt(d)) v for every model family, in bounded memory.
//!
//! The score matrix of Wan2.1 at its own size (832x480, 81 frames: 32,760 tokens, 12 heads) is 12.9 G
//! elements: 51 GB in f32, which aborted the process. Queries are taken in blocks so that no call holds more
//! than [`SCORE_BUDGET`] scores; each query's softmax only reads its own row, so a block gives exactly the rows
//! the whole product would. (A tiled online-softmax kernel that also tiles the keys is the performance
//! issue's; this keeps the plain matrix products.)

use candle_core::{Result, Tensor};

/// The most scores (batch x heads x queries x keys) one block holds: 128 Mi, 512 MB in f32.
pub const SCORE_BUDGET: usize = 128 << 20;

/// q: (B, H, S, d), k and v: (B, H, L, d) -> (B, H, S, d), in q's dtype.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    attention_in_blocks(q, k, v, SCORE_BUDGET)
}

/// [`attention`] with another budget (tests use small ones to exercise the blocks).
pub fn attention_in_blocks(q: &Tensor, k: &Tensor, v: &Tensor, budget: usize) -> Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let l = k.dim(2)?;
    let scale = 1.0 / (d as f64).sqrt();
    let kt = k.t()?;
    let block = |q: &Tensor| -> Result<Tensor> {
        let scores = (q.matmul(&kt)? * scale)?;
        crate::ops::softmax_last_dim(&scores)?.matmul(v)
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn rand(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        // A small LCG: reproducible values in [-2, 2) without a dependency.
        let mut x = seed;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn blocks_of_queries_give_the_whole_products_rows() {
        // Sizes that the blocks do not divide, self- and cross-attention, several head sizes.
        for (b, h, s, l, d) in [(1, 2, 37, 37, 8), (2, 3, 50, 19, 16), (1, 1, 7, 300, 12)] {
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
            for rows in [1, 5, 13] {
                let blocked = attention_in_blocks(&q, &k, &v, rows * b * h * l).unwrap();
                let err = sorrel_testkit::max_abs_diff(&blocked, &whole);
                assert!(
                    err <= 1e-6,
                    "{rows} rows a block, ({b},{h},{s},{l},{d}): {err}"
                );
            }
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
