//! bf16 matrix products with AVX512-BF16 dot products and f32 accumulation.
//!
//! candle 0.11.1 has no bf16 GEMM on the CPU: it widens both operands to f32 (the whole weight, on every
//! call), multiplies in f32 and narrows the result, which made Sorrel's bf16 transformer 2x slower than its
//! f32 one and 12x slower than PyTorch's bf16 (oneDNN). `gemm` 0.19 has f16 but no bf16 kernels, and no
//! maintained Rust crate uses `vdpbf16ps`, which multiplies 32 bf16 pairs into 16 f32 sums per instruction:
//! twice the f32 FMA rate on this Zen 5. Hence this hand-written, BLIS-shaped kernel.
//!
//! Shape: `out[i, j] = sum_k a[i, k] * b[j, k]` ("NT": both operands keep `k` contiguous, the layout of a
//! linear layer's `(out, in)` weight and of attention's keys). `b` is packed ([`PackedB`]: once at load for a
//! weight) into panels of [`NR`] columns holding pairs of `k` side by side, the layout `vdpbf16ps` reads; `a`
//! is read in place (packed into micro-panels of [`MR`] rows only when K is odd). Work items take [`MC`] rows
//! and up to [`MAX_GROUP_PANELS`] panels; the 12 x 32 micro-kernel keeps 24 accumulators in registers.
//! Machines without AVX512-BF16 get the f32 product of the widened operands, as candle does.

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

use crate::ops::{contiguous_bf16, cpu_storage};

/// The ops' name, for errors and profiles.
const NAME: &str = "bf16 matmul";

/// Rows of a micro-tile.
pub(crate) const MR: usize = 12;
/// 16-lane f32 vectors in a micro-tile's row.
const NV: usize = 2;
/// Columns of a micro-tile.
pub(crate) const NR: usize = 16 * NV;
/// Rows of `a` one work item takes (a multiple of [`MR`]).
const MC: usize = 192;
/// Rows of `a` a work item takes when the products are shallow (K < 512: attention's scores).
const MC_SHALLOW: usize = 96;
/// Depth of one pass over packed `a` and `b` (even): a `b` micro-panel of KC x NR bf16 (24 KB) and an `a` one
/// (9 KB) stay in L1 (256 and 512 measured within 5 %).
pub(crate) const KC: usize = 384;
/// Panels of `b` one work item multiplies (see [`gemm_nt`]).
const MAX_GROUP_PANELS: usize = 32;

/// Whether this CPU multiplies bf16 pairs natively.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
            && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `a` (…, M, K) times the transpose of `b` (N, K) or (…, N, K) with the same leading dims: (…, M, N), both
/// bf16 on the CPU, the result in `out` (bf16 or f32), accumulated in f32 whatever `out`.
pub fn matmul_nt(a: &Tensor, b: &Tensor, out: DType) -> Result<Tensor> {
    matmul_nt_bias(a, b, None, out)
}

/// [`matmul_nt`] plus `bias` (N,) on every row, added to the f32 sums before the result is rounded: a
/// linear layer as PyTorch computes it in bf16 (one rounding, where product then bias rounds twice).
pub fn matmul_nt_bias(a: &Tensor, b: &Tensor, bias: Option<&Tensor>, out: DType) -> Result<Tensor> {
    std::sync::Arc::new(PackedB::pack_batched(b)?).matmul(a, bias, out)
}

/// A bias as f32 values, checked against the outputs it is added to.
fn bias_values(bias: Option<&Tensor>, n: usize) -> Result<Option<Vec<f32>>> {
    let Some(t) = bias else { return Ok(None) };
    let v: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    if v.len() != n {
        candle_core::bail!("bf16 matmul: a bias of {} values for {n} outputs", v.len());
    }
    Ok(Some(v))
}

/// A constant right-hand operand packed once in the layout the micro-kernel reads: a linear layer's bf16
/// weight (N, K), packed at load (packing it on every call cost a fifth of the product's time, perf, 1536 x
/// 1536 weight at 1,280 tokens; the packed copy replaces the weight, so memory stays the same), or
/// attention's keys or transposed values, one matrix per head, packed once per call and shared by every
/// block of queries.
#[derive(Debug)]
pub struct PackedB {
    pub(crate) data: Vec<bf16>,
    pub(crate) n: usize,
    pub(crate) k: usize,
    /// Matrices packed (each `stride` values): 1 for a weight, batch x heads for attention.
    pub(crate) batch: usize,
    pub(crate) stride: usize,
}

impl PackedB {
    /// Packs `w` (N, K), bf16 on the CPU.
    pub fn pack(w: &Tensor) -> Result<Self> {
        w.dims2()?;
        Self::pack_batched(w)
    }

    /// Packs each (N, K) matrix of `w` (…, N, K), bf16 on the CPU; [`PackedB::matmul`] then multiplies the
    /// matching matrix of its input by each.
    pub fn pack_batched(w: &Tensor) -> Result<Self> {
        let dims = w.dims();
        if dims.len() < 2 {
            candle_core::bail!("bf16 matmul: a packed operand needs two dims, got {dims:?}");
        }
        let (n, k) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let batch: usize = dims[..dims.len() - 2].iter().product();
        let w = w.contiguous()?;
        let (storage, layout) = w.storage_and_layout();
        let src = contiguous_bf16(cpu_storage(&storage, NAME)?, layout, NAME)?;
        let stride = n.div_ceil(NR) * k.div_ceil(2) * NR * 2;
        let mut data = Vec::with_capacity(batch * stride);
        for i in 0..batch {
            data.extend(pack_b(&src[i * n * k..(i + 1) * n * k], n, k));
        }
        Ok(Self {
            data,
            n,
            k,
            batch,
            stride,
        })
    }

    /// (outputs, inputs) of each packed matrix.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// `a` (…, M, K) bf16 times the transpose of the packed matrix, plus `bias` (N,): (…, M, N) in `out`.
    /// A batched pack takes `a` (…, M, K) whose leading dims hold as many matrices, each with its own.
    pub fn matmul(
        self: &std::sync::Arc<Self>,
        a: &Tensor,
        bias: Option<&Tensor>,
        out: DType,
    ) -> Result<Tensor> {
        if !matches!(out, DType::BF16 | DType::F32) {
            candle_core::bail!("bf16 matmul: the result must be bf16 or f32, not {out:?}");
        }
        let bias = bias_values(bias, self.n)?;
        a.contiguous()?.apply_op1_no_bwd(&MatmulPacked {
            b: self.clone(),
            out,
            bias,
        })
    }
}

struct MatmulPacked {
    b: std::sync::Arc<PackedB>,
    out: DType,
    bias: Option<Vec<f32>>,
}

impl candle_core::CustomOp1 for MatmulPacked {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let a = contiguous_bf16(s, l, NAME)?;
        let ad = l.dims();
        let (n, k, batch) = (self.b.n, self.b.k, self.b.batch);
        let Some((&ka, lead)) = ad.split_last() else {
            candle_core::bail!("bf16 matmul: the input needs a dim");
        };
        if ka != k {
            candle_core::bail!("bf16 matmul: inputs of {ka} features for a weight of {k}");
        }
        let rows: usize = lead.iter().product();
        // A single matrix multiplies every row; a batched pack needs the input's leading dims to match it.
        let (groups, m) = if batch == 1 {
            (1, rows)
        } else {
            let (m, outer) = lead.split_last().map_or((0, &[][..]), |(&m, o)| (m, o));
            if outer.iter().product::<usize>() != batch {
                candle_core::bail!(
                    "bf16 matmul: an input of shape {ad:?} for {batch} packed matrices"
                );
            }
            (batch, m)
        };
        let mut dims = lead.to_vec();
        dims.push(n);
        let run = |i: usize, out: Out| {
            gemm_nt(
                &a[i * m * k..(i + 1) * m * k],
                &self.b.data[i * self.b.stride..],
                (m, n, k),
                self.bias.as_deref(),
                out,
            )
        };
        let storage = match self.out {
            DType::F32 => {
                let mut c = vec![0f32; rows * n];
                for (i, c) in c.chunks_mut((m * n).max(1)).enumerate().take(groups) {
                    run(i, Out::F32(c));
                }
                CpuStorage::F32(c)
            }
            _ => {
                let mut c = vec![bf16::ZERO; rows * n];
                for (i, c) in c.chunks_mut((m * n).max(1)).enumerate().take(groups) {
                    run(i, Out::Bf16(c));
                }
                CpuStorage::BF16(c)
            }
        };
        Ok((storage, Shape::from_dims(&dims)))
    }
}

/// `b` (N, K) in panels of [`NR`] columns: panel `j` holds, for each pair of `k`, its 32 columns' two values
/// side by side. K is padded to even and N to a multiple of NR with zeros.
fn pack_b(b: &[bf16], n: usize, k: usize) -> Vec<bf16> {
    let kp = k.div_ceil(2);
    let panels = n.div_ceil(NR);
    let mut out = vec![bf16::ZERO; panels * kp * NR * 2];
    out.par_chunks_mut(kp * NR * 2)
        .enumerate()
        .for_each(|(j, panel)| {
            let live = NR.min(n - j * NR);
            pack_pairs(&b[j * NR * k..], k, live, NR, k, panel);
        });
    out
}

/// Rows `0..live` of `src` (`stride` apart, `kc` values each) into `dst` as pairs side by side: for each
/// pair of columns, `width` rows' two values (rows past `live` and an odd last column are left as they are
/// in `dst`). Pairs move as one 32-bit word, the rows in step: element by element this packing was 6 % of a
/// bf16 forward.
fn pack_pairs(src: &[bf16], stride: usize, live: usize, width: usize, kc: usize, dst: &mut [bf16]) {
    let pairs = kc / 2;
    let rows: Vec<&[bf16]> = (0..live)
        .map(|i| &src[i * stride..i * stride + kc])
        .collect();
    for (p, out) in dst.chunks_exact_mut(width * 2).take(pairs).enumerate() {
        for (o, row) in out.chunks_exact_mut(2).zip(&rows) {
            o.copy_from_slice(&row[2 * p..2 * p + 2]);
        }
    }
    if kc % 2 == 1 {
        let out = &mut dst[pairs * width * 2..];
        for (i, row) in rows.iter().enumerate() {
            out[2 * i] = row[kc - 1];
        }
    }
}

/// Where a product's rows go: f32 or bf16 (rounded to nearest even, as PyTorch narrows its accumulators).
pub(crate) enum Out<'a> {
    F32(&'a mut [f32]),
    Bf16(&'a mut [bf16]),
}

/// `out` (M, N) = `a` (M, K) times the packed transpose of `b`, plus `bias` (N) on every row.
fn gemm_nt(
    a: &[bf16],
    pb: &[bf16],
    (m, n, k): (usize, usize, usize),
    bias: Option<&[f32]>,
    out: Out,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 || !available() {
        let mut c = gemm_nt_widened(a, pb, m, n, k);
        if let Some(bias) = bias {
            for row in c.chunks_mut(n) {
                row.iter_mut().zip(bias).for_each(|(c, b)| *c += b);
            }
        }
        match out {
            Out::F32(o) => o.copy_from_slice(&c),
            Out::Bf16(o) => half::slice::HalfFloatSliceExt::convert_from_f32_slice(o, &c),
        }
        return;
    }
    let panels = n.div_ceil(NR);
    // Each item streams its columns of `b` once per KC pass, so taller row blocks read `b` fewer times: 192
    // rows took the FFN's products from 700-730 to 755-790 GFLOP/s (matmul_bench); shallow products, which
    // stream little of `b`, keep 96 rows for more, smaller items (720 against 400-470 GFLOP/s).
    let mc = if k >= 512 { MC } else { MC_SHALLOW };
    let m_blocks = m.div_ceil(mc);
    // Columns are split into groups too: so that every thread has work when there are few row blocks (short
    // sequences), and so that one item's f32 results (at most MC x 1024, 768 KB), which every KC pass reads and
    // writes again, stay in L2. They go to `out` once, after the last pass: no (M, N) f32 copy.
    let threads = rayon::current_num_threads().max(1);
    let n_groups = (threads * 4)
        .div_ceil(m_blocks)
        .clamp(panels.div_ceil(MAX_GROUP_PANELS), panels);
    let panels_per_group = panels.div_ceil(n_groups);
    let n_groups = panels.div_ceil(panels_per_group);
    let kp = k.div_ceil(2);
    let out = match out {
        Out::F32(o) => Sink::F32(SendPtr(o.as_mut_ptr())),
        Out::Bf16(o) => Sink::Bf16(SendPtr(o.as_mut_ptr())),
    };
    (0..m_blocks * n_groups).into_par_iter().for_each(|item| {
        let (mb, g) = (item / n_groups, item % n_groups);
        let rows = mc.min(m - mb * mc);
        let panel_range = g * panels_per_group..((g + 1) * panels_per_group).min(panels);
        let col0 = panel_range.start * NR;
        let width = (panel_range.end * NR).min(n) - col0;
        // `a` is read in place, row by row, when its rows hold whole pairs (even K, as every real model
        // has): packing it cost as much as the attention's exponentials. Odd K packs micro-panels instead.
        let direct = k % 2 == 0;
        let mut pa = if direct {
            Vec::new()
        } else {
            vec![bf16::ZERO; mc.div_ceil(MR) * MR * KC]
        };
        let mut tile = vec![0f32; rows * width];
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            let kc_pairs = kc.div_ceil(2);
            if !direct {
                pack_a(&a[mb * mc * k..], k, rows, k0, kc, &mut pa);
            }
            for j in panel_range.clone() {
                let bp = &pb[(j * kp + k0 / 2) * NR * 2..];
                let cols = NR.min(n - j * NR);
                for r in 0..rows.div_ceil(MR) {
                    let tile_rows = MR.min(rows - r * MR);
                    let at = r * MR * width + (j * NR - col0);
                    let a_tile = if direct {
                        ATile {
                            ptr: a[(mb * mc + r * MR) * k + k0..].as_ptr(),
                            row_stride: k,
                            pair_stride: 2,
                        }
                    } else {
                        ATile {
                            ptr: pa[r * MR * kc_pairs * 2..].as_ptr(),
                            row_stride: 2,
                            pair_stride: MR * 2,
                        }
                    };
                    // SAFETY: the micro-tile's `tile_rows` rows of `cols` values, `width` apart, start at `at`
                    // and end inside `tile` (rows x width); `a_tile` has `tile_rows` rows of kc_pairs pairs
                    // (in place: rows of `a` from row mb·mc + r·MR, columns k0..k0 + kc; packed: a micro-panel)
                    // and `bp` kc_pairs pairs of its NR columns; `available()` held above.
                    unsafe {
                        micro_kernel(
                            kc_pairs,
                            a_tile,
                            bp.as_ptr(),
                            NR * 2,
                            tile.as_mut_ptr().add(at),
                            width,
                            tile_rows,
                            cols,
                            k0 > 0,
                        );
                    }
                }
            }
        }
        if let Some(bias) = bias {
            let bias = &bias[col0..col0 + width];
            for row in tile.chunks_mut(width) {
                row.iter_mut().zip(bias).for_each(|(c, b)| *c += b);
            }
        }
        for (r, src) in tile.chunks(width).enumerate() {
            let at = (mb * mc + r) * n + col0;
            // SAFETY: each work item writes its own rows (mb) and columns (group g) of the (M, N) output.
            unsafe {
                match out {
                    Sink::F32(p) => {
                        std::slice::from_raw_parts_mut(p.0.add(at), width).copy_from_slice(src)
                    }
                    Sink::Bf16(p) => crate::simd::f32_to_bf16(
                        src,
                        std::slice::from_raw_parts_mut(p.0.add(at), width),
                    ),
                }
            }
        }
    });
}

/// The output, shared by work items that write disjoint tiles of it.
#[derive(Clone, Copy)]
enum Sink {
    F32(SendPtr<f32>),
    Bf16(SendPtr<bf16>),
}

#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: only used to write disjoint parts of one output from the work items of one call (see gemm_nt).
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// Rows `0..rows` of `a` (row stride `k`), depth `k0..k0 + kc`, into micro-panels of [`MR`] rows: for each pair
/// of `k`, the MR rows' two values side by side. Missing rows and an odd last `k` are zeros.
fn pack_a(a: &[bf16], k: usize, rows: usize, k0: usize, kc: usize, pa: &mut [bf16]) {
    let kc_pairs = kc.div_ceil(2);
    for (r, panel) in pa
        .chunks_mut(MR * kc_pairs * 2)
        .take(rows.div_ceil(MR))
        .enumerate()
    {
        let live = MR.min(rows - r * MR);
        if live < MR || kc % 2 == 1 {
            panel.fill(bf16::ZERO);
        }
        pack_pairs(&a[r * MR * k + k0..], k, live, MR, kc, panel);
    }
}

/// Where a micro-tile's rows of `a` are: row `i`'s pair `p` starts at `ptr + i·row_stride + p·pair_stride`
/// (bf16 elements): `a` itself (row_stride K, pair_stride 2) or a packed micro-panel (2, MR·2).
#[derive(Clone, Copy)]
pub(crate) struct ATile {
    pub(crate) ptr: *const bf16,
    pub(crate) row_stride: usize,
    pub(crate) pair_stride: usize,
}

/// A 12 x 32 tile of `c` (row stride `ldc`; only `rows` x `cols` of it are real) gets, or adds when
/// `accumulate`, the products of `kc_pairs` pairs of `k` from `a`'s rows and a `b` panel whose pair `p` is the
/// NR x 2 values at `bp + p·b_pair_stride` (NR·2 for a packed panel; the convolutions read pair-interleaved
/// frames in place, a frame's pairs a plane apart).
///
/// # Safety
/// `a` has `rows` readable rows of kc_pairs pairs (rows past `rows` are not read: they repeat the last);
/// `bp` has NR x 2 readable bf16 values at each of its kc_pairs pair offsets; `c` has `rows` rows of `ldc` f32 with `cols` ≤ NR of each
/// writable; the CPU has AVX512-BF16 ([`available`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn micro_kernel(
    kc_pairs: usize,
    a: ATile,
    bp: *const bf16,
    b_pair_stride: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    let mut rows_at = [a.ptr; MR];
    for (i, r) in rows_at.iter_mut().enumerate() {
        *r = a.ptr.add(i.min(rows.max(1) - 1) * a.row_stride);
    }
    for p in 0..kc_pairs {
        let mut b = [std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512()); NV];
        for (v, b) in b.iter_mut().enumerate() {
            *b = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                bp.add(p * b_pair_stride + v * 32) as *const _,
            ));
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            let pair = rows_at[i].add(p * a.pair_stride) as *const i32;
            let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair.read_unaligned()));
            for (acc, &b) in acc.iter_mut().zip(&b) {
                *acc = _mm512_dpbf16_ps(*acc, ai, b);
            }
        }
    }
    let mut masks = [0 as __mmask16; NV];
    for (v, m) in masks.iter_mut().enumerate() {
        let live = cols.saturating_sub(v * 16).min(16);
        *m = ((1u32 << live) - 1) as u16;
    }
    for (i, acc) in acc.iter().enumerate().take(rows) {
        let row = c.add(i * ldc);
        for (v, (&a, &m)) in acc.iter().zip(&masks).enumerate() {
            let mut x = a;
            if accumulate {
                x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, row.add(v * 16)));
            }
            _mm512_mask_storeu_ps(row.add(v * 16), m, x);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn micro_kernel(
    _: usize,
    _: ATile,
    _: *const bf16,
    _: usize,
    _: *mut f32,
    _: usize,
    _: usize,
    _: usize,
    _: bool,
) {
    unreachable!("gemm_nt only calls the micro-kernel where `available()`")
}

/// The product without AVX512-BF16: both operands widened to f32 and multiplied by `gemm`, as candle does.
fn gemm_nt_widened(a: &[bf16], pb: &[bf16], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    let a32: Vec<f32> = a.iter().map(|v| v.to_f32()).collect();
    // Unpack b back to (N, K) f32.
    let kp = k.div_ceil(2);
    let mut b32 = vec![0f32; n * k];
    for (row, out) in b32.chunks_mut(k.max(1)).enumerate().take(n) {
        let (j, col) = (row / NR, row % NR);
        for (kk, o) in out.iter_mut().enumerate() {
            *o = pb[(j * kp + kk / 2) * NR * 2 + col * 2 + kk % 2].to_f32();
        }
    }
    if k == 0 {
        return c;
    }
    // SAFETY: the strides describe the row-major a (M, K), b^T (K, N) read from b (N, K), and c (M, N).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a32.as_ptr(),
            1,
            k as isize,
            b32.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        sorrel_testkit::lcg_tensor(shape, seed, 1.0)
            .to_dtype(DType::BF16)
            .unwrap()
    }

    /// The product of the same bf16 values in f64, to compare both paths with.
    fn exact(a: &Tensor, b: &Tensor) -> Tensor {
        let a = a.to_dtype(DType::F64).unwrap();
        let b = b.to_dtype(DType::F64).unwrap();
        let bt = b.t().unwrap();
        let bt = if a.rank() > bt.rank() {
            bt.broadcast_left(a.dims()[0]).unwrap()
        } else {
            bt
        };
        a.matmul(&bt).unwrap().to_dtype(DType::F32).unwrap()
    }

    #[test]
    fn products_match_f64_for_sizes_the_tiles_do_not_divide() {
        // Every remainder: rows not a multiple of 12 or 96, columns not of 32, odd and short depths, depths
        // over one KC pass, and batched operands with one shared or one b per batch.
        for (m, n, k) in [
            (1, 1, 1),
            (13, 33, 7),
            (97, 65, 257),
            (200, 31, 600),
            (12, 32, 512),
            (5, 300, 128),
        ] {
            let (a, b) = (rand(&[m, k], 1), rand(&[n, k], 2));
            let got = matmul_nt(&a, &b, DType::F32).unwrap();
            let want = exact(&a, &b);
            let err = sorrel_testkit::max_abs_diff(&got, &want);
            // f32 accumulation of k products of values below 1: error well under 1e-5 * k.
            assert!(err <= 1e-6 * k as f32 + 1e-6, "({m},{n},{k}): {err}");
            let got16 = matmul_nt(&a, &b, DType::BF16).unwrap();
            assert_eq!(got16.dtype(), DType::BF16);
            let err16 = sorrel_testkit::max_abs_diff(&got16.to_dtype(DType::F32).unwrap(), &want);
            // bf16 rounding of the result: half an ulp, 2^-9 of its magnitude (below k here).
            assert!(err16 <= k as f32 / 512.0, "bf16 ({m},{n},{k}): {err16}");
        }
        let (a, b) = (rand(&[3, 40, 70], 3), rand(&[3, 50, 70], 4));
        let err = sorrel_testkit::max_abs_diff(&matmul_nt(&a, &b, DType::F32).unwrap(), &{
            let parts: Vec<Tensor> = (0..3)
                .map(|i| exact(&a.get(i).unwrap(), &b.get(i).unwrap()))
                .collect();
            Tensor::stack(&parts, 0).unwrap()
        });
        assert!(err <= 1e-4, "batched: {err}");
        let shared = rand(&[50, 70], 5);
        let err = sorrel_testkit::max_abs_diff(
            &matmul_nt(&a, &shared, DType::F32).unwrap(),
            &exact(&a, &shared),
        );
        assert!(err <= 1e-4, "shared b: {err}");
    }

    #[test]
    fn a_packed_weight_gives_the_same_products_and_bias() {
        let (a, w) = (rand(&[2, 29, 70], 11), rand(&[45, 70], 12));
        let bias = rand(&[45], 13);
        let packed = std::sync::Arc::new(PackedB::pack(&w).unwrap());
        assert_eq!(packed.dims(), (45, 70));
        for out in [DType::F32, DType::BF16] {
            let got = packed.matmul(&a, Some(&bias), out).unwrap();
            let want = matmul_nt_bias(&a, &w, Some(&bias), out).unwrap();
            assert_eq!(got.dims(), &[2, 29, 45]);
            assert_eq!(sorrel_testkit::max_abs_diff(&got, &want), 0.0);
        }
        let exact_bias = exact(&a, &w)
            .broadcast_add(&bias.to_dtype(DType::F32).unwrap())
            .unwrap();
        let got = packed.matmul(&a, Some(&bias), DType::F32).unwrap();
        assert!(sorrel_testkit::max_abs_diff(&got, &exact_bias) <= 1e-4);
        assert!(packed.matmul(&rand(&[3, 71], 1), None, DType::F32).is_err());
        assert!(packed
            .matmul(&a, Some(&rand(&[44], 1)), DType::F32)
            .is_err());
    }

    #[test]
    fn a_batched_pack_multiplies_each_matrix_by_its_own() {
        let (a, b) = (rand(&[2, 3, 17, 40], 21), rand(&[2, 3, 33, 40], 22));
        let packed = std::sync::Arc::new(PackedB::pack_batched(&b).unwrap());
        let got = packed.matmul(&a, None, DType::F32).unwrap();
        assert_eq!(got.dims(), &[2, 3, 17, 33]);
        let want = a
            .to_dtype(DType::F64)
            .unwrap()
            .matmul(&b.to_dtype(DType::F64).unwrap().transpose(2, 3).unwrap())
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert!(sorrel_testkit::max_abs_diff(&got, &want) <= 1e-4);
        // The input's leading dims must hold as many matrices as were packed.
        assert!(packed
            .matmul(&rand(&[5, 17, 40], 1), None, DType::F32)
            .is_err());
    }

    #[test]
    fn the_widened_path_gives_the_same_products() {
        let (m, n, k) = (29, 45, 99);
        let (a, b) = (rand(&[m, k], 6), rand(&[n, k], 7));
        let av: Vec<bf16> = a.flatten_all().unwrap().to_vec1().unwrap();
        let bv: Vec<bf16> = b.flatten_all().unwrap().to_vec1().unwrap();
        let c = gemm_nt_widened(&av, &pack_b(&bv, n, k), m, n, k);
        let got = Tensor::from_vec(c, (m, n), &Device::Cpu).unwrap();
        assert!(sorrel_testkit::max_abs_diff(&got, &exact(&a, &b)) <= 1e-4);
    }

    #[test]
    fn bad_operands_are_errors() {
        let a = rand(&[4, 8], 1);
        assert!(matmul_nt(&a, &rand(&[4, 9], 2), DType::F32).is_err());
        assert!(matmul_nt(&a.to_dtype(DType::F32).unwrap(), &a, DType::F32).is_err());
        assert!(matmul_nt(&a, &a, DType::U8).is_err());
    }
}
