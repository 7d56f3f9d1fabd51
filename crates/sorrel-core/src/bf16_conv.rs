//! bf16 stride-1 (spatially) convolutions, causal 3D and 2D, on the AVX512-BF16 micro-kernel of
//! [`crate::bf16_matmul`], with f32 accumulation and one rounding of the result.
//!
//! The shape of [`crate::shifted_conv`]: each tap (k, dy, dx) is a product of the tap's (Cout, Cin) matrix with
//! the padded input frame shifted by dy·Wp + dx, over the full padded width, and the Wp - Wo columns past each
//! row's end are dropped. Here the padded frame is laid out with channel pairs side by side ((Cin/2, Hp·Wp, 2),
//! "pair-interleaved"): for pair p, 32 consecutive pixels of both channels are 64 contiguous bf16, exactly a
//! panel of the layout `vdpbf16ps` reads, so the micro-kernel reads the frame in place, a pair a plane apart.
//! All taps of one output tile are summed in its f32 registers and memory before a single rounding, as
//! PyTorch's bf16 convolution rounds once. candle 0.11 convolves bf16 by widening to f32 and gathering
//! (im2col), and no maintained crate has a bf16 convolution on the CPU, hence this op.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

use crate::bf16_matmul::{available, micro_kernel, ATile, KC, MR, NR};
use crate::ops::contiguous_bf16;
use crate::shifted_conv::Geometry;

/// The ops' name, for errors and profiles.
const NAME: &str = "bf16 shifted conv";

/// Output channels one work item takes (a multiple of [`MR`]): its tap matrices (at most 192 x 384 bf16 per
/// tap) stay in L2 while it walks its pixels.
const MC: usize = 192;
/// Panels of [`NR`] pixels one work item takes at most: its f32 tile (MC x 256) stays in L2 across the taps.
const GROUP_PANELS: usize = 8;

/// A convolution's weight (Cout, Cin, kt, kh, kw) laid out tap by tap, (kt, kh, kw, Cout, Cin), the layout
/// [`conv3d_bf16_causal`] reads: each tap's (Cout, Cin) matrix with its input channels contiguous.
pub fn taps_of(w: &Tensor) -> Result<Tensor> {
    w.dims5()?;
    w.permute((2, 3, 4, 0, 1))?.contiguous()
}

/// `x` (B, Cin, T, H, W) convolved with the kernel whose [`taps_of`] layout is `taps` (kt, kh, kw, Cout, Cin),
/// plus `bias` (Cout), all bf16 on the CPU, result bf16: `zeros` zero frames, then `cache`'s frames (B, Cin,
/// Tc, H, W), then `x`'s make the input (the causal padding of a chunked video, read straight into the padded
/// buffer; taps that would read only zero frames are skipped), temporal stride `stride_t`, spatial stride 1
/// with symmetric zero `padding`. Not tracked for gradients.
pub fn conv3d_bf16_causal(
    x: &Tensor,
    taps: &Tensor,
    bias: Option<&Tensor>,
    stride_t: usize,
    padding: usize,
    zeros: usize,
    cache: Option<&Tensor>,
) -> Result<Tensor> {
    let (kt, kh, kw, cout, cin) = taps.dims5()?;
    if !available() {
        // No bf16 dot products: the f32 convolution of the widened values, rounded once, as candle does.
        let f = |t: &Tensor| t.to_dtype(DType::F32);
        let cache = cache.map(f).transpose()?;
        let w = f(&taps.permute((3, 4, 0, 1, 2))?)?;
        let mut y = crate::shifted_conv::conv3d_shifted_causal(
            &f(x)?,
            &w,
            stride_t,
            padding,
            zeros,
            cache.as_ref(),
        )?;
        if let Some(b) = bias {
            y = y.broadcast_add(&f(b)?.reshape((1, cout, 1, 1, 1))?)?;
        }
        return y.to_dtype(DType::BF16);
    }
    let bias = match bias {
        Some(b) => {
            let v: Vec<f32> = b.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
            if v.len() != cout {
                candle_core::bail!("{NAME}: a bias of {} values for {cout} outputs", v.len());
            }
            Some(v)
        }
        None => None,
    };
    // Rows must hold whole pairs: an odd Cin (an RGB input) gets a zero channel.
    let taps = if cin % 2 == 1 {
        taps.pad_with_zeros(4, 0, 1)?
    } else {
        taps.clone()
    };
    let op = Bf16Conv {
        bias,
        cout,
        cin,
        kernel: (kt, kh, kw),
        padding,
        stride_t: stride_t.max(1),
        zeros,
    };
    let (x, taps) = (x.contiguous()?, taps.contiguous()?);
    match cache {
        Some(c) => x.apply_op3_no_bwd(&taps, &c.contiguous()?, &op),
        None => x.apply_op2_no_bwd(&taps, &op),
    }
}

/// `x` (B, Cin, H, W) convolved with `w` (Cout, Cin, kh, kw) plus `bias`, stride 1, symmetric zero
/// `padding`, all bf16: [`conv3d_bf16_causal`] on one frame.
pub fn conv2d_bf16(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
) -> Result<Tensor> {
    let y = conv3d_bf16_causal(
        &x.unsqueeze(2)?,
        &taps_of(&w.unsqueeze(2)?)?,
        bias,
        1,
        padding,
        0,
        None,
    )?;
    y.squeeze(2)
}

struct Bf16Conv {
    bias: Option<Vec<f32>>,
    cout: usize,
    cin: usize,
    kernel: (usize, usize, usize),
    padding: usize,
    stride_t: usize,
    zeros: usize,
}

/// A contiguous bf16 video (B, C, T, H, W) and its dims.
type Video<'a> = (&'a [bf16], (usize, usize, usize, usize, usize));

fn video<'a>(s: &'a CpuStorage, l: &Layout) -> Result<Video<'a>> {
    Ok((contiguous_bf16(s, l, NAME)?, l.shape().dims5()?))
}

impl CustomOp2 for Bf16Conv {
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
        self.run(video(xs, xl)?, contiguous_bf16(ws, wl, NAME)?, None)
    }
}

impl CustomOp3 for Bf16Conv {
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
        self.run(
            video(xs, xl)?,
            contiguous_bf16(ws, wl, NAME)?,
            Some(video(cs, cl)?),
        )
    }
}

#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: only used to write disjoint parts of one buffer from the work items of one call.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the whole wrapper, not its raw field).
    fn get(&self) -> *mut T {
        self.0
    }
}

impl Bf16Conv {
    fn run(&self, x: Video, taps: &[bf16], cache: Option<Video>) -> Result<(CpuStorage, Shape)> {
        let (x, xd) = x;
        let (cout, (kt, kh, kw)) = (self.cout, self.kernel);
        let g = Geometry::new(
            NAME,
            xd,
            cache.map(|c| c.1),
            (cout, self.cin, kt, kh, kw),
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
        // Spare rows at the bottom: a tap's run over the last panel reads up to NR - 1 pixels past the last
        // output pixel and kw - 1 past its row, beyond the padded image.
        let hp = h + 2 * p + (NR + kw).div_ceil(wp);
        let plane = hp * wp;
        let pairs = cin.div_ceil(2);
        let cin2 = 2 * pairs;
        if taps.len() != kt * kh * kw * cout * cin2 {
            candle_core::bail!(
                "{NAME}: {} tap weights for a ({cout}, {cin}, {kt}, {kh}, {kw}) kernel",
                taps.len()
            );
        }
        let frame_len = pairs * plane * 2;
        // The zero frames are not stored: taps over them are skipped.
        let stored = t_in - self.zeros;
        let mut padded = vec![bf16::ZERO; stored * frame_len];
        let mut out = vec![bf16::ZERO; b * cout * t_out * ho * wo];
        let threads = rayon::current_num_threads().max(1);
        let wide = ho * wp;
        let panels = wide.div_ceil(NR);
        let m_blocks = cout.div_ceil(MC);
        // Enough items for every thread to stay busy on small frames; at most GROUP_PANELS panels each.
        let per_group = panels
            .div_ceil((threads * 4).div_ceil(m_blocks))
            .clamp(1, GROUP_PANELS);
        let n_groups = panels.div_ceil(per_group);
        let frame_out = ho * wo;
        for i in 0..b {
            let item = &x[i * cin * t_x * h * wd..(i + 1) * cin * t_x * h * wd];
            let cached = &cache[i * cin * t_c * h * wd..(i + 1) * cin * t_c * h * wd];
            // Frame f, pair q: channels 2q and 2q + 1 interleaved inside the zero border (the border and the
            // spare rows are never written, so they stay zero across batch items).
            padded
                .par_chunks_mut(plane * 2)
                .enumerate()
                .for_each(|(fq, dst)| {
                    let (f, q) = (fq / pairs, fq % pairs);
                    let (src, t, f) = if f < t_c {
                        (cached, t_c, f)
                    } else {
                        (item, t_x, f - t_c)
                    };
                    let chan = |c: usize| &src[(c * t + f) * h * wd..(c * t + f + 1) * h * wd];
                    let c0 = chan(2 * q);
                    let c1 = (2 * q + 1 < cin).then(|| chan(2 * q + 1));
                    for y in 0..h {
                        let row = &mut dst[((y + p) * wp + p) * 2..((y + p) * wp + p + wd) * 2];
                        let (r0, r1) = (
                            &c0[y * wd..(y + 1) * wd],
                            c1.map(|c| &c[y * wd..(y + 1) * wd]),
                        );
                        for (xi, pair) in row.chunks_exact_mut(2).enumerate() {
                            pair[0] = r0[xi];
                            if let Some(r1) = r1 {
                                pair[1] = r1[xi];
                            }
                        }
                    }
                });
            let sink = SendPtr(out[i * cout * t_out * frame_out..].as_mut_ptr());
            for to in 0..t_out {
                (0..m_blocks * n_groups).into_par_iter().for_each(|it| {
                    let (mb, g) = (it / n_groups, it % n_groups);
                    let rows = MC.min(cout - mb * MC);
                    let panel_range = g * per_group..((g + 1) * per_group).min(panels);
                    let col0 = panel_range.start * NR;
                    let width = (panel_range.end * NR).min(wide) - col0;
                    // Zeros, then every product is added: taps over zero frames are skipped.
                    let mut tile = vec![0f32; rows * width];
                    let mut panel = vec![bf16::ZERO; KC * NR];
                    for tap in 0..kt * kh * kw {
                        let (k, dy, dx) = (tap / (kh * kw), tap / kw % kh, tap % kw);
                        let Some(f) = (to * s + k).checked_sub(self.zeros) else {
                            continue;
                        };
                        let frame = &padded[f * frame_len..(f + 1) * frame_len];
                        let offset = dy * wp + dx;
                        for q0 in (0..pairs).step_by(KC / 2) {
                            let kc_pairs = (KC / 2).min(pairs - q0);
                            for j in panel_range.clone() {
                                let cols = NR.min(wide - j * NR);
                                // The panel's pairs are a plane apart in the frame: copied into one
                                // contiguous block first, so the micro-tiles that share it read
                                // consecutive lines whatever the frame's width (the same speed within
                                // 3 % on the decoder's sizes, conv_bench).
                                for (q, dst) in
                                    panel.chunks_exact_mut(NR * 2).take(kc_pairs).enumerate()
                                {
                                    let at = ((q0 + q) * plane + j * NR + offset) * 2;
                                    dst.copy_from_slice(&frame[at..at + NR * 2]);
                                }
                                let bp = panel.as_ptr();
                                for r in 0..rows.div_ceil(MR) {
                                    let tile_rows = MR.min(rows - r * MR);
                                    let a = ATile {
                                        ptr: taps
                                            [(tap * cout + mb * MC + r * MR) * cin2 + 2 * q0..]
                                            .as_ptr(),
                                        row_stride: cin2,
                                        pair_stride: 2,
                                    };
                                    // SAFETY: `a` has tile_rows rows of the tap's matrix (cin2 apart) from
                                    // pair q0, kc_pairs pairs each (q0 + kc_pairs <= pairs); `bp` is the
                                    // copied panel, kc_pairs pairs of NR x 2 values (the copy's slices
                                    // stay inside the frame thanks to the spare rows); the tile has
                                    // tile_rows rows of `width` f32 with `cols` columns from j·NR - col0
                                    // inside; AVX512-BF16 was checked.
                                    unsafe {
                                        micro_kernel(
                                            kc_pairs,
                                            a,
                                            bp,
                                            NR * 2,
                                            tile.as_mut_ptr().add(r * MR * width + j * NR - col0),
                                            width,
                                            tile_rows,
                                            cols,
                                            true,
                                        );
                                    }
                                }
                            }
                        }
                    }
                    // The tile's pixels are positions in the padded width: keep those inside a row.
                    for (r, src) in tile.chunks(width).enumerate() {
                        let co = mb * MC + r;
                        let bias = self.bias.as_ref().map_or(0.0, |b| b[co]);
                        let base = (co * t_out + to) * frame_out;
                        for (c, &v) in src.iter().enumerate() {
                            let pos = col0 + c;
                            let (y, xo) = (pos / wp, pos % wp);
                            if xo < wo {
                                // SAFETY: item (mb, g) writes only channels mb·MC.. of its own pixels,
                                // inside this batch item's (Cout, T', Ho, Wo) output.
                                unsafe {
                                    *sink.get().add(base + y * wo + xo) =
                                        bf16::from_bits(crate::simd::to_bf16_bits(v + bias));
                                }
                            }
                        }
                    }
                });
            }
        }
        Ok((CpuStorage::BF16(out), Shape::from((b, cout, t_out, ho, wo))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sorrel_testkit::max_abs_diff;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        sorrel_testkit::lcg_tensor(shape, seed, 1.0)
            .to_dtype(DType::BF16)
            .unwrap()
    }

    fn f32(t: &Tensor) -> Tensor {
        t.to_dtype(DType::F32).unwrap()
    }

    /// Against the f32 convolution of the same bf16 values: odd and even channel counts, kernels of 3x3x3,
    /// (3,1,1), 1x1x1 and 3x3, widths narrower than a panel, a cache, zero frames, a temporal stride, a batch.
    /// The only differences are f32 summation order and the result's one bf16 rounding: half an ulp of the
    /// result (2^-9 of it) plus f32 rounding of K products.
    #[test]
    fn matches_the_f32_convolution_of_the_same_values() {
        type Dims = (usize, usize, usize, usize, usize);
        // (input, kernel, temporal stride, padding, zero frames, cached frames)
        let cases: [(Dims, Dims, usize, usize, usize, usize); 7] = [
            ((1, 8, 3, 9, 13), (12, 8, 3, 3, 3), 1, 1, 2, 0),
            ((2, 5, 2, 6, 7), (7, 5, 3, 3, 3), 1, 1, 0, 1),
            ((1, 16, 4, 5, 40), (30, 16, 3, 1, 1), 1, 0, 1, 1),
            ((1, 24, 1, 11, 3), (13, 24, 1, 1, 1), 1, 0, 0, 0),
            ((1, 3, 1, 33, 35), (4, 3, 1, 3, 3), 1, 1, 0, 0),
            ((1, 6, 5, 4, 4), (200, 6, 3, 3, 3), 2, 1, 0, 0),
            ((1, 400, 1, 7, 8), (9, 400, 1, 3, 3), 1, 1, 0, 0),
        ];
        for (xs, ws, stride, pad, zeros, tc) in cases {
            let x = rand(&[xs.0, xs.1, xs.2, xs.3, xs.4], 1);
            let w = rand(&[ws.0, ws.1, ws.2, ws.3, ws.4], 2);
            let bias = rand(&[ws.0], 3);
            let cache = (tc > 0).then(|| rand(&[xs.0, xs.1, tc, xs.3, xs.4], 4));
            let taps = taps_of(&w).unwrap();
            let got =
                conv3d_bf16_causal(&x, &taps, Some(&bias), stride, pad, zeros, cache.as_ref())
                    .unwrap();
            let want = crate::shifted_conv::conv3d_shifted_causal(
                &f32(&x),
                &f32(&w),
                stride,
                pad,
                zeros,
                cache.as_ref().map(f32).as_ref(),
            )
            .unwrap()
            .broadcast_add(&f32(&bias).reshape((1, ws.0, 1, 1, 1)).unwrap())
            .unwrap();
            assert_eq!(got.dims(), want.dims(), "{xs:?} * {ws:?}");
            assert_eq!(got.dtype(), DType::BF16);
            let scale = sorrel_testkit::max_abs(&want);
            let k = (ws.1 * ws.2 * ws.3 * ws.4) as f32;
            let d = max_abs_diff(&f32(&got), &want);
            assert!(
                d <= scale / 256.0 + 1e-6 * k,
                "{xs:?} * {ws:?}: {d} (scale {scale})"
            );
        }
        let x = rand(&[1, 4, 1, 5, 5], 5);
        let w = rand(&[3, 4, 3, 3], 6);
        let got = conv2d_bf16(&x.squeeze(2).unwrap(), &w, None, 1).unwrap();
        let want =
            crate::shifted_conv::conv2d_shifted(&f32(&x.squeeze(2).unwrap()), &f32(&w), 1).unwrap();
        let scale = sorrel_testkit::max_abs(&want);
        assert!(max_abs_diff(&f32(&got), &want) <= scale / 256.0 + 1e-6 * 36.0);
    }

    #[test]
    fn mismatched_operands_are_errors() {
        let x = rand(&[1, 4, 2, 5, 5], 1);
        let taps = |w: Tensor| taps_of(&w).unwrap();
        assert!(
            conv3d_bf16_causal(&x, &taps(rand(&[3, 5, 3, 3, 3], 2)), None, 1, 1, 2, None).is_err()
        );
        let cache = rand(&[1, 4, 2, 5, 6], 3);
        let w = taps(rand(&[3, 4, 3, 3, 3], 2));
        assert!(conv3d_bf16_causal(&x, &w, None, 1, 1, 0, Some(&cache)).is_err());
        assert!(conv3d_bf16_causal(&x, &w, Some(&rand(&[4], 1)), 1, 1, 2, None).is_err());
        // Two frames and no padding cannot feed a kernel of three.
        assert!(conv3d_bf16_causal(&x, &w, None, 1, 1, 0, None).is_err());
    }
}
