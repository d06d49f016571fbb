//! Finding and loading the ONNX Runtime shared library, and the one ort environment per process.
//!
//! ort's lazy `ort::init()` path panics when the library is missing, so the library is always
//! loaded here, explicitly, from the first of: the configured path, `ORT_DYLIB_PATH`, or
//! `PREFIX/lib/tiergate/` beside an installed `PREFIX/bin/tiergate` (`make install`), or
//! `.tools/onnxruntime/libonnxruntime.so.<version>` (what `make setup` fetches) in the current
//! directory, the executable's directory, or any of their ancestors.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::environment::Environment;

use crate::error::EngineError;

/// The environment variable ort itself reads; honoured here for the same purpose.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";
/// Where `scripts/fetch-onnxruntime.sh` puts the library, relative to the repository root.
pub const BUNDLED_LIBRARY: &str = ".tools/onnxruntime/libonnxruntime.so.1.31.1";

/// The environment, created once per process (ort allows only one), with the library it loaded.
static ENVIRONMENT: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

/// Resolves the ONNX Runtime library path without loading it.
///
/// An explicit path or a set `ORT_DYLIB_PATH` is authoritative: when it names no file, that is
/// an error rather than a silent fallback to another library.
pub fn resolve_library(explicit: Option<&Path>) -> Result<PathBuf, EngineError> {
    if let Some(path) = explicit {
        return existing(path, "configured ort_library");
    }
    if let Some(value) = std::env::var_os(ORT_DYLIB_ENV).filter(|v| !v.is_empty()) {
        return existing(Path::new(&value), ORT_DYLIB_ENV);
    }
    let cwd = std::env::current_dir().ok();
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    let candidates = bundled_candidates(cwd.as_deref(), exe_dir.as_deref());
    if let Some(found) = candidates.iter().find(|candidate| candidate.is_file()) {
        return Ok(found.clone());
    }
    let tried: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    Err(EngineError::OrtLibraryNotFound {
        tried: format!("{ORT_DYLIB_ENV} unset; {}", tried.join(", ")),
    })
}

/// Where the library may lie, in order: beside an installed binary (`PREFIX/lib/tiergate/`,
/// what `make install` lays out), then `.tools/onnxruntime/` in the current directory, the
/// executable's directory, or any of their ancestors (a checkout after `make setup`).
fn bundled_candidates(cwd: Option<&Path>, exe_dir: Option<&Path>) -> Vec<PathBuf> {
    let file_name = Path::new(BUNDLED_LIBRARY).file_name().unwrap_or_default();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(prefix) = exe_dir.and_then(Path::parent) {
        candidates.push(prefix.join("lib").join("tiergate").join(file_name));
    }
    for base in cwd.into_iter().chain(exe_dir).flat_map(Path::ancestors) {
        let candidate = base.join(BUNDLED_LIBRARY);
        if !candidates.contains(&candidate) {
            candidates.push(candidate);
        }
    }
    candidates
}

fn existing(path: &Path, source: &str) -> Result<PathBuf, EngineError> {
    if path.is_file() {
        // ort resolves relative paths against the executable; make them mean the current dir.
        Ok(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()))
    } else {
        Err(EngineError::OrtLibraryNotFound {
            tried: format!("{source} = {}", path.display()),
        })
    }
}

/// Loads the library (first call only) and returns the process-wide environment.
///
/// A later call naming a different library gets the already loaded one (a process cannot hold
/// two), with a warning.
pub(crate) fn environment(explicit: Option<&Path>) -> Result<Environment, EngineError> {
    let path = resolve_library(explicit)?;
    let mut slot = ENVIRONMENT
        .lock()
        .map_err(|_| EngineError::runtime("ort environment lock poisoned"))?;
    if let Some((loaded, environment)) = slot.as_ref() {
        if *loaded != path {
            tracing::warn!(
                loaded = %loaded.display(),
                requested = %path.display(),
                "ONNX Runtime is already loaded in this process; using the loaded library"
            );
        }
        return Ok(environment.clone());
    }
    let invalid = |reason: String| EngineError::OrtLibraryInvalid {
        path: path.clone(),
        reason,
    };
    let environment = ort::init_from(&path)
        .map_err(|e| invalid(e.to_string()))?
        .with_name("tiergate")
        .with_telemetry(false)
        .build()
        .map_err(|e| invalid(e.to_string()))?;
    tracing::info!(library = %path.display(), "loaded ONNX Runtime");
    *slot = Some((path, environment.clone()));
    Ok(environment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_installed_binary_finds_the_library_under_its_prefix_first() {
        let found = bundled_candidates(
            Some(Path::new("/home/me/work")),
            Some(Path::new("/opt/tiergate/bin")),
        );
        assert_eq!(
            found[0],
            Path::new("/opt/tiergate/lib/tiergate/libonnxruntime.so.1.31.1")
        );
        assert!(found.contains(&PathBuf::from(
            "/home/me/work/.tools/onnxruntime/libonnxruntime.so.1.31.1"
        )));
        assert!(found.contains(&PathBuf::from(
            "/opt/tiergate/.tools/onnxruntime/libonnxruntime.so.1.31.1"
        )));
        // Each place once, however the two ancestries overlap.
        let mut unique = found.clone();
        unique.dedup();
        assert_eq!(unique.len(), found.len());
    }
}
