//! Micro-benchmark of the matrix products a Wan2.1-1.3B block makes at 1,280 tokens: candle's f32 product,
//! candle's bf16 product (widened to f32), and `sorrel_core::bf16_matmul` with the weight packed once. Prints GFLOP/s, medians of 5.
//!
//! `cargo run --release -p sorrel-core --example matmul_bench [M]`

use candle_core::{DType, Device, Tensor};

#[path = "common/timing.rs"]
mod timing;
use timing::time;

fn main() -> candle_core::Result<()> {
    let m: usize = std::env::args()
        .nth(1)
        .map_or(1280, |s| s.parse().expect("M"));
    println!("AVX512-BF16: {}", sorrel_core::bf16_matmul::available());
    println!("| (M, N, K) | candle f32 | candle bf16 | Sorrel bf16 | bf16 max rel. error |");
    println!("|---|---|---|---|---|");
    for (n, k) in [(1536, 1536), (8960, 1536), (1536, 8960), (m, 128)] {
        let a = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu)?;
        let (a16, w16) = (a.to_dtype(DType::BF16)?, w.to_dtype(DType::BF16)?);
        let flop = 2.0 * (m * n * k) as f64 / 1e9;
        // MATMUL_BENCH_ONLY_SORREL=1 skips candle's products (for profiling the kernel alone).
        let only = std::env::var_os("MATMUL_BENCH_ONLY_SORREL").is_some();
        let f32_t = if only {
            f64::NAN
        } else {
            time(|| {
                a.matmul(&w.t().unwrap()).unwrap();
            })
        };
        let c16_t = if only {
            f64::NAN
        } else {
            time(|| {
                a16.matmul(&w16.t().unwrap()).unwrap();
            })
        };
        // As a linear layer runs it: the weight packed once, at load.
        let packed = std::sync::Arc::new(sorrel_core::bf16_matmul::PackedB::pack(&w16)?);
        let s16_t = time(|| {
            packed.matmul(&a16, None, DType::BF16).unwrap();
        });
        let want = a16
            .to_dtype(DType::F32)?
            .matmul(&w16.to_dtype(DType::F32)?.t()?)?;
        let got = sorrel_core::bf16_matmul::matmul_nt(&a16, &w16, DType::F32)?;
        let err = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?
            / want.abs()?.max_all()?.to_scalar::<f32>()?;
        println!(
            "| ({m}, {n}, {k}) | {:.0} GFLOP/s | {:.0} GFLOP/s | {:.0} GFLOP/s | {err:.1e} |",
            flop / f32_t,
            flop / c16_t,
            flop / s16_t
        );
    }
    Ok(())
}
