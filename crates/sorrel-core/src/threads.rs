//! The process's thread counts, fixed once before any thread exists.

/// Sets `RAYON_NUM_THREADS` and `CANDLE_NUM_THREADS` (each only where the user has not) for this process.
///
/// Unless `RAYON_NUM_THREADS` is set, candle 0.11 works out its thread count again for every matrix product
/// and parallel element-wise op by reading `/proc/cpuinfo` (6,838 reads for three clips of the embedded
/// model, 2 % of a training step's CPU time, perf); the count it finds is now found once. Candle's
/// element-wise ops run on the calling thread (`CANDLE_NUM_THREADS=1`): their pool's workers spin while the
/// matrix products and Sorrel's own kernels run on the rayon pool, so on 2 cores four busy threads shared
/// two cores. Measured each way in one session: a toy-world training step 0.435 -> 0.390 s, an embedded
/// model clip 0.251 -> 0.235 s, the 1.3B transformer's forward unchanged (14.8 against 14.7-14.9 s, f32).
///
/// # Safety
/// Call first thing in `main`, before any thread exists that could read or write the environment.
pub unsafe fn pin_thread_counts() {
    let set = |name: &str, value: String| {
        if std::env::var_os(name).is_none() {
            // SAFETY: the caller guarantees no other thread exists yet.
            unsafe { std::env::set_var(name, value) };
        }
    };
    set(
        "RAYON_NUM_THREADS",
        candle_core::utils::get_num_threads().to_string(),
    );
    set("CANDLE_NUM_THREADS", "1".into());
}
