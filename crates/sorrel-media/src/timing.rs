//! Frame times in the units each container counts in.

/// Start time of frame `i` at `fps`, in `1 / units_per_second` ticks, rounded to the nearest tick.
/// Consecutive differences of these give per-frame delays that never drift: the whole clip lasts
/// `round(frames * units_per_second / fps)` ticks, whatever the rounding of single frames.
pub(crate) fn tick(i: usize, fps: u32, units_per_second: u64) -> u64 {
    let fps = u64::from(fps);
    (i as u64 * units_per_second * 2 + fps) / (fps * 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_fps_in_centiseconds_alternates_and_keeps_the_total() {
        let delays: Vec<u64> = (0..8)
            .map(|i| tick(i + 1, 16, 100) - tick(i, 16, 100))
            .collect();
        // 6.25 cs per frame: rounding puts the extra centisecond on every fourth frame.
        assert_eq!(delays.iter().sum::<u64>(), 50);
        assert!(delays.iter().all(|&d| d == 6 || d == 7), "{delays:?}");
        assert_eq!(tick(81, 16, 100), 506);
        assert_eq!(tick(81, 16, 1000), 5063);
    }
}
