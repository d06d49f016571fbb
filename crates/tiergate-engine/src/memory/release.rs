//! Giving memory back to the system: the only `unsafe` in the engine (system calls on ranges
//! the kernel listed, and glibc's allocator controls).
#![allow(unsafe_code)]

use std::path::PathBuf;

use super::parse_smaps;

/// Drops this process's resident pages of `files` (the model's graph and weights), keeping
/// the mappings: a page ONNX Runtime reads again faults back in from the page cache (or the
/// disk), with the same contents. Returns the resident bytes dropped.
///
/// After prepacking, ONNX Runtime runs on its own packed copies of most weights, but the file
/// it read them from stays mapped with every page it touched resident (and counted in the
/// process's RSS). ONNX Runtime maps each external initializer on its own, private and
/// writable (`rw-p`), but never writes to one; only mappings with no private (copy-on-write)
/// page are touched, so nothing that differs from the file is ever thrown away.
///
/// Call it only while the sessions that map `files` are alive and not being created or
/// dropped (after they are all loaded): the mappings then cannot change under it.
pub(crate) fn release_file_pages(files: &[PathBuf]) -> u64 {
    let files: Vec<PathBuf> = files
        .iter()
        .filter_map(|file| file.canonicalize().ok())
        .collect();
    let Ok(text) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut released = 0;
    for mapping in parse_smaps(&text) {
        if !mapping.is_of(&files) || mapping.anonymous > 0 || mapping.rss == 0 {
            continue;
        }
        if drop_pages(mapping.start, mapping.end - mapping.start) {
            released += mapping.rss;
        }
    }
    released
}

#[cfg(target_os = "linux")]
fn drop_pages(start: usize, len: usize) -> bool {
    // SAFETY: the range is a whole mapping the kernel listed in /proc/self/smaps a moment ago,
    // a mapping of a model file that the live ONNX Runtime sessions own and do not unmap
    // while they live (the caller's contract). It held no private page (`Anonymous: 0`: never
    // written, and ONNX Runtime does not write to initializers), so MADV_DONTNEED only drops
    // page-table entries of clean file pages: the next read of any address in it faults in the
    // file's same bytes. No Rust reference points into it.
    let result = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    result == 0
}

#[cfg(not(target_os = "linux"))]
fn drop_pages(_start: usize, _len: usize) -> bool {
    false
}

/// Returns the allocator's free memory to the system (every arena, not only the caller's):
/// what session creation allocated and freed again (graph optimisation, unpacked copies).
/// Returns whether anything was given back. A no-op off glibc.
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

/// glibc malloc settings for a long-running node, applied by the binary at start (before
/// threads allocate). `None` keeps glibc's default (or the `MALLOC_*_` environment's value).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MallocTuning {
    /// Most arenas malloc creates (glibc: 8 per core). Every thread that allocates under
    /// contention gets its own arena, and an arena keeps its freed memory.
    pub arena_max: Option<u32>,
}

/// Applies `tuning`; returns whether every setting was accepted (false off glibc).
pub fn tune_malloc(tuning: MallocTuning) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let Some(arena_max) = tuning.arena_max else {
            return true;
        };
        let Ok(value) = libc::c_int::try_from(arena_max) else {
            return false;
        };
        // SAFETY: mallopt takes plain integers and is thread-safe.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, value) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = tuning;
        false
    }
}
