//! The confidence pass compiled for AVX2 and chosen at run time. The release build targets
//! baseline x86-64 (SSE2), where [`super::exp_sums_portable`] runs four floats wide; compiled
//! for AVX2 the same code runs eight wide, in about half the time per vocabulary row
//! (docs/benchmarks.md), with the same sums bit for bit: without FMA each lane does the same
//! IEEE operations in the same order. The engine's second `unsafe` (the other is glibc's
//! allocator, memory/release.rs): calling a function compiled for a CPU feature.
#![allow(unsafe_code)]

/// [`super::exp_sums_portable`] compiled for AVX2, when this CPU has it; `None` otherwise.
pub(super) fn exp_sums(logits: &[f32], max: f32) -> Option<(f64, f64)> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: `exp_sums_avx2` needs AVX2 and nothing else, and the CPU was just found to
        // have it (the check is a cached load after the first call).
        return Some(unsafe { exp_sums_avx2(logits, max) });
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (logits, max);
    None
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn exp_sums_avx2(logits: &[f32], max: f32) -> (f64, f64) {
    super::exp_sums_portable(logits, max)
}
