//! Self-attention at Wan2.1-1.3B's shape (12 heads of 128), one head layout for all: candle-nn 0.11.1's CPU
//! flash attention (`candle_nn::attention::flash_attn`) against `sorrel_core::attention`'s fused paths, f32 and
//! bf16, with the max abs difference between them. Medians of 3 after a warm-up.
//!
//! `cargo run --release -p sorrel-core --example attention_bench [TOKENS...]` (default 1280 7800)

use candle_core::{DType, Device, Tensor};
use std::time::Instant;

fn median_secs(
    mut f: impl FnMut() -> candle_core::Result<Tensor>,
) -> candle_core::Result<(f64, Tensor)> {
    let out = f()?;
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok((times[1], out))
}

fn main() -> candle_core::Result<()> {
    // As the `sorrel` binary runs.
    // SAFETY: first thing in `main`, before any thread exists.
    unsafe { sorrel_core::threads::pin_thread_counts() };
    let tokens: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a token count"))
        .collect();
    let tokens = if tokens.is_empty() {
        vec![1280, 7800]
    } else {
        tokens
    };
    let (h, d) = (12, 128);
    println!("| tokens | dtype | candle-nn flash_attn | Sorrel | max abs difference |");
    println!("|---|---|---|---|---|");
    for s in tokens {
        let flop = 4.0 * (s * s * h * d) as f64 / 1e9;
        // (B, H, S, d) for Sorrel; candle's flash attention takes (B, S, H, d).
        let q = Tensor::randn(0f32, 1.0, (1, h, s, d), &Device::Cpu)?;
        let k = Tensor::randn(0f32, 1.0, (1, h, s, d), &Device::Cpu)?;
        let v = Tensor::randn(0f32, 1.0, (1, h, s, d), &Device::Cpu)?;
        let scale = 1.0 / (d as f32).sqrt();
        for dt in [DType::F32, DType::BF16] {
            let (q, k, v) = (q.to_dtype(dt)?, k.to_dtype(dt)?, v.to_dtype(dt)?);
            let seq = |t: &Tensor| t.transpose(1, 2)?.contiguous();
            let (qs, ks, vs) = (seq(&q)?, seq(&k)?, seq(&v)?);
            let candle = median_secs(|| {
                let mask = candle_nn::attention::AttnMask::None;
                match dt {
                    DType::F32 => candle_nn::attention::flash_attn::<f32>(
                        &qs, &ks, &vs, scale, mask, None, None,
                    ),
                    _ => candle_nn::attention::flash_attn::<half::bf16>(
                        &qs, &ks, &vs, scale, mask, None, None,
                    ),
                }
            });
            let (sorrel_t, sorrel_out) =
                median_secs(|| sorrel_core::attention::attention(&q, &k, &v))?;
            let (candle_col, diff) = match candle {
                Ok((t, out)) => {
                    let diff = (out.to_dtype(DType::F32)? - sorrel_out.to_dtype(DType::F32)?)?
                        .abs()?
                        .flatten_all()?
                        .max(0)?
                        .to_scalar::<f32>()?;
                    (
                        format!("{t:.3} s ({:.0} GFLOP/s)", flop / t),
                        format!("{diff:.1e}"),
                    )
                }
                Err(e) => (format!("error: {e}"), "-".into()),
            };
            println!(
                "| {s} | {dt:?} | {candle_col} | {sorrel_t:.3} s ({:.0} GFLOP/s) | {diff} |",
                flop / sorrel_t
            );
        }
    }
    Ok(())
}
