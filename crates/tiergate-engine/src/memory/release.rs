//! Giving free heap back to the system: one of the engine's two `unsafe` modules (glibc's
//! allocator; the other is confidence/avx2.rs).
#![allow(unsafe_code)]

/// Returns the allocator's free memory to the system (every arena, not only the caller's):
/// what loading allocated and freed again (the tokenizer's JSON, graph optimisation, unpacked
/// copies). Freed memory in the loading thread's arena is never reused by the worker threads,
/// which allocate in their own arenas, so without this it stays resident for the process's
/// life. Returns whether anything was given back. A no-op off glibc.
pub(crate) fn trim_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointers and is thread-safe (it locks each arena).
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
