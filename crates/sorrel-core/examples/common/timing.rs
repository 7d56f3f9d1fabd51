//! Timing shared by the micro-benchmarks (included with `#[path]`: a folder without `main.rs` is not an
//! example of its own).

use std::time::Instant;

/// The middle value.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Seconds `f` takes: one warm-up call, then the median of five.
pub fn time(mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..5)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}
