//! Fused kernels that also train. candle's fused softmax, RMS norm and interleaved RoPE have no backward
//! pass, so a model built on them cannot learn. These wrappers run the fused kernel at inference and, when
//! an input takes part in a gradient computation (`track_op`), the same maths composed of primitive ops
//! that candle can differentiate. Models call these, so training uses the very code that generates.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Module, Result, Shape, Tensor, D,
};
use rayon::prelude::*;

/// Softmax over the last dimension. Half-precision inputs are computed in f32 and returned in their dtype:
/// candle's kernel sums the exponentials in the input's dtype, and over Wan's 512 text tokens a bf16 sum
/// moved an image-to-video forward 7x further from f32 than PyTorch's bf16 (0.139 against 0.020 max abs on
/// the wan-tiny-i2v fixture), since PyTorch's attention accumulates in f32.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let dt = x.dtype();
    if matches!(dt, candle_core::DType::BF16 | candle_core::DType::F16) {
        return softmax_last_dim(&x.to_dtype(candle_core::DType::F32)?)?.to_dtype(dt);
    }
    if !x.track_op() {
        candle_nn::ops::softmax_last_dim(x)
    } else if is_cpu_f32(x) {
        x.contiguous()?.apply_op1(Softmax)
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

/// GELU, tanh approximation (candle's `gelu`, diffusers' "gelu-approximate"). On the CPU, f32 and bf16 take
/// the fused kernel: candle's calls libm's `tanhf` one element at a time, which was a third of a bf16 forward
/// of the 1.3B transformer once its products were fast (perf, 1,280 tokens). bf16 is computed in f32 and
/// rounded once, as PyTorch does.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if is_cpu_f32(x) {
        x.contiguous()?.apply_op1(GeluTanh)
    } else if crate::device::cpu_kernels(x.device())
        && x.dtype() == candle_core::DType::BF16
        && !x.track_op()
    {
        x.contiguous()?.apply_op1_no_bwd(&GeluTanh)
    } else {
        x.gelu()
    }
}

/// Whether `x` is an f32 tensor on the CPU, where the hand-written kernels apply.
pub(crate) fn is_cpu_f32(x: &Tensor) -> bool {
    crate::device::cpu_kernels(x.device()) && x.dtype() == candle_core::DType::F32
}

/// A linear layer that multiplies all leading dimensions as one matrix: candle-nn's `Linear` broadcasts its
/// weight over the batch instead, and the backward pass of that broadcast sums a copy of the weight's
/// gradient per batch element (in the toy-world training step: backward 1.74 s against 1.90 s). The weight
/// may also be a GGUF-quantized matrix (see [`crate::gguf`]), multiplied without being expanded.
#[derive(Debug, Clone)]
pub struct Dense(Weight);

#[derive(Debug, Clone)]
enum Weight {
    Full(candle_nn::Linear),
    /// A bf16 weight packed once for the AVX512-BF16 kernel ([`crate::bf16_matmul::PackedB`]), in place of
    /// the weight itself.
    PackedBf16 {
        weight: std::sync::Arc<crate::bf16_matmul::PackedB>,
        bias: Option<Tensor>,
    },
    Quantized {
        weight: std::sync::Arc<candle_core::quantized::QTensor>,
        bias: Option<Tensor>,
        /// LoRA adapters applied beside the quantized matrix (it cannot absorb them).
        lora: crate::lora::LowRank,
    },
}

/// A [`Dense`] layer with weight `(out, in)` and bias, from `vb` (checkpoint names `weight`, `bias`); the
/// weight stays quantized when a GGUF model is being built and stores it so.
pub fn dense(input: usize, output: usize, vb: candle_nn::VarBuilder) -> Result<Dense> {
    if let Some((weight, lora)) =
        crate::gguf::quantized_weight(&vb.prefix(), output, input, vb.device())?
    {
        let bias = Some(vb.get(output, "bias")?);
        return Ok(Dense(Weight::Quantized { weight, bias, lora }));
    }
    if let Some(dtype) = crate::gguf::quantize_on_load(input) {
        // LoRAs are already merged into the weight `vb` hands out, so they are quantized with it.
        let w = vb
            .get((output, input), "weight")?
            .to_dtype(candle_core::DType::F32)?;
        let weight = std::sync::Arc::new(candle_core::quantized::QTensor::quantize(&w, dtype)?);
        let bias = Some(vb.get(output, "bias")?);
        let lora = Default::default();
        return Ok(Dense(Weight::Quantized { weight, bias, lora }));
    }
    let linear = candle_nn::linear(input, output, vb)?;
    let w = linear.weight();
    // Inference weights (not training variables) in bf16 on a CPU with AVX512-BF16 are packed once here.
    if w.dtype() == candle_core::DType::BF16
        && crate::device::cpu_kernels(w.device())
        && !w.is_variable()
        && crate::bf16_matmul::available()
    {
        let weight = std::sync::Arc::new(crate::bf16_matmul::PackedB::pack(w)?);
        let bias = linear.bias().cloned();
        return Ok(Dense(Weight::PackedBf16 { weight, bias }));
    }
    Ok(Dense(Weight::Full(linear)))
}

impl From<candle_nn::Linear> for Dense {
    fn from(l: candle_nn::Linear) -> Self {
        Dense(Weight::Full(l))
    }
}

impl Dense {
    /// The dtype activations are multiplied in: the weight's; quantized weights expand to whatever the
    /// activations are.
    pub fn dtype(&self) -> Option<candle_core::DType> {
        match &self.0 {
            Weight::Full(l) => Some(l.weight().dtype()),
            Weight::PackedBf16 { .. } => Some(candle_core::DType::BF16),
            Weight::Quantized { .. } => None,
        }
    }

    /// x: (rows, in) -> (rows, out). candle-nn's `Linear` computes the same product and sum; the bias goes
    /// through [`broadcast_add`] so that training sums its gradient quickly.
    fn forward_2d(&self, x: &Tensor) -> Result<Tensor> {
        match &self.0 {
            Weight::Full(l) => linear_2d(x, l.weight(), l.bias()),
            Weight::PackedBf16 { weight, bias } => weight.matmul(
                &x.to_dtype(candle_core::DType::BF16)?,
                bias.as_ref(),
                candle_core::DType::BF16,
            ),
            // Expanded for this product only, then dropped: memory holds the quantized matrices plus one
            // expanded at a time. ggml's own product (candle's QMatMul) quantizes the activations to 8 bits
            // as well, which on the Q8_0 fixture costs 9 dB (28.3 against 37.4 dB from the f32 frames);
            // expanding is what ComfyUI-GGUF does, and video's thousands of rows amortise it.
            Weight::Quantized { weight, bias, lora } => {
                let w = weight.dequantize(x.device())?.to_dtype(x.dtype())?;
                match lora.forward(x)? {
                    None => linear_2d(x, &w, bias.as_ref()),
                    Some(d) => add_bias((linear_2d(x, &w, None)? + d)?, bias.as_ref()),
                }
            }
        }
    }
}

/// x (rows, in) times the transpose of w (out, in), plus `bias` (out): the AVX512-BF16 kernel for bf16 on a
/// CPU that has it (bias added before the one rounding, as PyTorch's bf16 linear); bf16 on other CPUs
/// widened to f32 and rounded once, for the same reason; else candle's product and [`broadcast_add`].
pub fn linear_2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    use candle_core::DType;
    if bf16_product(x, w) {
        return crate::bf16_matmul::matmul_nt_bias(x, w, bias, DType::BF16);
    }
    if x.dtype() == DType::BF16
        && w.dtype() == DType::BF16
        && crate::device::cpu_kernels(x.device())
    {
        // candle rounds the product to bf16 and the bias sum again; the double rounding put a bf16 Wan
        // forward 7 % further (mean) from fp32 than diffusers' bf16 on a CPU without AVX512-BF16.
        let y = x
            .to_dtype(DType::F32)?
            .matmul(&w.to_dtype(DType::F32)?.t()?)?;
        return add_bias(y, bias)?.to_dtype(DType::BF16);
    }
    add_bias(x.matmul(&w.t()?)?, bias)
}

/// `y` plus `bias` on every row (in `y`'s dtype), through [`broadcast_add`].
fn add_bias(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        Some(b) => broadcast_add(&y, &b.to_dtype(y.dtype())?),
        None => Ok(y),
    }
}

/// Whether `x` times `w`'s transpose takes the AVX512-BF16 kernel: both bf16 on a CPU that has it, and no
/// gradient to track (the kernel has no backward pass).
fn bf16_product(x: &Tensor, w: &Tensor) -> bool {
    x.dtype() == candle_core::DType::BF16
        && w.dtype() == candle_core::DType::BF16
        && crate::device::cpu_kernels(x.device())
        && !x.track_op()
        && !w.track_op()
        && crate::bf16_matmul::available()
}

impl Module for Dense {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let Some((&inner, lead)) = dims.split_last() else {
            return self.forward_2d(x);
        };
        if lead.is_empty() {
            return self.forward_2d(&x.unsqueeze(0)?)?.squeeze(0);
        }
        let rows: usize = lead.iter().product();
        let y = self.forward_2d(&x.reshape((rows, inner))?)?;
        let mut out = lead.to_vec();
        out.push(y.dim(1)?);
        y.reshape(out)
    }
}

/// `a + b` with broadcasting, as `Tensor::broadcast_add`.
pub fn broadcast_add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match expanded_pair(a, b)? {
        Some((a, b)) => a + b,
        None => a.broadcast_add(b),
    }
}

/// `a * b` with broadcasting, as `Tensor::broadcast_mul`.
pub fn broadcast_mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match expanded_pair(a, b)? {
        Some((a, b)) => a * b,
        None => a.broadcast_mul(b),
    }
}

/// When a gradient will flow (CPU f32), both operands copied out to the common shape by [`Expand`].
/// candle differentiates a broadcast by summing the gradient over the broadcast dimensions, and its sum over
/// any but the last dimensions does two integer divisions per element: in the toy-world training step
/// those sums (bias gradients, per-sample modulation, norm scales) were 16 % of the CPU time. Not tracked,
/// the caller uses candle's broadcast op, so inference is unchanged.
fn expanded_pair(a: &Tensor, b: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
    if !(a.track_op() || b.track_op()) || !is_cpu_f32(a) || !is_cpu_f32(b) {
        return Ok(None);
    }
    let shape = a
        .shape()
        .broadcast_shape_binary_op(b.shape(), "broadcast")?;
    Ok(Some((expand(a, &shape)?, expand(b, &shape)?)))
}

fn expand(t: &Tensor, shape: &Shape) -> Result<Tensor> {
    if t.shape() == shape {
        return Ok(t.clone());
    }
    t.contiguous()?.apply_op1(Expand { to: shape.clone() })
}

/// How a contiguous tensor of dims `from` maps onto the broadcast dims `to`: the outer dimensions as
/// (length, stride in the source, 0 where broadcast), adjacent ones merged, and the innermost run (length,
/// whether it is broadcast).
fn broadcast_plan(from: &[usize], to: &[usize]) -> (Vec<(usize, usize)>, (usize, bool)) {
    let pad = to.len() - from.len();
    let mut dims: Vec<(usize, usize)> = Vec::with_capacity(to.len());
    let mut stride = 1;
    let mut strides = vec![0; to.len()];
    for i in (0..to.len()).rev() {
        let f = if i >= pad { from[i - pad] } else { 1 };
        strides[i] = if f == 1 && to[i] != 1 { 0 } else { stride };
        stride *= f;
    }
    for (i, &len) in to.iter().enumerate() {
        if len == 1 {
            continue;
        }
        match dims.last_mut() {
            Some((l, s)) if (*s == 0 && strides[i] == 0) || (*s != 0 && *s == strides[i] * len) => {
                *l *= len;
                *s = strides[i];
            }
            _ => dims.push((len, strides[i])),
        }
    }
    let (n, s) = dims.pop().unwrap_or((1, 1));
    (dims, (n, s == 0))
}

/// Calls `f` with the source offset of each innermost run, in the order of the broadcast tensor.
fn for_each_run(outer: &[(usize, usize)], mut f: impl FnMut(usize)) {
    let runs: usize = outer.iter().map(|d| d.0).product();
    let mut idx = vec![0usize; outer.len()];
    let mut off = 0;
    for _ in 0..runs {
        f(off);
        for k in (0..outer.len()).rev() {
            idx[k] += 1;
            off += outer[k].1;
            if idx[k] < outer[k].0 {
                break;
            }
            off -= outer[k].1 * outer[k].0;
            idx[k] = 0;
        }
    }
}

/// A broadcast copied out, whose backward pass sums the gradient back run by run.
struct Expand {
    to: Shape,
}

impl CustomOp1 for Expand {
    fn name(&self) -> &'static str {
        "sorrel-expand"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let (outer, (n, bcast)) = broadcast_plan(l.dims(), self.to.dims());
        let mut out = Vec::with_capacity(self.to.elem_count());
        if self.to.elem_count() == 0 {
            return Ok((CpuStorage::F32(out), self.to.clone()));
        }
        for_each_run(&outer, |off| {
            if bcast {
                out.extend(std::iter::repeat_n(x[off], n));
            } else {
                out.extend_from_slice(&x[off..off + n]);
            }
        });
        Ok((CpuStorage::F32(out), self.to.clone()))
    }
    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&SumTo {
            to: x.shape().clone(),
        })?))
    }
}

/// The gradient of [`Expand`]: a broadcast-shaped tensor summed down to the shape `to`.
struct SumTo {
    to: Shape,
}

impl CustomOp1 for SumTo {
    fn name(&self) -> &'static str {
        "sorrel-sum-to"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(s, l, self.name())?;
        let (outer, (n, bcast)) = broadcast_plan(self.to.dims(), l.dims());
        let mut out = vec![0f32; self.to.elem_count()];
        if g.is_empty() {
            return Ok((CpuStorage::F32(out), self.to.clone()));
        }
        let mut rows = g.chunks_exact(n);
        for_each_run(&outer, |off| {
            let Some(row) = rows.next() else { return };
            if bcast {
                out[off] += row.iter().sum::<f32>();
            } else {
                for (o, &v) in out[off..off + n].iter_mut().zip(row) {
                    *o += v;
                }
            }
        });
        Ok((CpuStorage::F32(out), self.to.clone()))
    }
}

/// Runs `f` over `rows` rows of `width` values in parallel: (row of x, row of a second input, out row).
fn rows2(
    a: &[f32],
    b: &[f32],
    width: usize,
    f: impl Fn(&[f32], &[f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(width)
        .zip(a.par_chunks(width).zip(b.par_chunks(width)))
        .for_each(|(o, (x, y))| f(x, y, o));
    out
}

/// The f32 values of a contiguous CPU tensor, or an error naming `op`.
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: only f32 is supported on this path");
    };
    match l.contiguous_offsets() {
        Some((from, to)) => Ok(&v[from..to]),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

/// The bf16 values of a contiguous CPU tensor, or an error naming `op`.
pub(crate) fn contiguous_bf16<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> Result<&'a [half::bf16]> {
    let CpuStorage::BF16(v) = s else {
        candle_core::bail!("{op}: only bf16 is supported on this path");
    };
    match l.contiguous_offsets() {
        Some((from, to)) => Ok(&v[from..to]),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

/// The CPU storage behind a tensor's storage (from `Tensor::storage_and_layout`), or an error naming `op`.
pub(crate) fn cpu_storage<'a>(s: &'a candle_core::Storage, op: &str) -> Result<&'a CpuStorage> {
    match s {
        candle_core::Storage::Cpu(c) => Ok(c),
        _ => candle_core::bail!("{op}: this path is for CPU tensors"),
    }
}

/// Softmax over the last dimension whose backward pass is one fused row operation.
struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "sorrel-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let w = l.dims().last().copied().unwrap_or(1);
        let out = rows2(x, x, w, |x, _, o| {
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for (o, &v) in o.iter_mut().zip(x) {
                *o = (v - max).exp();
                sum += *o;
            }
            for o in o.iter_mut() {
                *o /= sum;
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // dx = y * (g - sum(g * y)) per row.
        Ok(Some(y.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?))
    }
}

struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "sorrel-softmax-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(s1, l1, self.name())?;
        let g = contiguous_f32(s2, l2, self.name())?;
        let w = l1.dims().last().copied().unwrap_or(1);
        let out = rows2(y, g, w, |y, g, o| {
            let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
            for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                *o = y * (g - dot);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;

/// 0.5 (1 + tanh(u)) with u = sqrt(2/pi) (v + 0.044715 v^3), written as sigmoid(2u) = 1 / (1 + exp(-2u)):
/// the same function as the tanh form, with one exponential and no tanh.
#[inline(always)]
pub(crate) fn gelu_sigmoid(v: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (v + GELU_C * v * v * v);
    1.0 / (1.0 + exp_f32(-2.0 * u))
}

/// exp(x) for f32 in straight-line arithmetic, so that loops over it vectorise. libm's `tanhf` (through
/// `expm1f`), one scalar call per element, was 23 % of the CPU time of a toy-world training step (perf,
/// 20 steps); nothing in the dependency tree offers a vectorisable exp. x = k ln2 + r with |r| <= ln2/2
/// (k rounded by the 1.5 * 2^23 trick, ln2 split in two for an exact product), exp(r) by Taylor to r^7
/// (truncation 0.35^8/8! = 5e-9 relative), times 2^k built in the exponent bits. Inputs are clamped to
/// [-87, 88], where 2^k stays a normal number; measured relative error at most 9.6e-8 (test below).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 0.693359375 has 9 significant bits, so kf * LN2_HI is exact for |k| <= 127.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let k = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let kf = t - ROUND;
    let r = (x - kf * LN2_HI) - kf * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    p * f32::from_bits(((k + 127) as u32) << 23)
}

/// Tanh-approximated GELU with a fused, parallel derivative.
struct GeluTanh;

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "sorrel-gelu-tanh"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        if let CpuStorage::BF16(_) = s {
            let x = contiguous_bf16(s, l, self.name())?;
            let mut out = vec![half::bf16::ZERO; x.len()];
            out.par_chunks_mut(4096)
                .zip(x.par_chunks(4096))
                .for_each(|(o, x)| crate::simd::gelu_tanh_bf16(x, o));
            return Ok((CpuStorage::BF16(out), l.shape().clone()));
        }
        let x = contiguous_f32(s, l, self.name())?;
        let out = rows2(x, x, 4096, |x, _, o| crate::simd::gelu_tanh_f32(x, o));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            x.apply_op2_no_bwd(&grad.contiguous()?, &GeluTanhGrad)?,
        ))
    }
}

struct GeluTanhGrad;

impl CustomOp2 for GeluTanhGrad {
    fn name(&self) -> &'static str {
        "sorrel-gelu-tanh-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let g = contiguous_f32(s2, l2, self.name())?;
        let out = rows2(x, g, 4096, |x, g, o| {
            for ((o, &v), &g) in o.iter_mut().zip(x).zip(g) {
                // With s = sigmoid(2u): d/dv [v s] = s + v * 2 s (1 - s) * du/dv.
                let s = gelu_sigmoid(v);
                let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * v * v);
                *o = g * (s + 2.0 * v * s * (1.0 - s) * du);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// RMS norm over the last dimension with a learned scale `alpha` (`x` contiguous or not).
pub fn rms_norm(x: &Tensor, alpha: &Tensor, eps: f32) -> Result<Tensor> {
    let dt = x.dtype();
    if matches!(dt, candle_core::DType::BF16 | candle_core::DType::F16)
        && crate::device::cpu_kernels(x.device())
        && !(x.track_op() || alpha.track_op())
    {
        // As `torch.nn.RMSNorm` (Wan's q/k norms): normalised and scaled in f32, rounded once. candle's
        // half-precision kernel rounds the divisor and every product.
        let f32 = candle_core::DType::F32;
        let n = x
            .to_dtype(f32)?
            .contiguous()?
            .apply_op1_no_bwd(&Normalize {
                eps,
                centred: false,
            })?;
        return broadcast_mul(&n, &alpha.to_dtype(f32)?)?.to_dtype(dt);
    }
    if !(x.track_op() || alpha.track_op()) {
        candle_nn::ops::rms_norm(&x.contiguous()?, alpha, eps)
    } else if is_cpu_f32(x) && is_cpu_f32(alpha) {
        let n = x.contiguous()?.apply_op1(Normalize {
            eps,
            centred: false,
        })?;
        broadcast_mul(&n, alpha)
    } else {
        candle_nn::ops::rms_norm_slow(x, alpha, eps)
    }
}

/// LayerNorm over the last dimension without affine parameters, computed in f32.
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(candle_core::DType::F32)?;
    if x.track_op() && crate::device::cpu_kernels(x.device()) {
        return x.contiguous()?.apply_op1(Normalize {
            eps: eps as f32,
            centred: true,
        });
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)
}

/// Interleaved rotary embedding. x: (B, H, S, D); cos, sin: (S, D/2). Half-precision inputs are rotated in
/// f32 with f32 tables and rounded once, as PyTorch does (diffusers keeps Wan's RoPE tables in fp32): candle's
/// bf16 kernel rounds every product.
pub fn rope_i(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dt = x.dtype();
    if matches!(dt, candle_core::DType::BF16 | candle_core::DType::F16) && !x.track_op() {
        let f = |t: &Tensor| t.to_dtype(candle_core::DType::F32);
        return rope_i(&f(x)?, &f(cos)?, &f(sin)?)?.to_dtype(dt);
    }
    if !(x.track_op() || cos.track_op() || sin.track_op()) {
        candle_nn::rotary_emb::rope_i(x, cos, sin)
    } else if is_cpu_f32(x) && !cos.track_op() && !sin.track_op() {
        x.contiguous()?.apply_op3(
            &cos.contiguous()?,
            &sin.contiguous()?,
            RopeInterleaved { inverse: false },
        )
    } else {
        candle_nn::rotary_emb::rope_i_slow(x, cos, sin)
    }
}

/// A row's mean (0 unless `centred`) and root of (mean square about it + eps): what the norms divide by.
fn row_scale(x: &[f32], eps: f32, centred: bool) -> (f32, f32) {
    let w = x.len() as f32;
    let mean = if centred {
        x.iter().sum::<f32>() / w
    } else {
        0.0
    };
    let ms = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / w;
    (mean, (ms + eps).sqrt())
}

/// Per row, x / sqrt(mean(x^2) + eps) (RMS norm), or with `centred` (x - mean) / sqrt(var + eps)
/// (LayerNorm without affine parameters); with a fused backward pass.
struct Normalize {
    eps: f32,
    centred: bool,
}

impl CustomOp1 for Normalize {
    fn name(&self) -> &'static str {
        if self.centred {
            "sorrel-layer-normalize"
        } else {
            "sorrel-rms-normalize"
        }
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let w = l.dims().last().copied().unwrap_or(1);
        let (eps, centred) = (self.eps, self.centred);
        let out = rows2(x, x, w, |x, _, o| {
            let (mean, r) = row_scale(x, eps, centred);
            for (o, &v) in o.iter_mut().zip(x) {
                *o = (v - mean) / r;
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // dx = (g - mean(g) - y * mean(g * y)) / r, the mean(g) term only when centred; r is recomputed.
        let g = grad.contiguous()?;
        Ok(Some(x.apply_op3_no_bwd(
            y,
            &g,
            &NormGrad {
                eps: self.eps,
                centred: self.centred,
            },
        )?))
    }
}

/// The input gradient of [`Normalize`] from (x, y, g), one row at a time.
struct NormGrad {
    eps: f32,
    centred: bool,
}

impl CustomOp3 for NormGrad {
    fn name(&self) -> &'static str {
        "sorrel-norm-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let y = contiguous_f32(s2, l2, self.name())?;
        let g = contiguous_f32(s3, l3, self.name())?;
        let w = l1.dims().last().copied().unwrap_or(1);
        let (eps, centred) = (self.eps, self.centred);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(w)
            .zip(x.par_chunks(w).zip(y.par_chunks(w).zip(g.par_chunks(w))))
            .for_each(|(o, (x, (y, g)))| {
                let wf = w as f32;
                let (_, r) = row_scale(x, eps, centred);
                let mean_g = if centred {
                    g.iter().sum::<f32>() / wf
                } else {
                    0.0
                };
                let mean_gy = g.iter().zip(y).map(|(a, b)| a * b).sum::<f32>() / wf;
                for ((o, &g), &y) in o.iter_mut().zip(g).zip(y) {
                    *o = (g - mean_g - y * mean_gy) / r;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Interleaved RoPE on (B, H, S, D) with (S, D/2) tables; `inverse` rotates the other way, which is the
/// backward pass (a rotation's transpose is its inverse).
struct RopeInterleaved {
    inverse: bool,
}

impl CustomOp3 for RopeInterleaved {
    fn name(&self) -> &'static str {
        "sorrel-rope-i"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let cos = contiguous_f32(s2, l2, self.name())?;
        let sin = contiguous_f32(s3, l3, self.name())?;
        let (_, _, seq, d) = l1.shape().dims4()?;
        if cos.len() < seq * d / 2 || sin.len() < seq * d / 2 {
            candle_core::bail!("{}: tables shorter than ({seq}, {})", self.name(), d / 2);
        }
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .enumerate()
            .for_each(|(row, (o, x))| {
                let s = row % seq;
                for i in 0..d / 2 {
                    let (c, sn) = (cos[s * d / 2 + i], sign * sin[s * d / 2 + i]);
                    let (a, b) = (x[2 * i], x[2 * i + 1]);
                    o[2 * i] = a * c - b * sn;
                    o[2 * i + 1] = a * sn + b * c;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = grad.contiguous()?.apply_op3_no_bwd(
            cos,
            sin,
            &RopeInterleaved {
                inverse: !self.inverse,
            },
        )?;
        Ok((Some(dx), None, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use sorrel_testkit::max_abs_diff as max_diff;

    /// The trainable path computes what the fused kernel computes, and its gradient matches central finite
    /// differences (f64, step 1e-4: truncation error ~1e-8, far under the 1e-5 bound).
    #[test]
    fn trainable_paths_match_the_fused_kernels_and_their_gradients_are_right() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 4, 8), &dev).unwrap();
        let alpha = Tensor::randn(0f32, 1.0, 8, &dev).unwrap();
        let cos = Tensor::randn(0f32, 1.0, (4, 4), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (4, 4), &dev).unwrap();
        let xv = Var::from_tensor(&x).unwrap();
        let fused_vs_slow = [
            (softmax_last_dim(&x), softmax_last_dim(xv.as_tensor())),
            (
                rms_norm(&x, &alpha, 1e-6),
                rms_norm(xv.as_tensor(), &alpha, 1e-6),
            ),
            (rope_i(&x, &cos, &sin), rope_i(xv.as_tensor(), &cos, &sin)),
        ];
        for (fused, slow) in fused_vs_slow {
            assert!(max_diff(&fused.unwrap(), &slow.unwrap()) < 1e-5);
        }

        let x = Tensor::randn(0f64, 1.0, (1, 1, 2, 4), &dev).unwrap();
        let alpha = Tensor::randn(0f64, 1.0, 4, &dev).unwrap();
        let (cos, sin) = (
            Tensor::randn(0f64, 1.0, (2, 2), &dev).unwrap(),
            Tensor::randn(0f64, 1.0, (2, 2), &dev).unwrap(),
        );
        let weights = Tensor::randn(0f64, 1.0, (1, 1, 2, 4), &dev).unwrap();
        type Op = Box<dyn Fn(&Tensor) -> Result<Tensor>>;
        let ops: Vec<(&str, Op)> = vec![
            ("softmax", Box::new(softmax_last_dim)),
            ("gelu_tanh", Box::new(gelu_tanh)),
            ("rms_norm", Box::new(move |t| rms_norm(t, &alpha, 1e-6))),
            ("rope_i", Box::new(move |t| rope_i(t, &cos, &sin))),
        ];
        for (name, op) in ops {
            let loss = |t: &Tensor| {
                (op(t).unwrap() * &weights)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let v = Var::from_tensor(&x).unwrap();
            let l = (op(v.as_tensor()).unwrap() * &weights)
                .unwrap()
                .sum_all()
                .unwrap();
            let grad = l.backward().unwrap().get(&v).unwrap().clone();
            let grad = grad.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let base = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            for i in 0..base.len() {
                let at = |d: f64| {
                    let mut p = base.clone();
                    p[i] += d;
                    // Through the trainable path too: the fused kernels have no f64.
                    loss(Var::from_vec(p, x.shape(), &dev).unwrap().as_tensor())
                };
                let numeric = (at(1e-4) - at(-1e-4)) / 2e-4;
                assert!(
                    (numeric - grad[i]).abs() < 1e-5,
                    "{name}: d/dx[{i}] analytic {} numeric {numeric}",
                    grad[i]
                );
            }
        }
    }

    /// The fused f32 kernels (softmax, GELU) against candle's compositions of primitive ops, whose
    /// gradients the f64 test above checks by finite differences: values and gradients agree to f32
    /// rounding (1e-5 on values of order 1).
    #[test]
    fn fused_f32_kernels_match_the_compositions_and_their_gradients() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 1.0, (3, 5, 37), &dev).unwrap() * 3.0).unwrap();
        let g = Tensor::randn(0f32, 1.0, (3, 5, 37), &dev).unwrap();
        type Op = fn(&Tensor) -> Result<Tensor>;
        let pairs: [(&str, Op, Op); 2] = [
            ("softmax", softmax_last_dim, |t| {
                candle_nn::ops::softmax(t, D::Minus1)
            }),
            ("gelu_tanh", gelu_tanh, |t| t.gelu()),
        ];
        let x4 = (Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev).unwrap() * 3.0).unwrap();
        let g4 = Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev).unwrap();
        let alpha = Tensor::randn(0f32, 1.0, 8, &dev).unwrap();
        let tables = (
            Tensor::randn(0f32, 1.0, (5, 4), &dev).unwrap(),
            Tensor::randn(0f32, 1.0, (5, 4), &dev).unwrap(),
        );
        type Op4<'a> = Box<dyn Fn(&Tensor) -> Result<Tensor> + 'a>;
        let pairs4: [(&str, Op4, Op4); 3] = [
            (
                "rms_norm",
                Box::new(|t| rms_norm(t, &alpha, 1e-6)),
                Box::new(|t| candle_nn::ops::rms_norm_slow(t, &alpha, 1e-6)),
            ),
            (
                "layer_norm",
                Box::new(|t| layer_norm(t, 1e-6)),
                Box::new(|t| {
                    let mean = t.mean_keepdim(D::Minus1)?;
                    let xc = t.broadcast_sub(&mean)?;
                    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
                    xc.broadcast_div(&(var + 1e-6)?.sqrt()?)
                }),
            ),
            (
                "rope_i",
                Box::new(|t| rope_i(t, &tables.0, &tables.1)),
                Box::new(|t| candle_nn::rotary_emb::rope_i_slow(t, &tables.0, &tables.1)),
            ),
        ];
        for (name, fused, composed) in pairs4 {
            let run = |op: &Op4| {
                let v = Var::from_tensor(&x4).unwrap();
                let y = op(v.as_tensor()).unwrap();
                let l = (&y * &g4).unwrap().sum_all().unwrap();
                let grad = l.backward().unwrap().get(&v).unwrap().clone();
                (y, grad)
            };
            let (y1, g1) = run(&fused);
            let (y2, g2) = run(&composed);
            assert!(
                max_diff(&y1, &y2) < 1e-5,
                "{name} values: {}",
                max_diff(&y1, &y2)
            );
            assert!(
                max_diff(&g1, &g2) < 1e-5,
                "{name} gradients: {}",
                max_diff(&g1, &g2)
            );
        }
        for (name, fused, composed) in pairs {
            let run = |op: Op| {
                let v = Var::from_tensor(&x).unwrap();
                let y = op(v.as_tensor()).unwrap();
                let l = (&y * &g).unwrap().sum_all().unwrap();
                let grad = l.backward().unwrap().get(&v).unwrap().clone();
                (y, grad)
            };
            let (y1, g1) = run(fused);
            let (y2, g2) = run(composed);
            assert!(max_diff(&y1, &y2) < 1e-5, "{name} values");
            assert!(
                max_diff(&g1, &g2) < 1e-5,
                "{name} gradients: {}",
                max_diff(&g1, &g2)
            );
        }
        // Not tracked: GELU's inference kernel is the same fused one, in f32 and in bf16 (computed in f32 and
        // rounded once, so within half a bf16 ulp of candle's f32 value, 2^-9 relative).
        let (fused, plain) = (gelu_tanh(&x).unwrap(), x.gelu().unwrap());
        assert!(max_diff(&fused, &plain) < 1e-5, "gelu inference");
        let x16 = x.to_dtype(candle_core::DType::BF16).unwrap();
        let fused16 = gelu_tanh(&x16).unwrap();
        assert_eq!(fused16.dtype(), candle_core::DType::BF16);
        let plain16 = x16
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .gelu()
            .unwrap();
        let diff = (fused16.to_dtype(candle_core::DType::F32).unwrap() - &plain16).unwrap();
        let rel =
            sorrel_testkit::max_abs(&(diff / (plain16.abs().unwrap() + 1e-3).unwrap()).unwrap());
        assert!(rel <= 1.0 / 256.0, "bf16 gelu: {rel}");
    }

    /// The vectorisable exp against f64's over its whole unclamped range: within 2e-7 relative (under two
    /// f32 ulps; measured 9.6e-8; the Taylor truncation is 5e-9, the rest is f32 rounding).
    #[test]
    fn exp_f32_is_within_a_few_ulps() {
        let mut worst = 0f64;
        for i in -86_990..=87_990 {
            let x = i as f32 * 1e-3;
            let want = (x as f64).exp();
            worst = worst.max(((exp_f32(x) as f64) - want).abs() / want);
        }
        assert!(worst < 2e-7, "worst relative error {worst}");
        assert!(exp_f32(-1e4) > 0.0 && exp_f32(1e4).is_finite());
    }

    /// broadcast_add / broadcast_mul through [`Expand`] give candle's values (exactly: the same element
    /// operations) and gradients, for operands broadcast on the left, in the middle, at the end, on both
    /// sides, and not at all. The gradients are sums of at most 20 terms of order 10 added in another
    /// order: f32 rounding stays under 1e-5.
    #[test]
    fn expanded_broadcasts_match_candle_and_so_do_their_gradients() {
        let dev = Device::Cpu;
        let shapes: [(&[usize], &[usize]); 6] = [
            (&[4, 5, 6], &[6]),
            (&[4, 5, 6], &[4, 1, 6]),
            (&[4, 5, 6], &[4, 5, 1]),
            (&[1, 6, 3], &[4, 6, 1]),
            (&[3, 7], &[3, 7]),
            (&[2, 3, 4, 5], &[1, 3, 1, 5]),
        ];
        type Op = fn(&Tensor, &Tensor) -> Result<Tensor>;
        let ops: [(&str, Op, Op); 2] = [
            ("add", broadcast_add, |a, b| a.broadcast_add(b)),
            ("mul", broadcast_mul, |a, b| a.broadcast_mul(b)),
        ];
        for (sa, sb) in shapes {
            let a = Tensor::randn(0f32, 1.0, sa, &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, sb, &dev).unwrap();
            for (name, ours, candle) in ops {
                let run = |op: Op| {
                    let (va, vb) = (Var::from_tensor(&a).unwrap(), Var::from_tensor(&b).unwrap());
                    let y = op(va.as_tensor(), vb.as_tensor()).unwrap();
                    // d(sum y^2)/dy = 2y: a different weight per element, so a misplaced sum shows.
                    let l = y.sqr().unwrap().sum_all().unwrap();
                    let g = l.backward().unwrap();
                    (y, g.get(&va).unwrap().clone(), g.get(&vb).unwrap().clone())
                };
                let (y1, ga1, gb1) = run(ours);
                let (y2, ga2, gb2) = run(candle);
                let ctx = format!("{name} {sa:?} {sb:?}");
                assert_eq!(y1.dims(), y2.dims(), "{ctx}");
                assert!(max_diff(&y1, &y2) == 0.0, "{ctx} values");
                assert!(max_diff(&ga1, &ga2) < 1e-5, "{ctx} lhs gradient");
                assert!(max_diff(&gb1, &gb2) < 1e-5, "{ctx} rhs gradient");
                assert_eq!(gb1.dims(), sb, "{ctx}");
            }
        }
    }

    #[test]
    fn dense_equals_linear() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (6, 4), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 6, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 4), &dev).unwrap();
        let lin = candle_nn::Linear::new(w, Some(b));
        let y = Dense::from(lin.clone()).forward(&x).unwrap();
        assert_eq!(y.dims(), &[2, 3, 6]);
        assert!(max_diff(&y, &lin.forward(&x).unwrap()) < 1e-5);
    }
}
