//! Shared by the engine's integration tests: the real bundled models and the real ONNX Runtime
//! library (found the way the engine finds it: ORT_DYLIB_PATH, then `.tools/` above the cwd).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tiergate_engine::{Engine, EngineConfig};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// The bundled models, or another copy of them named by `TIERGATE_TEST_MODELS`.
pub fn model_dir(name: &str) -> PathBuf {
    std::env::var_os("TIERGATE_TEST_MODELS")
        .map_or_else(|| repo_root().join("models"), PathBuf::from)
        .join(name)
}

pub fn config(name: &str) -> EngineConfig {
    EngineConfig::for_model(model_dir(name))
}

pub fn engine(name: &str) -> Engine {
    Engine::load(&config(name)).expect("load the bundled model")
}

#[derive(Debug, Deserialize)]
pub struct Reference {
    pub onnxruntime_version: String,
    pub cases: Vec<ReferenceCase>,
}

#[derive(Debug, Deserialize)]
pub struct ReferenceCase {
    pub prompt: String,
    pub rendered: String,
    pub input_ids: Vec<u32>,
    pub first_step_logits: Vec<f32>,
    pub greedy_tokens: Vec<u32>,
    pub greedy_text: String,
}

pub fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(model_dir(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Copies a model directory into a temporary one that a test may break.
pub fn copy_model(name: &str) -> tempfile::TempDir {
    let temp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(model_dir(name)).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), temp.path().join(entry.file_name())).unwrap();
        }
    }
    temp
}

/// The real edge model's folder from `TIERGATE_REAL_MODEL`, or `None` (the test then says so
/// and passes) unless `TIERGATE_REQUIRE_REAL_MODEL=1` asks for it.
#[allow(clippy::print_stderr)]
pub fn real_model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("TIERGATE_REAL_MODEL").map(PathBuf::from);
    let required = std::env::var("TIERGATE_REQUIRE_REAL_MODEL").is_ok_and(|v| v == "1");
    match dir {
        Some(dir) if dir.join("manifest.json").is_file() => Some(dir),
        other => {
            assert!(
                !required,
                "TIERGATE_REQUIRE_REAL_MODEL=1 but no model at {other:?}: run scripts/import-real-model.sh"
            );
            eprintln!(
                "skipped: TIERGATE_REAL_MODEL is not a model folder ({other:?}); `make test` builds and sets it"
            );
            None
        }
    }
}
