//! Element-wise loops compiled twice: for the baseline x86-64 the binary targets (SSE2, so it runs on any
//! machine) and with AVX-512, chosen at run time. The default build's loops get 4-wide SSE vectors; the
//! bf16 transformer's exponentials, GELU and f32/bf16 conversions were a fifth of its forward at 4 lanes
//! (perf, Wan2.1-1.3B at 1,280 tokens). `half`'s slice conversions are scalar for bf16, and no maintained
//! crate offers run-time dispatch for arbitrary loops (`multiversion` is unmaintained), hence this.

use half::bf16;

/// Whether the AVX-512 versions run here (checked once by the standard library's cache).
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `pub(crate) fn $name(args)` that runs `$body` compiled with AVX-512 where the CPU has it, else
/// compiled for the baseline. The body must be safe code: only the dispatch is `unsafe`.
macro_rules! dispatch {
    ($(#[$m:meta])* fn $name:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        pub(crate) fn $name($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn body($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
            unsafe fn wide($($a: $t),*) $(-> $r)? {
                body($($a),*)
            }
            #[cfg(target_arch = "x86_64")]
            if $crate::simd::has_avx512() {
                // SAFETY: the CPU has the features `wide` is compiled for (checked just above).
                return unsafe { wide($($a),*) };
            }
            body($($a),*)
        }
    };
}

/// f32 to bf16, rounding to nearest even; NaN stays NaN (as `half::bf16::from_f32`, in a form that
/// vectorises).
#[inline(always)]
pub(crate) fn to_bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    if x.is_nan() {
        ((b >> 16) as u16) | 0x40
    } else {
        rounded
    }
}

dispatch! {
    /// `dst[i] = bf16(src[i])`, rounding to nearest even.
    fn f32_to_bf16(src: &[f32], dst: &mut [bf16]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = bf16::from_bits(to_bf16_bits(s));
        }
    }
}

dispatch! {
    /// Tanh-approximated GELU of bf16 values, computed in f32 and rounded once.
    fn gelu_tanh_bf16(src: &[bf16], dst: &mut [bf16]) {
        for (d, s) in dst.iter_mut().zip(src) {
            let v = f32::from_bits((s.to_bits() as u32) << 16);
            *d = bf16::from_bits(to_bf16_bits(v * crate::ops::gelu_sigmoid(v)));
        }
    }
}

dispatch! {
    /// Tanh-approximated GELU of f32 values.
    fn gelu_tanh_f32(src: &[f32], dst: &mut [f32]) {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = v * crate::ops::gelu_sigmoid(v);
        }
    }
}

dispatch! {
    /// `row[i] = exp(scale · row[i] - shift)` in place; returns their sum (flash attention's f32 tile,
    /// `shift` the running max of the scaled scores).
    fn exp_row_shifted_f32(row: &mut [f32], scale: f32, shift: f32) -> f32 {
        for x in row.iter_mut() {
            *x = crate::ops::exp_f32(scale * *x - shift);
        }
        // 16 partial sums so the additions vectorise (an f32 sum in order cannot be reordered).
        let mut lanes = [0f32; 16];
        let mut chunks = row.chunks_exact(16);
        for c in &mut chunks {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l += v;
            }
        }
        lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
    }
}

dispatch! {
    /// `weights[i] = bf16(exp(scale · row[i] - shift))` (both of one length); returns their f32 sum before
    /// rounding (flash attention's tile, `shift` the running max of the scaled scores).
    fn exp_row_shifted_bf16(row: &[f32], scale: f32, shift: f32, weights: &mut [bf16]) -> f32 {
        let mut lanes = [0f32; 16];
        let mut total = 0f32;
        let mut w_chunks = weights.chunks_exact_mut(16);
        let mut r_chunks = row.chunks_exact(16);
        for (w, r) in (&mut w_chunks).zip(&mut r_chunks) {
            for ((w, &x), l) in w.iter_mut().zip(r).zip(lanes.iter_mut()) {
                let e = crate::ops::exp_f32(scale * x - shift);
                *l += e;
                *w = bf16::from_bits(to_bf16_bits(e));
            }
        }
        for (w, &x) in w_chunks.into_remainder().iter_mut().zip(r_chunks.remainder()) {
            let e = crate::ops::exp_f32(scale * x - shift);
            total += e;
            *w = bf16::from_bits(to_bf16_bits(e));
        }
        lanes.iter().sum::<f32>() + total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_as_half_does() {
        let mut vals = vec![
            0.0f32,
            -0.0,
            1.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
        ];
        // Halfway cases and their neighbours, both parities.
        for b in [
            0x3f80_8000u32,
            0x3f81_8000,
            0x3f80_7fff,
            0x3f81_8001,
            0xbf80_8000,
        ] {
            vals.push(f32::from_bits(b));
        }
        let mut x = 12345u64;
        for _ in 0..10_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            vals.push(f32::from_bits((x >> 32) as u32));
        }
        let mut got = vec![bf16::ZERO; vals.len()];
        f32_to_bf16(&vals, &mut got);
        for (v, g) in vals.iter().zip(&got) {
            let want = bf16::from_f32(*v);
            if v.is_nan() {
                assert!(g.is_nan(), "{v}");
            } else {
                assert_eq!(g.to_bits(), want.to_bits(), "{v} ({:#x})", v.to_bits());
            }
        }
    }

    #[test]
    fn shifted_exp_rows_match_f64() {
        let row: Vec<f32> = (0..53).map(|i| (i as f32 * 1.3).cos() * 30.0).collect();
        let mut w = row.clone();
        let sum = exp_row_shifted_f32(&mut w, 0.125, 3.0);
        let want: Vec<f64> = row
            .iter()
            .map(|&x| (0.125 * x as f64 - 3.0).exp())
            .collect();
        let want_sum: f64 = want.iter().sum();
        assert!((sum as f64 - want_sum).abs() <= 1e-6 * want_sum);
        for (g, w) in w.iter().zip(&want) {
            assert!((*g as f64 - w).abs() <= 1e-6 * w, "{g} against {w}");
        }
        let mut b = vec![bf16::ZERO; 53];
        let sum16 = exp_row_shifted_bf16(&row, 0.125, 3.0, &mut b);
        assert!((sum16 as f64 - want_sum).abs() <= 1e-6 * want_sum);
        for (g, w) in b.iter().zip(&want) {
            assert!(
                (g.to_f32() as f64 - w).abs() <= w / 256.0,
                "{g} against {w}"
            );
        }
    }
}
