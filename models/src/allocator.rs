//! The binaries' allocator setting (their global allocator is mimalloc). A training step or a
//! judged forward allocates and frees the same large tensors every time (gradients of the
//! 65 MB embedding and head, activations, score matrices); mimalloc returns freed memory to
//! the OS 10 ms after a free by default, so the next step faults every page back in, zeroed.
//! That was 22% of a bench-small DPO step's CPU time (the kernel's `clear_page_erms`, perf,
//! Wed Dec 2 2026); kept, the step took 1.62 s instead of 2.83 s and a bench-small judged
//! forward 0.24-0.26 s instead of 0.30 s. The process holds its peak, which it reaches every
//! step or request anyway.

/// mimalloc's `mi_option_purge_delay` (its `mimalloc.h`, v3: the 16th option); the crate's
/// bindings do not name it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory stays with the process (`purge_delay` -1), for a binary whose global allocator
/// is mimalloc. Call it first thing in `main`.
pub fn retain_freed_memory() {
    // SAFETY: sets a process-wide mimalloc option; any value is valid, and -1 means never purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
