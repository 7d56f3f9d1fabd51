//! Stride-1 2D (and causal 3D) convolutions as kh·kw (kt·kh·kw) matrix products over shifted views of the
//! padded image, with no im2col.
//!
//! candle 0.11's CPU conv2d gathers every output pixel's kh·kw·Cin inputs into a column tile, one element at
//! a time, before its matrix product: for the Wan VAE's 3x3 convolutions over 288 tap-channels the gathering,
//! not the arithmetic, took most of a decode (80 s for five 256x256 frames against diffusers' 16 s). Here the
//! image is padded once into a (Cin, Hp, Wp) buffer; for tap (dy, dx) the inputs of all output pixels, laid
//! out over the full padded width, are the contiguous run starting at dy·Wp + dx of every channel's plane, so
//! the tap is one GEMM (Cout x Cin) · (Cin x Ho·Wp) with a row stride, accumulated into the output by `gemm`
//! itself. The Wp - Wo columns computed past each row's end are dropped. No maintained crate offers this
//! for candle tensors (candle's own backends gather), hence the hand-written op.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::ops::contiguous_f32;

/// `x` (B, Cin, H, W) convolved with `w` (Cout, Cin, kh, kw), stride 1, symmetric zero `padding`; f32 on the
/// CPU, not tracked for gradients (the caller checks).
pub fn conv2d_shifted(x: &Tensor, w: &Tensor, padding: usize) -> Result<Tensor> {
    let y = conv3d_shifted(&x.unsqueeze(2)?, &w.unsqueeze(2)?, 1, padding)?;
    y.squeeze(2)
}

/// `x` (B, Cin, T, H, W) convolved with `w` (Cout, Cin, kt, kh, kw): no temporal padding (the caller puts the
/// causal padding or cache in `x`), temporal stride `stride_t`, spatial stride 1 with symmetric zero `padding`.
/// Each output frame is kt·kh·kw GEMMs accumulated in place, so the temporal taps need no stacked copy either.
pub fn conv3d_shifted(x: &Tensor, w: &Tensor, stride_t: usize, padding: usize) -> Result<Tensor> {
    conv3d_shifted_causal(x, w, stride_t, padding, 0, None)
}

/// [`conv3d_shifted`] over `zeros` zero frames, then `cache`'s frames (B, Cin, Tc, H, W), then `x`'s: the
/// causal padding of a chunked video, read straight into the padded buffer instead of concatenated into a
/// copy of the input first (at full resolution in a VAE decode that copy is 1.5 times the chunk).
pub fn conv3d_shifted_causal(
    x: &Tensor,
    w: &Tensor,
    stride_t: usize,
    padding: usize,
    zeros: usize,
    cache: Option<&Tensor>,
) -> Result<Tensor> {
    let op = ShiftedConv {
        padding,
        stride_t: stride_t.max(1),
        zeros,
    };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match cache {
        Some(c) => x.apply_op3_no_bwd(&w, &c.contiguous()?, &op),
        None => x.apply_op2_no_bwd(&w, &op),
    }
}

/// The ops' name, for errors and profiles.
const NAME: &str = "shifted-gemm-conv";

struct ShiftedConv {
    padding: usize,
    stride_t: usize,
    /// Zero frames in front of the cache and the input.
    zeros: usize,
}

/// A contiguous f32 video (B, C, T, H, W) and its dims.
type Video<'a> = (&'a [f32], (usize, usize, usize, usize, usize));

/// The op's input as a [`Video`] (a convolution's weight too: (Cout, Cin, kt, kh, kw)).
fn video<'a>(s: &'a CpuStorage, l: &Layout) -> Result<Video<'a>> {
    Ok((contiguous_f32(s, l, NAME)?, l.shape().dims5()?))
}

impl CustomOp2 for ShiftedConv {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run(video(xs, xl)?, video(ws, wl)?, None)
    }
}

impl CustomOp3 for ShiftedConv {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        cs: &CpuStorage,
        cl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run(video(xs, xl)?, video(ws, wl)?, Some(video(cs, cl)?))
    }
}

/// The checked shape of one shifted convolution: `zeros` zero frames, a cache of `t_c` frames and the input's
/// `t_x`, stride `stride_t` in time, symmetric spatial `padding`. Shared by the f32 and bf16 ops.
pub(crate) struct Geometry {
    pub(crate) b: usize,
    pub(crate) cin: usize,
    pub(crate) t_x: usize,
    pub(crate) t_c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) t_in: usize,
    pub(crate) t_out: usize,
    pub(crate) ho: usize,
    pub(crate) wo: usize,
    /// The padded width.
    pub(crate) wp: usize,
}

impl Geometry {
    /// `x` (B, Cin, T, H, W), the cache's dims, the kernel's (Cout, Cin, kt, kh, kw); an error naming `op` when
    /// they do not fit together.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        op: &str,
        x: (usize, usize, usize, usize, usize),
        cache: Option<(usize, usize, usize, usize, usize)>,
        (cout, cin_w, kt, kh, kw): (usize, usize, usize, usize, usize),
        padding: usize,
        stride_t: usize,
        zeros: usize,
    ) -> Result<Self> {
        let (b, cin, t_x, h, w) = x;
        let t_c = match cache {
            Some((cb, cc, t_c, ch, cw)) => {
                if (cb, cc, ch, cw) != (b, cin, h, w) {
                    candle_core::bail!(
                        "{op}: cache ({cb}, {cc}, {t_c}, {ch}, {cw}) does not match input ({b}, {cin}, .., {h}, {w})"
                    );
                }
                t_c
            }
            None => 0,
        };
        let t_in = zeros + t_c + t_x;
        let p = padding;
        if cin != cin_w || t_in < kt || h + 2 * p < kh || w + 2 * p < kw {
            candle_core::bail!(
                "{op}: input (.., {cin}, {t_in}, {h}, {w}) and kernel ({cout}, {cin_w}, {kt}, {kh}, {kw}) with \
                 padding {p} do not fit"
            );
        }
        Ok(Self {
            b,
            cin,
            t_x,
            t_c,
            h,
            w,
            t_in,
            t_out: (t_in - kt) / stride_t.max(1) + 1,
            ho: h + 2 * p - kh + 1,
            wo: w + 2 * p - kw + 1,
            wp: w + 2 * p,
        })
    }
}

impl ShiftedConv {
    fn run(&self, x: Video, w: Video, cache: Option<Video>) -> Result<(CpuStorage, Shape)> {
        let (x, xd) = x;
        let (w, wd_) = w;
        let (cout, _, kt, kh, kw) = wd_;
        let g = Geometry::new(
            NAME,
            xd,
            cache.map(|c| c.1),
            wd_,
            self.padding,
            self.stride_t,
            self.zeros,
        )?;
        let cache = cache.map_or(&[][..], |c| c.0);
        let Geometry {
            b,
            cin,
            t_x,
            t_c,
            h,
            w: wd,
            t_in,
            t_out,
            ho,
            wo,
            wp,
        } = g;
        let (p, s) = (self.padding, self.stride_t);
        // One spare row at the bottom: the last tap's run reaches kw - 1 elements past the padded image.
        let hp = h + 2 * p + 1;
        let plane = hp * wp;
        let spatial = kh * kw;
        // taps[k·spatial + t] = w[:, :, k, dy, dx] as a (Cout, Cin) matrix, t = dy·kw + dx.
        let mut taps = vec![0f32; kt * spatial * cout * cin];
        for co in 0..cout {
            for ci in 0..cin {
                for tap in 0..kt * spatial {
                    taps[(tap * cout + co) * cin + ci] = w[(co * cin + ci) * kt * spatial + tap];
                }
            }
        }
        let wide = ho * wp;
        // Every input frame of one batch item, padded: (T, Cin, Hp, Wp).
        let mut padded = vec![0f32; t_in * cin * plane];
        let mut acc = vec![0f32; cout * wide];
        let mut out = vec![0f32; b * cout * t_out * ho * wo];
        let threads = rayon::current_num_threads();
        let zeros = self.zeros;
        for i in 0..b {
            let item = &x[i * cin * t_x * h * wd..(i + 1) * cin * t_x * h * wd];
            let cached = &cache[i * cin * t_c * h * wd..(i + 1) * cin * t_c * h * wd];
            padded
                .par_chunks_mut(plane)
                .enumerate()
                .skip(zeros * cin)
                .for_each(|(fc, dst)| {
                    // Frame f of the padded video: zeros, then the cache's frames, then the input's.
                    let (f, c) = (fc / cin - zeros, fc % cin);
                    let (video, t, f) = if f < t_c {
                        (cached, t_c, f)
                    } else {
                        (item, t_x, f - t_c)
                    };
                    let src = &video[(c * t + f) * h * wd..(c * t + f + 1) * h * wd];
                    for y in 0..h {
                        dst[(y + p) * wp + p..(y + p) * wp + p + wd]
                            .copy_from_slice(&src[y * wd..(y + 1) * wd]);
                    }
                });
            for to in 0..t_out {
                for tap in 0..kt * spatial {
                    let (k, t) = (tap / spatial, tap % spatial);
                    let frame = &padded[(to * s + k) * cin * plane..(to * s + k + 1) * cin * plane];
                    let offset = (t / kw) * wp + t % kw;
                    // SAFETY: every pointer and stride stays inside its buffer: acc is Cout rows of `wide`;
                    // the tap matrix is Cout rows of Cin; the shifted input is Cin rows of `wide` elements
                    // starting at c·plane + offset within `frame`, and offset + wide <= (kh - 1)·wp + kw - 1 +
                    // ho·wp < plane (the spare row).
                    unsafe {
                        gemm::gemm(
                            cout,
                            wide,
                            cin,
                            acc.as_mut_ptr(),
                            1,
                            wide as isize,
                            tap > 0,
                            taps[tap * cout * cin..].as_ptr(),
                            1,
                            cin as isize,
                            frame[offset..].as_ptr(),
                            1,
                            plane as isize,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            Parallelism::Rayon(threads),
                        );
                    }
                }
                // (B, Cout, T', Ho, Wo): this frame's rows of every output channel.
                let frame_out = ho * wo;
                let item_out =
                    &mut out[i * cout * t_out * frame_out..(i + 1) * cout * t_out * frame_out];
                item_out
                    .par_chunks_mut(t_out * frame_out)
                    .enumerate()
                    .for_each(|(co, d)| {
                        let d = &mut d[to * frame_out..(to + 1) * frame_out];
                        for y in 0..ho {
                            let row = &acc[co * wide + y * wp..co * wide + y * wp + wo];
                            d[y * wo..(y + 1) * wo].copy_from_slice(row);
                        }
                    });
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((b, cout, t_out, ho, wo))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use sorrel_testkit::max_abs_diff;

    /// Against candle's conv2d: 3x3 with and without padding, non-square kernels and images, a batch, one
    /// channel, and a 1-pixel-wide result. The same dot products summed tap by tap instead of in one run:
    /// f32 rounding, bound 1e-5 of the largest value.
    #[test]
    fn matches_candles_conv2d() {
        let dev = Device::Cpu;
        let cases = [
            ((2, 5, 9, 7), (4, 5, 3, 3), 1),
            ((1, 3, 6, 11), (6, 3, 3, 3), 0),
            ((3, 4, 5, 8), (2, 4, 2, 3), 1),
            ((1, 1, 4, 4), (3, 1, 3, 3), 2),
            ((2, 2, 6, 3), (3, 2, 1, 3), 0),
        ];
        for (xs, ws, pad) in cases {
            let x = Tensor::randn(0f32, 1.0, xs, &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, ws, &dev).unwrap();
            let want = x.conv2d(&w, pad, 1, 1, 1).unwrap();
            let got = conv2d_shifted(&x, &w, pad).unwrap();
            assert_eq!(got.dims(), want.dims(), "{xs:?} * {ws:?} pad {pad}");
            let scale = want
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(
                d <= 1e-5 * scale,
                "{xs:?} * {ws:?} pad {pad}: {d} (scale {scale})"
            );
        }
    }
}
