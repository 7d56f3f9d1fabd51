//! A 2D convolution that trains at matrix-multiply speed.
//!
//! candle differentiates `conv2d` through `conv_transpose2d` and a strided `conv2d` that run its direct
//! loops: measured on the toy-world video VAE, about 60 % of a training step, 14x slower than PyTorch's
//! backward (`docs/benchmarks.md`). When a gradient will flow (CPU, f32, no groups or dilation), this
//! computes the convolution as im2col followed by one matrix product, so the backward pass is two matrix
//! products (candle's, through `gemm`) and a col2im. Not tracked, a stride-1 convolution is
//! [`crate::shifted_conv`]'s (no gather at all), anything else candle's `conv2d`.

use candle_core::{CpuStorage, CustomOp1, Layout, Module, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::{contiguous_f32, is_cpu_f32};

/// `x` (B, Cin, H, W) convolved with `w` (Cout, Cin, kh, kw): symmetric zero `padding`, `stride`.
pub fn conv2d(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    let tracked = x.track_op() || w.track_op();
    if !is_cpu_f32(x) || !is_cpu_f32(w) {
        return x.conv2d(w, padding, stride, 1, 1);
    }
    if !tracked {
        let (kh, kw) = (w.dim(2)?, w.dim(3)?);
        // candle's 1x1 path is already one matrix product; strided ones are rare (the VAE encoder's
        // downsampling) and stay candle's.
        return if stride == 1 && kh * kw > 1 {
            crate::shifted_conv::conv2d_shifted(x, w, padding)
        } else {
            x.conv2d(w, padding, stride, 1, 1)
        };
    }
    let (b, cin, h, wd) = x.dims4()?;
    let (cout, cin_w, kh, kw) = w.dims4()?;
    if cin != cin_w {
        candle_core::bail!("conv2d: input has {cin} channels, the kernel expects {cin_w}");
    }
    if stride == 0 || h + 2 * padding < kh || wd + 2 * padding < kw {
        candle_core::bail!(
            "conv2d: a {kh}x{kw} kernel with padding {padding} and stride {stride} does not fit {h}x{wd}"
        );
    }
    let geom = Geometry {
        c: cin,
        h,
        w: wd,
        kh,
        kw,
        padding,
        stride,
    };
    let (ho, wo) = geom.out();
    let cols = x.contiguous()?.apply_op1(Im2Col(geom))?; // (B*Ho*Wo, Cin*kh*kw)
    let y = cols.matmul(&w.reshape((cout, cin * kh * kw))?.t()?)?; // (B*Ho*Wo, Cout)
    y.reshape((b, ho, wo, cout))?
        .permute((0, 3, 1, 2))?
        .contiguous()
}

/// candle-nn's `Conv2d` (weights and config as loaded) whose forward pass goes through [`conv2d`], or, for
/// bf16 inference on the CPU at stride 1, through [`crate::bf16_conv`].
#[derive(Debug, Clone)]
pub struct Conv2d {
    inner: candle_nn::Conv2d,
    /// The bf16 kernel tap by tap ([`crate::bf16_conv::taps_of`]), made on the first bf16 forward (2D
    /// kernels are small: at most a few MB).
    taps: std::sync::OnceLock<Tensor>,
}

impl From<candle_nn::Conv2d> for Conv2d {
    fn from(c: candle_nn::Conv2d) -> Self {
        Conv2d {
            inner: c,
            taps: std::sync::OnceLock::new(),
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let cfg = self.inner.config();
        if cfg.groups != 1 || cfg.dilation != 1 {
            return self.inner.forward(x);
        }
        let w = self.inner.weight();
        let bf16 = |t: &Tensor| {
            crate::device::cpu_kernels(t.device()) && t.dtype() == candle_core::DType::BF16
        };
        let bf16_inference = bf16(x) && bf16(w) && !x.track_op() && !w.track_op();
        if bf16_inference && cfg.stride == 1 {
            let taps = match self.taps.get() {
                Some(t) => t,
                None => {
                    let t = crate::bf16_conv::taps_of(&w.unsqueeze(2)?)?;
                    self.taps.get_or_init(|| t)
                }
            };
            let y = crate::bf16_conv::conv3d_bf16_causal(
                &x.unsqueeze(2)?,
                taps,
                self.inner.bias(),
                1,
                cfg.padding,
                0,
                None,
            )?;
            return y.squeeze(2);
        }
        // Strided bf16 (the VAE encoder's downsampling): candle 0.11 has no bf16 product on the CPU, so the
        // product and the bias in f32, rounded once.
        let widen = |t: &Tensor| {
            if bf16_inference {
                t.to_dtype(candle_core::DType::F32)
            } else {
                Ok(t.clone())
            }
        };
        let mut y = conv2d(&widen(x)?, &widen(w)?, cfg.padding, cfg.stride)?;
        if let Some(bias) = self.inner.bias() {
            let bias = widen(bias)?.reshape((1, bias.dim(0)?, 1, 1))?;
            y = crate::ops::broadcast_add(&y, &bias)?;
        }
        if bf16_inference {
            y = y.to_dtype(candle_core::DType::BF16)?;
        }
        Ok(y)
    }
}

/// One image's shape and the kernel's, for im2col and col2im.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    padding: usize,
    stride: usize,
}

impl Geometry {
    fn out(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.padding - self.kh) / self.stride + 1,
            (self.w + 2 * self.padding - self.kw) / self.stride + 1,
        )
    }

    /// Columns per output pixel: Cin * kh * kw, in the kernel's (c, ky, kx) order.
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Calls `f(column, input index)` for every tap of output pixel (oy, ox) that lands inside the image.
    #[inline(always)]
    fn taps(&self, oy: usize, ox: usize, mut f: impl FnMut(usize, usize)) {
        for c in 0..self.c {
            for ky in 0..self.kh {
                let iy = (oy * self.stride + ky) as isize - self.padding as isize;
                if iy < 0 || iy >= self.h as isize {
                    continue;
                }
                for kx in 0..self.kw {
                    let ix = (ox * self.stride + kx) as isize - self.padding as isize;
                    if ix < 0 || ix >= self.w as isize {
                        continue;
                    }
                    let col = (c * self.kh + ky) * self.kw + kx;
                    f(col, (c * self.h + iy as usize) * self.w + ix as usize);
                }
            }
        }
    }
}

/// (B, C, H, W) -> (B*Ho*Wo, C*kh*kw), zeros where a tap falls in the padding.
struct Im2Col(Geometry);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "sorrel-im2col"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let g = self.0;
        let b = l.dims()[0];
        let (ho, wo) = g.out();
        let k = g.k();
        let image = g.c * g.h * g.w;
        let mut cols = vec![0f32; b * ho * wo * k];
        // One output row of one image per task: its columns are a contiguous block.
        cols.par_chunks_mut(wo * k)
            .enumerate()
            .for_each(|(row, block)| {
                let (bi, oy) = (row / ho, row % ho);
                let src = &x[bi * image..(bi + 1) * image];
                for ox in 0..wo {
                    let dst = &mut block[ox * k..(ox + 1) * k];
                    g.taps(oy, ox, |col, i| dst[col] = src[i]);
                }
            });
        Ok((CpuStorage::F32(cols), Shape::from((b * ho * wo, k))))
    }
    fn bwd(&self, x: &Tensor, _cols: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let b = x.dim(0)?;
        Ok(Some(
            grad.contiguous()?
                .apply_op1_no_bwd(&Col2Im { geom: self.0, b })?,
        ))
    }
}

/// The gradient of [`Im2Col`]: each column's value added back onto the input pixel it was copied from.
struct Col2Im {
    geom: Geometry,
    b: usize,
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "sorrel-col2im"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let cols = contiguous_f32(s, l, self.name())?;
        let g = self.geom;
        let (ho, wo) = g.out();
        let k = g.k();
        let image = g.c * g.h * g.w;
        let mut dx = vec![0f32; self.b * image];
        // Images are independent, so each task owns one image's gradient and nothing races.
        dx.par_chunks_mut(image).enumerate().for_each(|(bi, dst)| {
            let src = &cols[bi * ho * wo * k..(bi + 1) * ho * wo * k];
            for oy in 0..ho {
                for ox in 0..wo {
                    let col = &src[(oy * wo + ox) * k..(oy * wo + ox + 1) * k];
                    g.taps(oy, ox, |c, i| dst[i] += col[c]);
                }
            }
        });
        Ok((CpuStorage::F32(dx), Shape::from((self.b, g.c, g.h, g.w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use sorrel_testkit::max_abs_diff as max_diff;

    /// Values and both gradients against candle's own conv2d (whose backward candle tests), for 3x3
    /// with padding, a strided kernel without padding, 1x1, and a non-square 2x3 kernel. The same sums of
    /// products (up to 150 terms for the kernel gradient) added in another order: f32 rounding, measured
    /// at most 1.2e-4 on gradients of order 100, so the bound is 1e-5 of the largest value.
    #[test]
    fn im2col_conv_matches_candle_with_gradients() {
        let dev = Device::Cpu;
        let cases = [
            ((2, 3, 7, 6), (4, 3, 3, 3), 1, 1),
            ((2, 4, 8, 8), (5, 4, 3, 3), 0, 2),
            ((3, 6, 5, 5), (2, 6, 1, 1), 0, 1),
            ((1, 2, 6, 9), (3, 2, 2, 3), 1, 2),
        ];
        for (xs, ws, pad, stride) in cases {
            let x = Tensor::randn(0f32, 1.0, xs, &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, ws, &dev).unwrap();
            let run = |ours: bool| {
                let (vx, vw) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
                let y = if ours {
                    conv2d(vx.as_tensor(), vw.as_tensor(), pad, stride).unwrap()
                } else {
                    vx.as_tensor()
                        .conv2d(vw.as_tensor(), pad, stride, 1, 1)
                        .unwrap()
                };
                // d(sum y^2)/dy = 2y, so every output weighs differently and a misplaced tap shows.
                let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
                (
                    y,
                    grads.get(&vx).unwrap().clone(),
                    grads.get(&vw).unwrap().clone(),
                )
            };
            let (y1, gx1, gw1) = run(true);
            let (y2, gx2, gw2) = run(false);
            let case = format!("{xs:?} * {ws:?} pad {pad} stride {stride}");
            assert_eq!(y1.dims(), y2.dims(), "{case}");
            let rel = |a: &Tensor, b: &Tensor| {
                let scale = b
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                max_diff(a, b) / scale
            };
            for (what, ours, theirs) in [
                ("values", &y1, &y2),
                ("input gradient", &gx1, &gx2),
                ("kernel gradient", &gw1, &gw2),
            ] {
                let r = rel(ours, theirs);
                assert!(r < 1e-5, "{case}: {what} differ by {r} of their largest");
            }
        }
    }

    /// Without a gradient: candle's kernel bit for bit when strided, the shifted-GEMM one at stride 1.
    #[test]
    fn untracked_conv_is_candles() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 6, 6), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &dev).unwrap();
        // Strided: candle's, exactly.
        let ours = conv2d(&x, &w, 1, 2).unwrap();
        assert!(max_diff(&ours, &x.conv2d(&w, 1, 2, 1, 1).unwrap()) == 0.0);
        // Stride 1: the shifted-GEMM convolution (its own test bounds it against candle's).
        let ours = conv2d(&x, &w, 1, 1).unwrap();
        let shifted = crate::shifted_conv::conv2d_shifted(&x, &w, 1).unwrap();
        assert!(max_diff(&ours, &shifted) == 0.0);
    }
}
