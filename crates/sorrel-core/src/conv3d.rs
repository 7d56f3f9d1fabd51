//! Causal 3D convolution (diffusers' `WanCausalConv3d`), built on candle's conv2d since candle has no conv3d.
//!
//! The temporal taps are folded into the conv2d input channels: for output frame `t`, the input frames
//! `t*s .. t*s+kt` are stacked along channels, so one conv2d with a `(Cout, kt*Cin, kh, kw)` kernel computes the
//! whole 3D convolution. That is the training path (its gradients are conv2d's); candle's CPU conv2d builds its
//! im2col in tiles of 512 output pixels, so the extra memory is the stacked input, `kt` times the frames it
//! stacks, and output frames are taken in groups of at most [`STACK_BUDGET`] stacked elements. Without
//! gradients (inference) every tap is instead a GEMM over the padded frames ([`crate::shifted_conv`]), with no
//! stacked copy at all.

use candle_core::{Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::ops::is_cpu_f32;

/// The most elements of stacked taps one convolution call takes: 16 Mi, 64 MB in f32.
pub const STACK_BUDGET: usize = 16 << 20;

/// A 3D convolution that pads time only at the front (causal), optionally replacing that padding with cached
/// frames from the previous chunk, so a video can be processed chunk by chunk with the same result as in one go.
#[derive(Debug, Clone)]
pub struct CausalConv3d {
    /// (Cout, Cin, kt, kh, kw) as loaded: a variable while training, so updates to it must be seen.
    weight: Tensor,
    /// (Cout, kt*Cin, kh, kw): `weight` permuted so tap `k` of input channel `c` sits at channel `k*Cin + c`;
    /// a copy made on first use by the stacked path, and only when `weight` is not a training variable. The
    /// CPU's f32 inference path reads `weight` itself, so a VAE run there never holds its weights twice.
    weight2d: std::sync::OnceLock<Tensor>,
    /// bf16 inference weights on the CPU: the kernel tap by tap, (kt, kh, kw, Cout, Cin), the layout
    /// [`crate::bf16_conv`] reads; `weight` is then a view of it in the loaded order, so the layer holds its
    /// weights once.
    taps: Option<Tensor>,
    bias: Tensor,
    in_channels: usize,
    out_channels: usize,
    kernel: (usize, usize, usize),
    padding: (usize, usize, usize),
    stride_t: usize,
}

impl CausalConv3d {
    /// Loads `weight` (Cout, Cin, kt, kh, kw) and `bias` (Cout) from `vb`.
    ///
    /// `padding` is nn.Conv3d's symmetric `(pt, ph, pw)`; as in diffusers it becomes causal padding
    /// `(pw, pw, ph, ph, 2*pt, 0)`: `2*pt` zero frames in front, none behind. `stride_t` strides time only.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize, usize),
        padding: (usize, usize, usize),
        stride_t: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (kt, kh, kw) = kernel;
        let weight = vb.get((out_channels, in_channels, kt, kh, kw), "weight")?;
        let bias = vb.get(out_channels, "bias")?;
        Self::from_tensors(weight, bias, padding, stride_t)
    }

    /// Builds the layer from explicit tensors: weight (Cout, Cin, kt, kh, kw), bias (Cout).
    pub fn from_tensors(
        mut weight: Tensor,
        bias: Tensor,
        padding: (usize, usize, usize),
        stride_t: usize,
    ) -> Result<Self> {
        let (out_channels, in_channels, kt, kh, kw) = weight.dims5()?;
        if stride_t == 0 {
            candle_core::bail!("CausalConv3d: temporal stride must be positive");
        }
        if bias.dims() != [out_channels] {
            candle_core::bail!(
                "CausalConv3d: bias shape {:?} does not match {out_channels} output channels",
                bias.dims()
            );
        }
        let bf16_inference = weight.dtype() == candle_core::DType::BF16
            && crate::device::cpu_kernels(weight.device())
            && !weight.is_variable();
        let taps = if bf16_inference {
            let taps = crate::bf16_conv::taps_of(&weight)?;
            weight = taps.permute((3, 4, 0, 1, 2))?;
            Some(taps)
        } else {
            None
        };
        Ok(Self {
            weight,
            weight2d: std::sync::OnceLock::new(),
            taps,
            bias,
            in_channels,
            out_channels,
            kernel: (kt, kh, kw),
            padding,
            stride_t,
        })
    }

    /// The folded kernel: the load-time copy at inference, or a fresh fold of the variable while training
    /// (the copy would go stale after the first optimiser step).
    fn kernel2d(&self) -> Result<Tensor> {
        if self.weight.is_variable() {
            return fold_taps(&self.weight);
        }
        if let Some(k) = self.weight2d.get() {
            return Ok(k.clone());
        }
        let k = fold_taps(&self.weight)?;
        Ok(self.weight2d.get_or_init(|| k).clone())
    }

    /// Temporal zero padding in front when no cache is given (`2 * pt`).
    pub fn front_padding(&self) -> usize {
        2 * self.padding.0
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// x: (B, Cin, T, H, W); cache: (B, Cin, Tc, H, W) frames preceding `x`, used in place of the first `Tc`
    /// front padding frames (ignored, as in diffusers, when the layer has no temporal padding).
    /// Returns (B, Cout, T', H', W').
    pub fn forward(&self, x: &Tensor, cache: Option<&Tensor>) -> Result<Tensor> {
        self.forward_with(x, cache, STACK_BUDGET, true)
    }

    /// [`Self::forward`]; `shifted`: without gradients, run every tap as GEMMs over the padded frames
    /// ([`crate::shifted_conv`]); otherwise (and always while training) stack at most `budget` elements of
    /// taps at a time for one conv2d (tests use small budgets).
    fn forward_with(
        &self,
        x: &Tensor,
        cache: Option<&Tensor>,
        budget: usize,
        shifted: bool,
    ) -> Result<Tensor> {
        let (b, c, _, _, _) = x.dims5()?;
        if c != self.in_channels {
            candle_core::bail!(
                "CausalConv3d: input has {c} channels, the layer expects {}",
                self.in_channels
            );
        }
        let kt = self.kernel.0;
        let (_, ph, pw) = self.padding;
        let front = self.front_padding();
        let untracked = !x.track_op() && !self.weight.track_op();
        if let (Some(taps), true) = (&self.taps, shifted && untracked) {
            if crate::device::cpu_kernels(x.device()) && x.dtype() == candle_core::DType::BF16 {
                return self.forward_bf16(x, cache, taps);
            }
        }
        // One frame with only zero padding in front (an image, or a video's first frame): every tap but
        // the last multiplies zeros, so convolve with the last tap alone (kt times less work).
        if cache.is_none() && x.dim(2)? == 1 && front + 1 == kt && self.stride_t == 1 && kt > 1 {
            let tap = self.weight.narrow(2, kt - 1, 1)?.squeeze(2)?.contiguous()?;
            let mut frame = x.squeeze(2)?;
            let conv_pad = if ph == pw {
                ph
            } else {
                frame = frame.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?;
                0
            };
            let y = crate::conv2d::conv2d(&frame, &tap, conv_pad, 1)?;
            return crate::ops::broadcast_add(
                &y,
                &self.bias.reshape((1, self.out_channels, 1, 1))?,
            )?
            .unsqueeze(2);
        }
        let (used, zeros) = self.front(x, cache)?;
        let tc = used.map_or(Ok(0), |c| c.dim(2))?;
        let t_in = zeros + tc + x.dim(2)?;
        if shifted && untracked && is_cpu_f32(x) && is_cpu_f32(&self.weight) {
            // Inference on the CPU: the zeros and the cache are read straight into the convolution's padded
            // buffer, so the input is never concatenated into a copy. Uneven spatial padding (no Wan layer
            // has it) is added by hand first.
            let y = if ph == pw {
                crate::shifted_conv::conv3d_shifted_causal(
                    x,
                    &self.weight,
                    self.stride_t,
                    ph,
                    zeros,
                    used,
                )?
            } else {
                let pad = |t: &Tensor| t.pad_with_zeros(3, ph, ph)?.pad_with_zeros(4, pw, pw);
                let cached = used.map(pad).transpose()?;
                crate::shifted_conv::conv3d_shifted_causal(
                    &pad(x)?,
                    &self.weight,
                    self.stride_t,
                    0,
                    zeros,
                    cached.as_ref(),
                )?
            };
            return crate::ops::broadcast_add(
                &y,
                &self.bias.reshape((1, self.out_channels, 1, 1, 1))?,
            );
        }
        // Otherwise (training, or another device or dtype): one copy with the cache and the zeros in front,
        // stacked by taps below.
        let kernel2d = self.kernel2d()?;
        let mut x = match used {
            Some(c) => Tensor::cat(&[c, x], 2)?,
            None => x.clone(),
        };
        if zeros > 0 {
            x = x.pad_with_zeros(2, zeros, 0)?;
        }
        // conv2d pads symmetrically with one value; pad by hand only when h and w differ.
        let conv_pad = if ph == pw {
            ph
        } else {
            x = x.pad_with_zeros(3, ph, ph)?.pad_with_zeros(4, pw, pw)?;
            0
        };
        let t_out = (t_in - kt) / self.stride_t + 1;
        // (B, T, C, H, W) so each output frame's taps are contiguous channel blocks.
        let xt = x.permute((0, 2, 1, 3, 4))?.contiguous()?;
        let (h, w) = (xt.dim(3)?, xt.dim(4)?);
        let per_frame = b * kt * c * h * w;
        let group = (budget / per_frame.max(1)).clamp(1, t_out);
        let bias = self.bias.reshape((1, self.out_channels, 1, 1))?;
        let parts = (0..t_out)
            .step_by(group)
            .map(|t0| {
                let n = group.min(t_out - t0);
                let stacked = if kt == 1 && self.stride_t == 1 {
                    xt.narrow(1, t0, n)?
                } else {
                    let taps = (0..kt)
                        .map(|k| {
                            if self.stride_t == 1 {
                                xt.narrow(1, t0 + k, n)
                            } else {
                                let ids: Vec<u32> = (t0..t0 + n)
                                    .map(|i| (k + i * self.stride_t) as u32)
                                    .collect();
                                let ids = Tensor::new(ids.as_slice(), xt.device())?;
                                xt.index_select(&ids, 1)
                            }
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Tensor::cat(&taps, 2)?
                };
                let frames = stacked.reshape((b * n, kt * c, h, w))?;
                let y = crate::conv2d::conv2d(&frames, &kernel2d, conv_pad, 1)?;
                let y = crate::ops::broadcast_add(&y, &bias)?;
                let (ho, wo) = (y.dim(2)?, y.dim(D::Minus1)?);
                y.reshape((b, n, self.out_channels, ho, wo))
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 1)?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()
    }
}

impl CausalConv3d {
    /// What goes in front of `x`: the cache's frames (when there is causal padding to fill; the cache that is
    /// used), then this many zero frames. An error when the cache is longer than the padding, or the frames
    /// are fewer than the kernel.
    fn front<'a>(
        &self,
        x: &Tensor,
        cache: Option<&'a Tensor>,
    ) -> Result<(Option<&'a Tensor>, usize)> {
        let front = self.front_padding();
        let used = if front > 0 { cache } else { None };
        let tc = used.map_or(Ok(0), |c| c.dim(2))?;
        if tc > front {
            // diffusers would crop with a negative F.pad here; no Wan layer does that.
            candle_core::bail!(
                "CausalConv3d: cache of {tc} frames exceeds the {front} frames of padding"
            );
        }
        let zeros = front - tc;
        let t_in = zeros + tc + x.dim(2)?;
        if t_in < self.kernel.0 {
            candle_core::bail!(
                "CausalConv3d: {t_in} frames (after padding) is fewer than the kernel's {}",
                self.kernel.0
            );
        }
        Ok((used, zeros))
    }

    /// bf16 inference on the CPU ([`crate::bf16_conv`]): zeros and cache read into the padded buffer, taps over
    /// the zero frames skipped (so a first frame costs one tap, as the f32 path's shortcut), bias added before
    /// the one rounding.
    fn forward_bf16(&self, x: &Tensor, cache: Option<&Tensor>, taps: &Tensor) -> Result<Tensor> {
        let (_, ph, pw) = self.padding;
        let (used, zeros) = self.front(x, cache)?;
        let conv = |x: &Tensor, cache: Option<&Tensor>, pad: usize| {
            crate::bf16_conv::conv3d_bf16_causal(
                x,
                taps,
                Some(&self.bias),
                self.stride_t,
                pad,
                zeros,
                cache,
            )
        };
        if ph == pw {
            return conv(x, used, ph);
        }
        // Uneven spatial padding (no Wan layer has it) is added by hand.
        let pad = |t: &Tensor| t.pad_with_zeros(3, ph, ph)?.pad_with_zeros(4, pw, pw);
        let cached = used.map(pad).transpose()?;
        conv(&pad(x)?, cached.as_ref(), 0)
    }
}

/// (Cout, Cin, kt, kh, kw) -> (Cout, kt*Cin, kh, kw), tap-major along channels.
fn fold_taps(weight: &Tensor) -> Result<Tensor> {
    let (cout, cin, kt, kh, kw) = weight.dims5()?;
    weight
        .permute((0, 2, 1, 3, 4))?
        .contiguous()?
        .reshape((cout, kt * cin, kh, kw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Deterministic values in [-1, 1) (a 64-bit LCG), so a failure reproduces.
    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn rand_tensor(shape: &[usize], seed: u64) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(rand_vec(n, seed), shape, &Device::Cpu).unwrap()
    }

    /// Direct-loop conv3d over the sequence zeros(front) ++ cache ++ x, spatially zero-padded, no tricks.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        x: &Tensor,
        cache: Option<&Tensor>,
        w: &Tensor,
        bias: &Tensor,
        padding: (usize, usize, usize),
        stride_t: usize,
    ) -> (Vec<usize>, Vec<f32>) {
        let (b, ci, t, h, wd) = x.dims5().unwrap();
        let (co, _, kt, kh, kw) = w.dims5().unwrap();
        let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let wv: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let bv: Vec<f32> = bias.to_vec1().unwrap();
        let (tc, cv): (usize, Vec<f32>) = match cache {
            Some(c) if padding.0 > 0 => (
                c.dim(2).unwrap(),
                c.flatten_all().unwrap().to_vec1().unwrap(),
            ),
            _ => (0, vec![]),
        };
        let front = 2 * padding.0 - tc;
        let tt = front + tc + t;
        // value of the padded sequence at (batch, channel, frame, row, col); rows/cols may be out of range.
        let at = |bb: usize, c: usize, f: usize, y: isize, xx: isize| -> f32 {
            if y < 0 || xx < 0 || y >= h as isize || xx >= wd as isize || f < front {
                return 0.0;
            }
            let (y, xx) = (y as usize, xx as usize);
            if f < front + tc {
                let f = f - front;
                cv[(((bb * ci + c) * tc + f) * h + y) * wd + xx]
            } else {
                let f = f - front - tc;
                xv[(((bb * ci + c) * t + f) * h + y) * wd + xx]
            }
        };
        let (ph, pw) = (padding.1, padding.2);
        let t_out = (tt - kt) / stride_t + 1;
        let h_out = h + 2 * ph - kh + 1;
        let w_out = wd + 2 * pw - kw + 1;
        let mut out = vec![0f32; b * co * t_out * h_out * w_out];
        for bb in 0..b {
            for o in 0..co {
                for to in 0..t_out {
                    for yo in 0..h_out {
                        for xo in 0..w_out {
                            let mut acc = bv[o] as f64;
                            for c in 0..ci {
                                for a in 0..kt {
                                    for dy in 0..kh {
                                        for dx in 0..kw {
                                            let wi = (((o * ci + c) * kt + a) * kh + dy) * kw + dx;
                                            let y = (yo + dy) as isize - ph as isize;
                                            let xx = (xo + dx) as isize - pw as isize;
                                            acc += wv[wi] as f64
                                                * at(bb, c, to * stride_t + a, y, xx) as f64;
                                        }
                                    }
                                }
                            }
                            out[(((bb * co + o) * t_out + to) * h_out + yo) * w_out + xo] =
                                acc as f32;
                        }
                    }
                }
            }
        }
        (vec![b, co, t_out, h_out, w_out], out)
    }

    /// Largest absolute difference between `y` and the direct loop's values (same length, checked by shape).
    fn max_err(y: &Tensor, want: &[f32]) -> f32 {
        let got: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got.len(), want.len());
        got.iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    }

    fn check(
        kernel: (usize, usize, usize),
        padding: (usize, usize, usize),
        stride_t: usize,
        t: usize,
        cache_t: Option<usize>,
    ) {
        let (b, ci, co, h, w) = (2, 3, 4, 5, 6);
        let weight = rand_tensor(&[co, ci, kernel.0, kernel.1, kernel.2], 1);
        let bias = rand_tensor(&[co], 2);
        let x = rand_tensor(&[b, ci, t, h, w], 3);
        let cache = cache_t.map(|n| rand_tensor(&[b, ci, n, h, w], 4));
        let mut ts = std::collections::HashMap::new();
        ts.insert("weight".to_string(), weight.clone());
        ts.insert("bias".to_string(), bias.clone());
        let vb = VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu);
        let conv = CausalConv3d::new(ci, co, kernel, padding, stride_t, vb).unwrap();
        let (shape, want) = naive(&x, cache.as_ref(), &weight, &bias, padding, stride_t);
        // Shifted GEMMs (inference), and taps stacked for all output frames at once or (budget 1) one frame at
        // a time (training's path).
        for (budget, shifted) in [(STACK_BUDGET, true), (STACK_BUDGET, false), (1, false)] {
            let y = conv
                .forward_with(&x, cache.as_ref(), budget, shifted)
                .unwrap();
            let case = format!(
                "kernel {kernel:?} padding {padding:?} cache {cache_t:?} budget {budget:?} shifted {shifted}"
            );
            assert_eq!(y.dims(), shape.as_slice(), "{case}");
            let err = max_err(&y, &want);
            // fp32 sums of at most 81 products of values in [-1, 1): only accumulation order differs.
            assert!(err < 1e-5, "{case}: max abs error {err}");
        }
        // bf16 weights: the layer keeps them tap by tap; against the direct loop over the same rounded
        // values, the bf16 op differs by the result's rounding: half an ulp, 2^-9 of its magnitude (bound
        // 2^-8), plus f32 summation order. (candle 0.11 has no bf16 product on the CPU: the stacked path
        // cannot run bf16 there.)
        let r = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let (w16, b16, x16) = (r(&weight), r(&bias), r(&x));
        let c16 = cache.as_ref().map(r);
        let conv = CausalConv3d::from_tensors(w16.clone(), b16.clone(), padding, stride_t).unwrap();
        assert!(conv.taps.is_some());
        let (_, want) = naive(
            &f(&x16),
            c16.as_ref().map(f).as_ref(),
            &f(&w16),
            &f(&b16),
            padding,
            stride_t,
        );
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let y = conv.forward(&x16, c16.as_ref()).unwrap();
        assert_eq!(y.dtype(), DType::BF16);
        assert_eq!(y.dims(), shape.as_slice());
        let err = max_err(&f(&y), &want);
        assert!(
            err <= scale / 256.0 + 1e-5,
            "bf16 kernel {kernel:?} padding {padding:?} cache {cache_t:?}: {err}"
        );
    }

    #[test]
    fn matches_naive_conv3d_without_cache() {
        check((3, 3, 3), (1, 1, 1), 1, 4, None);
        check((1, 1, 1), (0, 0, 0), 1, 3, None);
        check((3, 1, 1), (1, 0, 0), 1, 2, None);
    }

    #[test]
    fn matches_naive_conv3d_with_cache() {
        check((3, 3, 3), (1, 1, 1), 1, 1, Some(1));
        check((3, 3, 3), (1, 1, 1), 1, 4, Some(2));
        check((3, 1, 1), (1, 0, 0), 1, 1, Some(2));
        // a layer without temporal padding ignores the cache, as diffusers does.
        check((1, 1, 1), (0, 0, 0), 1, 2, Some(2));
    }

    #[test]
    fn matches_naive_conv3d_strided_and_uneven_padding() {
        check((3, 1, 1), (0, 0, 0), 2, 5, None);
        check((3, 3, 1), (1, 1, 0), 2, 4, Some(1));
    }

    #[test]
    fn one_frame_without_cache_takes_the_last_tap_only_and_matches() {
        check((3, 3, 3), (1, 1, 1), 1, 1, None);
        check((3, 3, 1), (1, 1, 0), 1, 1, None);
    }

    #[test]
    fn a_training_variable_is_read_at_every_forward() {
        let weight = candle_core::Var::from_tensor(&rand_tensor(&[4, 3, 3, 3, 3], 1)).unwrap();
        let bias = rand_tensor(&[4], 2);
        let conv =
            CausalConv3d::from_tensors(weight.as_tensor().clone(), bias.clone(), (1, 1, 1), 1)
                .unwrap();
        let x = rand_tensor(&[1, 3, 2, 5, 5], 3);
        let before = conv.forward(&x, None).unwrap();
        weight.set(&(weight.as_tensor() * 2.0).unwrap()).unwrap();
        let after = conv.forward(&x, None).unwrap();
        let (_, want) = naive(&x, None, weight.as_tensor(), &bias, (1, 1, 1), 1);
        let err = max_err(&after, &want);
        assert!(err < 1e-5, "stale kernel after an update: {err}");
        assert!(sorrel_core_diff(&before, &after) > 0.1);
    }

    fn sorrel_core_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }
}
