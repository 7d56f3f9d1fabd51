//! Wan VAE's RMS norm over the channels of a channels-first tensor (`F.normalize(x, dim=1) * sqrt(C) *
//! gamma`), optionally followed by SiLU, in one pass for f32 inference on the CPU.
//!
//! Why by hand: composed from candle ops it is about seven full passes (square, sum, sqrt, clamp, divide,
//! two products) and as many full-size temporaries, then another for SiLU; in the VAE decoder these ran
//! before every convolution and held a third of its working memory. candle has no channel-axis norm.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

use crate::ops::{contiguous_bf16, contiguous_f32, exp_f32, is_cpu_f32};

/// Pixels per work item: a few rows of each channel, so every item streams `C` short contiguous runs.
const SPAN: usize = 2048;

/// `x` (B, C, ...) normalised over C (the norm clamped to at least 1e-12, as `F.normalize`), times
/// `scale * gamma[c]`, then SiLU when `silu`. `gamma` has C values (any shape of C elements). f32 and bf16
/// CPU tensors that carry no gradient take the fused pass (bf16 computed in f32 and rounded once, as
/// diffusers normalises half-precision input in fp32); anything else the candle composition.
pub fn channel_rms_norm(x: &Tensor, gamma: &Tensor, scale: f64, silu: bool) -> Result<Tensor> {
    let cpu_bf16 = |t: &Tensor| crate::device::cpu_kernels(t.device()) && t.dtype() == DType::BF16;
    let fused = (is_cpu_f32(x) || cpu_bf16(x))
        && (is_cpu_f32(gamma) || cpu_bf16(gamma))
        && !x.track_op()
        && !gamma.track_op();
    if !fused || x.rank() < 2 {
        let c = x.dim(1)?;
        let mut shape = vec![1usize; x.rank()];
        shape[1] = c;
        let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
        let y = (x.broadcast_div(&norm)? * scale)?.broadcast_mul(&gamma.reshape(shape)?)?;
        return if silu { y.silu() } else { Ok(y) };
    }
    let g: Vec<f32> = gamma
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|v| v * scale as f32)
        .collect();
    if g.len() != x.dim(1)? {
        candle_core::bail!(
            "channel norm: {} scales for {} channels",
            g.len(),
            x.dim(1)?
        );
    }
    x.contiguous()?
        .apply_op1_no_bwd(&ChannelNorm { gamma: g, silu })
}

struct ChannelNorm {
    gamma: Vec<f32>,
    silu: bool,
}

impl CustomOp1 for ChannelNorm {
    fn name(&self) -> &'static str {
        "sorrel-channel-rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok(match s {
            CpuStorage::BF16(_) => (
                CpuStorage::BF16(self.run(contiguous_bf16(s, l, self.name())?, l.dims())),
                l.shape().clone(),
            ),
            _ => (
                CpuStorage::F32(self.run(contiguous_f32(s, l, self.name())?, l.dims())),
                l.shape().clone(),
            ),
        })
    }
}

/// The values the norm reads and writes: f32, or bf16 widened on reading and rounded once on writing.
trait Value: Copy + Send + Sync + Default {
    fn get(self) -> f32;
    fn put(v: f32) -> Self;
}

impl Value for f32 {
    fn get(self) -> f32 {
        self
    }
    fn put(v: f32) -> Self {
        v
    }
}

impl Value for bf16 {
    fn get(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    fn put(v: f32) -> Self {
        bf16::from_bits(crate::simd::to_bf16_bits(v))
    }
}

impl ChannelNorm {
    fn run<T: Value>(&self, x: &[T], dims: &[usize]) -> Vec<T> {
        let (b, c) = (dims[0], dims[1]);
        let plane: usize = dims[2..].iter().product();
        let mut out = vec![T::default(); x.len()];
        // Items: (batch, span of pixels); each writes its own pixels of every channel.
        let spans = plane.div_ceil(SPAN);
        let out_ptr = SendPtr(out.as_mut_ptr());
        (0..b * spans).into_par_iter().for_each(|item| {
            let (bi, si) = (item / spans, item % spans);
            let p0 = si * SPAN;
            let n = SPAN.min(plane - p0);
            let base = bi * c * plane + p0;
            let mut sum = [0f32; SPAN];
            let sum = &mut sum[..n];
            for ch in 0..c {
                let row = &x[base + ch * plane..base + ch * plane + n];
                sum.iter_mut()
                    .zip(row)
                    .for_each(|(s, &v)| *s += v.get() * v.get());
            }
            // 1 / max(norm, 1e-12), once per pixel.
            sum.iter_mut().for_each(|s| *s = 1.0 / s.sqrt().max(1e-12));
            for (ch, &g) in self.gamma.iter().enumerate() {
                let row = &x[base + ch * plane..base + ch * plane + n];
                // SAFETY: every item writes only its own pixels (`base + ch * plane + 0..n`, distinct
                // across items) of `out`, which outlives the parallel loop.
                let o = unsafe {
                    std::slice::from_raw_parts_mut(out_ptr.get().add(base + ch * plane), n)
                };
                if self.silu {
                    for ((o, &v), &r) in o.iter_mut().zip(row).zip(sum.iter()) {
                        let y = v.get() * r * g;
                        *o = T::put(y / (1.0 + exp_f32(-y)));
                    }
                } else {
                    for ((o, &v), &r) in o.iter_mut().zip(row).zip(sum.iter()) {
                        *o = T::put(v.get() * r * g);
                    }
                }
            }
        });
        out
    }
}

/// A raw pointer the parallel items write through, each to its own elements.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: items write disjoint elements (see the use above).
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_pass_matches_the_composition() {
        let dev = Device::Cpu;
        for (shape, silu) in [
            (vec![2usize, 5, 3, 7, 9], true),
            (vec![1, 96, 1, 33, 70], false),
            (vec![1, 3, 2, 1, 1], true),
        ] {
            let c = shape[1];
            let x = sorrel_testkit::lcg_tensor(&shape, 3, 2.0);
            let gamma = sorrel_testkit::lcg_tensor(&[c, 1, 1, 1], 5, 1.5);
            let scale = (c as f64).sqrt();
            let fused = channel_rms_norm(&x, &gamma, scale, silu).unwrap();
            // The composition, forced by a tracked input.
            let tracked = Var::from_tensor(&x).unwrap();
            let plain = channel_rms_norm(tracked.as_tensor(), &gamma, scale, silu).unwrap();
            let err = sorrel_testkit::max_abs_diff(&fused, &plain);
            assert!(err < 2e-6, "{shape:?} silu {silu}: {err}");
        }
        // bf16: the f32 pass over the same values, rounded once (half an ulp: 2^-9 of the value).
        let x = sorrel_testkit::lcg_tensor(&[1, 40, 2, 5, 7], 3, 2.0)
            .to_dtype(DType::BF16)
            .unwrap();
        let gamma = sorrel_testkit::lcg_tensor(&[40, 1, 1, 1], 5, 1.5);
        for silu in [false, true] {
            let got = channel_rms_norm(&x, &gamma, 3.0, silu).unwrap();
            assert_eq!(got.dtype(), DType::BF16);
            let want =
                channel_rms_norm(&x.to_dtype(DType::F32).unwrap(), &gamma, 3.0, silu).unwrap();
            let got = got.to_dtype(DType::F32).unwrap();
            let rel = ((&got - &want).unwrap().abs().unwrap()
                / (want.abs().unwrap() + 1e-30).unwrap())
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
            assert!(rel <= 1.0 / 256.0, "bf16 silu {silu}: {rel}");
        }
        // A pixel of zeros stays zero (the clamped norm), as F.normalize gives.
        let z = Tensor::zeros((1, 4, 1, 2, 2), candle_core::DType::F32, &dev).unwrap();
        let g = Tensor::ones(4, candle_core::DType::F32, &dev).unwrap();
        let y = channel_rms_norm(&z, &g, 2.0, true).unwrap();
        assert_eq!(
            y.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
    }
}
