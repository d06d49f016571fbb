//! The process's resident memory as Linux reports it, and giving memory back after a load.
//!
//! Reading is plain `/proc` parsing (`smaps_rollup` and `status` for the totals, `smaps` per
//! mapping); on other systems every reading is `None` / empty. Giving back (`release`) needs
//! `unsafe` (glibc's `malloc_trim`), as only the AVX2 confidence pass does elsewhere.

mod release;

pub(crate) use release::trim_heap;

/// Resident memory of this process, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Every resident page mapped by the process (`VmRSS`).
    pub rss: u64,
    /// Anonymous pages: heap, ONNX Runtime's packed weights and buffers, thread stacks.
    pub anonymous: u64,
    /// Pages of mapped files (libraries, the weights file): clean page-cache pages the
    /// kernel can drop and read back, but counted in the resident set while mapped.
    pub file: u64,
    /// The resident set's high-water mark over the process's life (`VmHWM`).
    pub peak: u64,
}

impl MemoryUsage {
    /// The current figures, or `None` where `/proc/self` does not have them (not Linux).
    pub fn current() -> Option<MemoryUsage> {
        let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let rss = kb_field(&rollup, "Rss:")?;
        let anonymous = kb_field(&rollup, "Anonymous:")?;
        Some(MemoryUsage {
            rss,
            anonymous,
            file: rss.saturating_sub(anonymous),
            peak: kb_field(&status, "VmHWM:").unwrap_or(rss),
        })
    }
}

/// Resident memory of the mappings that share a name (a file's path, `[heap]`, `[anon]`...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingUsage {
    pub name: String,
    pub rss: u64,
    pub anonymous: u64,
    pub mappings: usize,
}

/// The process's resident memory per mapping name, largest first (empty where `/proc/self/smaps`
/// is missing). Unnamed anonymous mappings (ONNX Runtime's large buffers, thread stacks,
/// malloc's per-thread arenas) are summed as `[anon]`.
pub fn resident_by_mapping() -> Vec<MappingUsage> {
    let Ok(text) = std::fs::read_to_string("/proc/self/smaps") else {
        return Vec::new();
    };
    let mut by_name: Vec<MappingUsage> = Vec::new();
    for mapping in parse_smaps(&text) {
        let name = match &mapping.path {
            Some(path) => path.clone(),
            None => "[anon]".to_string(),
        };
        match by_name.iter_mut().find(|usage| usage.name == name) {
            Some(usage) => {
                usage.rss += mapping.rss;
                usage.anonymous += mapping.anonymous;
                usage.mappings += 1;
            }
            None => by_name.push(MappingUsage {
                name,
                rss: mapping.rss,
                anonymous: mapping.anonymous,
                mappings: 1,
            }),
        }
    }
    by_name.sort_by(|a, b| b.rss.cmp(&a.rss).then_with(|| a.name.cmp(&b.name)));
    by_name
}

/// One mapping of `/proc/self/smaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    /// The file or pseudo-name (`[heap]`, `[stack]`); `None` for an unnamed anonymous mapping.
    path: Option<String>,
    rss: u64,
    /// Private pages no longer backed by the file (copy-on-write after a write) or anonymous.
    anonymous: u64,
}

fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut mappings: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        if let Some(mapping) = parse_header(line) {
            mappings.push(mapping);
            continue;
        }
        let Some(current) = mappings.last_mut() else {
            continue;
        };
        if let Some(kb) = kb_value(line, "Rss:") {
            current.rss = kb;
        } else if let Some(kb) = kb_value(line, "Anonymous:") {
            current.anonymous = kb;
        }
    }
    mappings
}

/// `start-end perms offset dev inode [path]`; `None` for a field line.
fn parse_header(line: &str) -> Option<Mapping> {
    // A header starts with a hex address range; a field line ("Rss:  8 kB") does not.
    let (start, end) = line.split_whitespace().next()?.split_once('-')?;
    let hex = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(start) || !hex(end) {
        return None;
    }
    // Skip the five fixed fields; the path is the rest of the line and may hold spaces.
    let mut rest = line;
    for _ in 0..5 {
        rest = rest.trim_start();
        rest = &rest[rest.find(char::is_whitespace).unwrap_or(rest.len())..];
    }
    let path = Some(rest.trim())
        .filter(|p| !p.is_empty())
        .map(str::to_string);
    Some(Mapping {
        path,
        rss: 0,
        anonymous: 0,
    })
}

fn kb_value(line: &str, name: &str) -> Option<u64> {
    let rest = line.strip_prefix(name)?;
    let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

fn kb_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| kb_value(line, name))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const SMAPS: &str = "\
5600cfb70000-5600cfb72000 r--p 00000000 fe:00 247282                     /opt/m/model.onnx.data
Size:                  8 kB
Rss:                   8 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
5600cfb72000-5600cfb78000 rw-p 00002000 fe:00 247282                     /opt/m/model.onnx.data
Rss:                  24 kB
Anonymous:             4 kB
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
Rss:                1024 kB
Anonymous:          1024 kB
7f0000100000-7f0000200000 r--p 00000000 fe:00 9                          /srv/a dir/w (deleted)
Rss:                  12 kB
Anonymous:             0 kB
";

    #[test]
    fn smaps_mappings_keep_their_paths_and_sizes() {
        let mappings = parse_smaps(SMAPS);
        assert_eq!(mappings.len(), 4);
        assert_eq!(mappings[0].path.as_deref(), Some("/opt/m/model.onnx.data"));
        assert_eq!((mappings[0].rss, mappings[0].anonymous), (8192, 0));
        assert_eq!((mappings[1].rss, mappings[1].anonymous), (24 * 1024, 4096));
        assert_eq!(mappings[2].path, None);
        assert_eq!(mappings[2].anonymous, 1 << 20);
        assert_eq!(mappings[3].path.as_deref(), Some("/srv/a dir/w (deleted)"));
    }

    #[test]
    fn this_process_reports_its_resident_memory_on_linux() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let usage = MemoryUsage::current().expect("/proc/self on Linux");
        assert!(usage.rss > 0);
        assert_eq!(usage.rss, usage.anonymous + usage.file);
        assert!(usage.peak >= usage.rss / 2);
        let by_mapping = resident_by_mapping();
        assert!(
            by_mapping
                .iter()
                .any(|m| m.name == "[heap]" || m.name == "[anon]")
        );
    }
}
