//! The process's thread counts and allocator settings, fixed once before any thread exists.

/// Sets `RAYON_NUM_THREADS` and `CANDLE_NUM_THREADS` (each only where the user has not) for this process, and
/// tunes the allocator ([`keep_freed_memory`]).
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
    // SAFETY: as this function's own contract: no other thread exists yet.
    unsafe { keep_freed_memory() };
}

/// Keeps freed memory in the process for the next tensor instead of handing it back to the kernel at once.
///
/// glibc serves blocks over its mmap threshold (at most 32 MB, raised as large blocks are freed) with their
/// own mappings, unmapped when freed, and trims the heap's free top after every `free`. A forward pass or a
/// VAE decode allocates and frees tensors of tens to hundreds of MB over and over, so each new tensor faulted
/// in fresh pages the kernel had to zero (`clear_page_erms`, 5.5 % of a bf16 forward in `perf`). With both
/// off, measured in one session, medians of 3: the 1.3B transformer's forward at 1,280 tokens f32 11.71 ->
/// 10.03 s, bf16 6.04 -> 5.73 s, the VAE decode at 256x256 10.27 -> 8.95 s; peak RSS 5.76 -> 5.77 GB,
/// 3.15 -> 2.90 GB and 1.61 -> 1.67 GB. What the process keeps but does not use goes back to the kernel
/// before memory is measured ([`release_free_memory`]), so the memory checks still see it as available.
/// Why by hand: allocator tuning is the C library's (`mallopt`); no crate wraps it. Elsewhere than
/// glibc this does nothing.
///
/// # Safety
/// Call first thing in `main`, before any thread exists (glibc's `mallopt` is not meant to race allocation).
pub unsafe fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: no other thread exists (the caller's promise); mallopt only sets allocator parameters. A
        // value glibc refuses leaves its default in place (mallopt returns 0), which only costs speed.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}

/// Hands the memory this process has freed but kept ([`keep_freed_memory`]) back to the kernel, so that what
/// the kernel reports as available includes it. Called before the memory checks; cheap when little is kept.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim may be called at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
