//! Adaptive LayerNorm at inference, fused: `LayerNorm(x) * mul + add` and the gated residual `x + a * gate`,
//! each one parallel pass over the rows that reads bf16 or f32 and writes the compute dtype.
//!
//! Composed of candle ops, a block's norms, modulations and residuals were about twenty full-size passes,
//! most of them on one thread, with an f32 copy of every bf16 input: with its products fast, that serial work
//! left one of the two cores idle for a quarter of a bf16 forward of Wan2.1-1.3B (perf, per thread). The
//! residual's arithmetic is the composition's, bit for bit; the norm's moments are summed in f64, within f32
//! rounding of the composition (tests below).
//! Tensors that take part in a gradient computation use the composition, which candle differentiates.

use candle_core::{CpuStorage, DType, Result, Storage, Tensor};
use half::bf16;
use rayon::prelude::*;

use crate::ops::{contiguous_bf16, contiguous_f32, cpu_storage};

/// The kernels' name, for errors.
const NAME: &str = "adaln";

/// LayerNorm over the last dim without affine parameters (f32, eps inside the square root), times `mul`,
/// plus `add`, in `out`. x: (B, S, D) bf16 or f32; mul, add: f32, (D,) or (B' , S', D) with B' in {1, B} and
/// S' in {1, S}.
pub fn norm_affine(x: &Tensor, mul: &Tensor, add: &Tensor, eps: f64, out: DType) -> Result<Tensor> {
    if !fusable(&[x, mul, add]) {
        let n = crate::ops::layer_norm(x, eps)?;
        return crate::ops::broadcast_add(&crate::ops::broadcast_mul(&n, mul)?, add)?.to_dtype(out);
    }
    let (b, s, d) = x.dims3()?;
    let x = x.contiguous()?;
    let (xg, xl) = x.storage_and_layout();
    let xs = Rows::view(&xg, xl)?;
    let (mul, add) = (Table::of(mul, (b, s, d))?, Table::of(add, (b, s, d))?);
    write_rows(&x, out, d, |r, o, scratch| {
        let row = xs.row(r, &mut scratch[..d]);
        // Moments in f64: candle's composition sums in f32 with its own vector order and PyTorch with
        // another; f64 is within a rounding of the exact value, which both approximate.
        let w = d as f64;
        let mean64 = row.iter().map(|&v| v as f64).sum::<f64>() / w;
        let var = row
            .iter()
            .map(|&v| (v as f64 - mean64).powi(2))
            .sum::<f64>()
            / w;
        let (mean, den) = (mean64 as f32, (var + eps).sqrt() as f32);
        for (((o, &v), &m), &a) in o.iter_mut().zip(row).zip(mul.row(r)).zip(add.row(r)) {
            *o = (v - mean) / den * m + a;
        }
    })
}

/// `x + a * gate` computed in f32, in `out`. x, a: (B, S, D) bf16 or f32; gate: f32, (B', S', D) as in
/// [`norm_affine`].
pub fn gated_residual(x: &Tensor, a: &Tensor, gate: &Tensor, out: DType) -> Result<Tensor> {
    if !fusable(&[x, a, gate]) || x.dims() != a.dims() {
        let f = |t: &Tensor| t.to_dtype(DType::F32);
        return (f(x)? + crate::ops::broadcast_mul(&f(a)?, gate)?)?.to_dtype(out);
    }
    let (b, s, d) = x.dims3()?;
    let (x, a) = (x.contiguous()?, a.contiguous()?);
    let ((xg, xl), (ag, al)) = (x.storage_and_layout(), a.storage_and_layout());
    let (xs, as_) = (Rows::view(&xg, xl)?, Rows::view(&ag, al)?);
    let gate = Table::of(gate, (b, s, d))?;
    write_rows(&x, out, d, |r, o, scratch| {
        let (sx, sa) = scratch.split_at_mut(d);
        let (xr, ar) = (xs.row(r, sx), as_.row(r, sa));
        for (((o, &x), &a), &g) in o.iter_mut().zip(xr).zip(ar).zip(gate.row(r)) {
            *o = x + a * g;
        }
    })
}

/// Whether the fused kernels apply: CPU tensors, none tracked for gradients.
fn fusable(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| crate::device::cpu_kernels(t.device()) && !t.track_op())
}

/// The values of a contiguous bf16 or f32 CPU tensor, borrowed from its storage.
enum Rows<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

impl<'a> Rows<'a> {
    /// The values behind `storage` (from `Tensor::storage_and_layout` of a contiguous tensor).
    fn view(storage: &'a Storage, layout: &candle_core::Layout) -> Result<Self> {
        let s = cpu_storage(storage, NAME)?;
        Ok(match s {
            CpuStorage::F32(_) => Rows::F32(contiguous_f32(s, layout, NAME)?),
            CpuStorage::BF16(_) => Rows::Bf16(contiguous_bf16(s, layout, NAME)?),
            _ => candle_core::bail!("{NAME}: only bf16 and f32 CPU tensors are fused"),
        })
    }

    /// Row `r` (of `buf.len()` values) as f32: f32 rows as they are, bf16 ones widened into `buf`.
    fn row<'b>(&'b self, r: usize, buf: &'b mut [f32]) -> &'b [f32] {
        let d = buf.len();
        match self {
            Rows::F32(v) => &v[r * d..(r + 1) * d],
            Rows::Bf16(v) => {
                for (o, x) in buf.iter_mut().zip(&v[r * d..(r + 1) * d]) {
                    *o = x.to_f32();
                }
                buf
            }
        }
    }
}

/// A per-row table's f32 values, (D,) or (1 or B, 1 or S, D), and where row `r` (of B x S) finds its D.
struct Table {
    values: Vec<f32>,
    /// Values between batches and between tokens (0 where the table has one).
    per_b: usize,
    per_s: usize,
    s: usize,
    d: usize,
}

impl Table {
    fn of(t: &Tensor, (b, s, d): (usize, usize, usize)) -> Result<Self> {
        let (per_b, per_s) = match t.dims() {
            [dd] if *dd == d => (0, 0),
            [tb, ts, dd] if *dd == d && (*tb == 1 || *tb == b) && (*ts == 1 || *ts == s) => {
                ((*tb > 1) as usize * ts * d, (*ts > 1) as usize * d)
            }
            other => candle_core::bail!(
                "{NAME}: a modulation table of shape {other:?} for activations ({b}, {s}, {d})"
            ),
        };
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        Ok(Self {
            values,
            per_b,
            per_s,
            s,
            d,
        })
    }

    fn row(&self, r: usize) -> &[f32] {
        let at = (r / self.s) * self.per_b + (r % self.s) * self.per_s;
        &self.values[at..at + self.d]
    }
}

/// A tensor shaped as `like` in `out` dtype whose row `r` (of `d` values) `f` computes in f32 (with a
/// scratch of 2 x `d` f32 per thread), rows in parallel.
fn write_rows(
    like: &Tensor,
    out: DType,
    d: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
) -> Result<Tensor> {
    let n = like.elem_count();
    let dev = like.device();
    match out {
        DType::F32 => {
            let mut o = vec![0f32; n];
            o.par_chunks_mut(d)
                .enumerate()
                .for_each_init(|| vec![0f32; 2 * d], |scratch, (r, o)| f(r, o, scratch));
            Tensor::from_vec(o, like.dims(), dev)
        }
        DType::BF16 => {
            let mut o = vec![bf16::ZERO; n];
            o.par_chunks_mut(d).enumerate().for_each_init(
                || (vec![0f32; d], vec![0f32; 2 * d]),
                |(row, scratch), (r, o)| {
                    f(r, row, scratch);
                    crate::simd::f32_to_bf16(row, o);
                },
            );
            Tensor::from_vec(o, like.dims(), dev)
        }
        other => candle_core::bail!("{NAME}: results in bf16 or f32, not {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        sorrel_testkit::lcg_tensor(shape, seed, 2.0)
    }

    fn same(a: &Tensor, b: &Tensor) -> bool {
        a.dtype() == b.dtype() && sorrel_testkit::max_abs_diff(a, b) == 0.0
    }

    #[test]
    fn fused_results_match_the_compositions() {
        let (b, s, d) = (2, 7, 24);
        for x in [
            rand(&[b, s, d], 1),
            rand(&[b, s, d], 1).to_dtype(DType::BF16).unwrap(),
        ] {
            // Modulation tables of every accepted shape.
            for shape in [
                vec![d],
                vec![1, 1, d],
                vec![b, 1, d],
                vec![1, s, d],
                vec![b, s, d],
            ] {
                let (m, a) = (rand(&shape, 2), rand(&shape, 3));
                for out in [DType::F32, DType::BF16] {
                    let fused = norm_affine(&x, &m, &a, 1e-6, out).unwrap();
                    assert_eq!(fused.dtype(), out);
                    let n = crate::ops::layer_norm(&x, 1e-6).unwrap();
                    let plain =
                        crate::ops::broadcast_add(&crate::ops::broadcast_mul(&n, &m).unwrap(), &a)
                            .unwrap();
                    // f32: within a few f32 roundings of values below 16; bf16: the same f32 values
                    // rounded, so at most one bf16 step (2^-8 relative) apart where a rounding flips.
                    let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
                    let diff = (f(&fused) - f(&plain.to_dtype(out).unwrap()))
                        .unwrap()
                        .abs()
                        .unwrap();
                    let allowed = match out {
                        DType::F32 => (plain.abs().unwrap() * 1e-6).unwrap() + 1e-6,
                        _ => (plain.abs().unwrap() / 128.0).unwrap() + 1e-6,
                    }
                    .unwrap();
                    let over = diff.ge(&allowed).unwrap().sum_all().unwrap();
                    let over = over
                        .to_dtype(DType::U32)
                        .unwrap()
                        .to_scalar::<u32>()
                        .unwrap();
                    assert_eq!(over, 0, "norm {shape:?} {out:?}");
                    let y = rand(&[b, s, d], 4).to_dtype(x.dtype()).unwrap();
                    let fused = gated_residual(&x, &y, &m, out).unwrap();
                    let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
                    let plain = (f(&x) + crate::ops::broadcast_mul(&f(&y), &m).unwrap())
                        .unwrap()
                        .to_dtype(out)
                        .unwrap();
                    assert!(same(&fused, &plain), "residual {shape:?} {out:?}");
                }
            }
        }
        assert!(norm_affine(
            &rand(&[b, s, d], 1),
            &rand(&[3, 1, d], 2),
            &rand(&[d], 3),
            1e-6,
            DType::F32
        )
        .is_err());
    }
}
