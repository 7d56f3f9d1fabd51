//! Fused kernels that also train. candle's fused softmax, RMS norm and interleaved RoPE have no backward
//! pass, so a model built on them cannot learn. These wrappers run the fused kernel at inference and, when
//! an input takes part in a gradient computation (`track_op`), the same maths composed of primitive ops
//! that candle can differentiate. Models call these, so training uses the very code that generates.

use candle_core::{Result, Tensor, D};

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// RMS norm over the last dimension with a learned scale `alpha` (`x` contiguous or not).
pub fn rms_norm(x: &Tensor, alpha: &Tensor, eps: f32) -> Result<Tensor> {
    if x.track_op() || alpha.track_op() {
        candle_nn::ops::rms_norm_slow(x, alpha, eps)
    } else {
        candle_nn::ops::rms_norm(&x.contiguous()?, alpha, eps)
    }
}

/// Interleaved rotary embedding. x: (B, H, S, D); cos, sin: (S, D/2).
pub fn rope_i(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if x.track_op() || cos.track_op() || sin.track_op() {
        candle_nn::rotary_emb::rope_i_slow(x, cos, sin)
    } else {
        candle_nn::rotary_emb::rope_i(x, cos, sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

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
}
