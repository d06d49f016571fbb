//! Loading a file that is not ONNX Runtime is a clear error, and the process can still load the
//! real library afterwards. Its own test binary: a process loads ONNX Runtime only once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use tiergate_engine::{Engine, EngineConfig, EngineError, ErrorClass, resolve_library};

#[test]
fn a_file_that_is_not_onnx_runtime_is_rejected_then_the_real_one_loads() {
    let temp = tempfile::tempdir().unwrap();
    let fake = temp.path().join("libonnxruntime.so.1.31.1");
    std::fs::write(&fake, b"not a shared library").unwrap();
    let config = EngineConfig {
        ort_library: Some(fake.clone()),
        ..common::config("edge")
    };
    let error = Engine::load(&config).unwrap_err();
    match &error {
        EngineError::OrtLibraryInvalid { path, .. } => assert_eq!(path, &fake),
        other => panic!("expected OrtLibraryInvalid, got {other}"),
    }
    assert_eq!(error.class(), ErrorClass::Unavailable);
    assert!(error.to_string().contains("make setup"), "{error}");

    // The default discovery (ORT_DYLIB_PATH or .tools/ above the current dir) finds the real one.
    let real = resolve_library(None).unwrap();
    assert!(real.is_file());
    let engine = Engine::load(&common::config("edge")).unwrap();
    assert_eq!(engine.model().name, "tiergate-edge");
}
