//! Micro-benchmark of the Wan VAE decoder's causal 3x3x3 convolutions, one output frame from two cached
//! frames and one new one (how the decoder's last levels run): the f32 shifted-GEMM convolution against the
//! bf16 one. Prints GFLOP/s, medians of 5.
//!
//! `cargo run --release -p sorrel-core --example conv_bench`

use candle_core::{DType, Device, Tensor};
use sorrel_core::{bf16_conv, shifted_conv};

#[path = "common/timing.rs"]
mod timing;
use timing::time;

fn main() -> candle_core::Result<()> {
    // SAFETY: first thing in `main`, before any thread exists.
    unsafe { sorrel_core::threads::pin_thread_counts() };
    println!("AVX512-BF16: {}", sorrel_core::bf16_matmul::available());
    println!("| (Cin, Cout, H, W) | f32 | bf16 | bf16 max rel. error |");
    println!("|---|---|---|---|");
    for (cin, cout, h, w) in [
        (96, 96, 256, 256),
        (192, 192, 128, 128),
        (384, 384, 64, 64),
        (384, 384, 32, 32),
    ] {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (1, cin, 1, h, w), &dev)?;
        let cache = Tensor::randn(0f32, 1.0, (1, cin, 2, h, w), &dev)?;
        let wt = Tensor::randn(0f32, 0.02, (cout, cin, 3, 3, 3), &dev)?;
        let b = Tensor::zeros(cout, DType::F32, &dev)?;
        let (x16, c16, w16, b16) = (
            x.to_dtype(DType::BF16)?,
            cache.to_dtype(DType::BF16)?,
            bf16_conv::taps_of(&wt.to_dtype(DType::BF16)?)?,
            b.to_dtype(DType::BF16)?,
        );
        let flop = 2.0 * (cin * cout * 27 * h * w) as f64 / 1e9;
        let mut y32 = None;
        let t32 = time(|| {
            y32 = Some(shifted_conv::conv3d_shifted_causal(&x, &wt, 1, 1, 0, Some(&cache)).unwrap())
        });
        let mut y16 = None;
        let t16 = time(|| {
            y16 = Some(
                bf16_conv::conv3d_bf16_causal(&x16, &w16, Some(&b16), 1, 1, 0, Some(&c16)).unwrap(),
            )
        });
        let (y32, y16) = (y32.unwrap(), y16.unwrap().to_dtype(DType::F32)?);
        let scale = y32.abs()?.max_all()?.to_scalar::<f32>()?;
        let err = (&y16 - &y32)?.abs()?.max_all()?.to_scalar::<f32>()? / scale;
        println!(
            "| ({cin}, {cout}, {h}, {w}) | {:.1} ms, {:.0} GFLOP/s | {:.1} ms, {:.0} GFLOP/s | {err:.1e} |",
            t32 * 1e3,
            flop / t32,
            t16 * 1e3,
            flop / t16
        );
    }
    Ok(())
}
