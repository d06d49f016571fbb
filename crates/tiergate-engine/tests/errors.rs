//! Every way a model directory, a configuration or a request can be wrong gives its own typed
//! error with a message that names the problem, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use tiergate_engine::{
    Engine, EngineConfig, EngineError, ErrorClass, GenerationRequest, ModelVariant, Prompt,
    SamplingParams,
};

fn load(dir: &Path) -> Result<Engine, EngineError> {
    Engine::load(&EngineConfig::for_model(dir))
}

fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut manifest);
    std::fs::write(&path, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
}

#[test]
fn missing_file_is_named() {
    let dir = common::copy_model("edge");
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let error = load(dir.path()).unwrap_err();
    assert!(
        matches!(error, EngineError::ModelFileMissing { ref path, .. } if path.ends_with("tokenizer.json")),
        "{error}"
    );
    assert_eq!(error.class(), ErrorClass::Unavailable);
    assert!(error.to_string().contains("tokenizer.json"));
}

#[test]
fn missing_directory_is_a_missing_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let error = load(&dir.path().join("nothing-here")).unwrap_err();
    assert!(
        matches!(error, EngineError::ModelFileMissing { ref path, .. } if path.ends_with("manifest.json")),
        "{error}"
    );
}

#[test]
fn changed_model_file_fails_its_hash() {
    let dir = common::copy_model("edge");
    let model = dir.path().join("model.onnx");
    let mut bytes = std::fs::read(&model).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&model, bytes).unwrap();
    let error = load(dir.path()).unwrap_err();
    match &error {
        EngineError::HashMismatch {
            path,
            expected,
            actual,
        } => {
            assert!(path.ends_with("model.onnx"));
            assert_ne!(expected, actual);
        }
        other => panic!("expected HashMismatch, got {other}"),
    }
    assert!(error.to_string().contains("sha256"));
}

#[test]
fn manifest_naming_an_input_the_graph_lacks_is_rejected_by_name() {
    let dir = common::copy_model("edge");
    edit_manifest(dir.path(), |m| {
        m["io"]["past_key"] = "past.{layer}.k".into();
    });
    let error = load(dir.path()).unwrap_err();
    match &error {
        EngineError::GraphIoMismatch {
            missing_inputs,
            unexpected_inputs,
            missing_outputs,
            unexpected_outputs,
            ..
        } => {
            assert!(missing_inputs.contains(&"past.0.k".to_string()), "{error}");
            assert!(
                unexpected_inputs.contains(&"past_key_values.0.key".to_string()),
                "{error}"
            );
            assert!(missing_outputs.is_empty() && unexpected_outputs.is_empty());
        }
        other => panic!("expected GraphIoMismatch, got {other}"),
    }
    assert!(error.to_string().contains("past.0.k"));
}

#[test]
fn graph_input_the_manifest_does_not_name_is_unexpected() {
    // The edge graph takes position_ids; a manifest claiming it does not is wrong.
    let dir = common::copy_model("edge");
    edit_manifest(dir.path(), |m| {
        m["io"]["position_ids"] = serde_json::Value::Null
    });
    let error = load(dir.path()).unwrap_err();
    assert!(
        matches!(&error, EngineError::GraphIoMismatch { unexpected_inputs, .. } if unexpected_inputs == &vec!["position_ids".to_string()]),
        "{error}"
    );
}

#[test]
fn a_logits_to_keep_input_the_graph_lacks_is_refused_at_load() {
    // The toy graphs return every position's logits; a manifest claiming they can keep fewer
    // would make the engine expect one row where the graph returns all of them.
    let dir = common::copy_model("edge");
    edit_manifest(dir.path(), |m| {
        m["io"]["logits_to_keep"] = "logits_to_keep".into();
    });
    let error = load(dir.path()).unwrap_err();
    assert!(
        matches!(&error, EngineError::GraphIoMismatch { missing_inputs, .. } if missing_inputs == &vec!["logits_to_keep".to_string()]),
        "{error}"
    );
}

#[test]
fn too_few_layers_in_the_manifest_leaves_graph_io_unexpected() {
    let dir = common::copy_model("regional");
    edit_manifest(dir.path(), |m| {
        let layers = m["num_layers"].as_u64().unwrap();
        m["num_layers"] = (layers - 1).into();
    });
    let error = load(dir.path()).unwrap_err();
    assert!(
        matches!(&error, EngineError::GraphIoMismatch { unexpected_outputs, .. } if !unexpected_outputs.is_empty()),
        "{error}"
    );
}

#[test]
fn truncated_model_file_is_named_with_both_sizes() {
    let dir = common::copy_model("edge");
    let model = dir.path().join("model.onnx");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let error = load(dir.path()).unwrap_err();
    match &error {
        EngineError::SizeMismatch {
            path,
            expected,
            actual,
        } => {
            assert!(path.ends_with("model.onnx"));
            assert_eq!(*expected, bytes.len() as u64);
            assert_eq!(*actual, (bytes.len() / 2) as u64);
        }
        other => panic!("expected SizeMismatch, got {other}"),
    }
    assert_eq!(error.class(), ErrorClass::Unavailable);
    assert!(error.to_string().contains("truncated"), "{error}");
}

#[test]
fn only_the_loaded_variant_is_hashed_but_it_always_is() {
    // A broken int8 graph does not stop the fp32 variant from loading...
    let dir = common::copy_model("edge");
    std::fs::write(dir.path().join("model.int8.onnx"), b"garbage").unwrap();
    load(dir.path()).unwrap();
    // ...and is refused when it is the variant asked for.
    let error = Engine::load(&EngineConfig {
        variant: ModelVariant::Int8.into(),
        ..EngineConfig::for_model(dir.path())
    })
    .unwrap_err();
    assert!(
        matches!(error, EngineError::SizeMismatch { ref path, .. } if path.ends_with("model.int8.onnx")),
        "{error}"
    );
}

#[test]
fn chat_template_that_does_not_compile_is_an_invalid_manifest() {
    let dir = common::copy_model("edge");
    edit_manifest(dir.path(), |m| {
        m["chat_template"]["jinja"] = "{% for message in messages %}".into()
    });
    let error = load(dir.path()).unwrap_err();
    assert!(
        matches!(error, EngineError::ManifestInvalid { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("chat_template"), "{error}");
}

#[test]
fn bad_manifest_json_and_bad_fields_are_invalid_manifests() {
    let dir = common::copy_model("edge");
    std::fs::write(dir.path().join("manifest.json"), "{ not json").unwrap();
    let error = load(dir.path()).unwrap_err();
    assert!(
        matches!(error, EngineError::ManifestInvalid { .. }),
        "{error}"
    );

    let dir = common::copy_model("edge");
    edit_manifest(dir.path(), |m| m["architecture"] = "transformer-xl".into());
    let error = load(dir.path()).unwrap_err();
    assert!(
        matches!(error, EngineError::ManifestInvalid { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("transformer-xl"), "{error}");

    let dir = common::copy_model("edge");
    edit_manifest(dir.path(), |m| {
        m["files"][0]["path"] = "../model.onnx".into()
    });
    let error = load(dir.path()).unwrap_err();
    assert!(error.to_string().contains("relative"), "{error}");
}

#[test]
fn variant_not_in_the_manifest_is_named() {
    let dir = common::copy_model("edge");
    edit_manifest(dir.path(), |m| {
        let files = m["files"].as_array_mut().unwrap();
        files.retain(|f| f["variant"] != "int8");
    });
    let config = EngineConfig {
        variant: ModelVariant::Int8.into(),
        ..EngineConfig::for_model(dir.path())
    };
    let error = Engine::load(&config).unwrap_err();
    assert!(
        matches!(error, EngineError::VariantMissing { .. }),
        "{error}"
    );
}

#[test]
fn missing_ort_library_says_how_to_fix_it() {
    let config = EngineConfig {
        ort_library: Some("/nonexistent/libonnxruntime.so.1.31.1".into()),
        ..common::config("edge")
    };
    let error = Engine::load(&config).unwrap_err();
    assert!(
        matches!(error, EngineError::OrtLibraryNotFound { .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("make setup") && message.contains("ORT_DYLIB_PATH"),
        "{message}"
    );
    assert!(
        message.contains("/nonexistent/libonnxruntime.so.1.31.1"),
        "{message}"
    );
    assert_eq!(error.class(), ErrorClass::Unavailable);
}

#[test]
fn zero_workers_is_a_config_error() {
    let config = EngineConfig {
        workers: 0,
        ..common::config("edge")
    };
    assert!(matches!(
        Engine::load(&config).unwrap_err(),
        EngineError::ConfigInvalid(_)
    ));
}

#[test]
fn config_rejects_unknown_fields_by_name() {
    let error = serde_json::from_str::<EngineConfig>(r#"{"model_dir": "x", "wokers": 2}"#)
        .unwrap_err()
        .to_string();
    assert!(error.contains("wokers"), "{error}");
    let config: EngineConfig = serde_json::from_str(
        r#"{"model_dir": "m", "variant": "int8", "graph_optimization": "basic"}"#,
    )
    .unwrap();
    assert_eq!(config.variant, ModelVariant::Int8.into());
    assert_eq!(config.workers, EngineConfig::default().workers);
}

#[tokio::test]
async fn bad_requests_are_invalid_requests() {
    let engine = common::engine("edge");
    let request = |prompt: Prompt| GenerationRequest::new(prompt, SamplingParams::greedy(4));

    for prompt in [
        Prompt::Text(String::new()),
        Prompt::user("   "),
        Prompt::Chat(vec![]),
    ] {
        let error = engine.generate_stream(request(prompt)).unwrap_err();
        assert!(matches!(error, EngineError::EmptyPrompt), "{error}");
        assert_eq!(error.class(), ErrorClass::InvalidRequest);
    }
    assert!(matches!(
        engine.score_prompt(&Prompt::Text(String::new())).await,
        Err(EngineError::EmptyPrompt)
    ));

    let long = Prompt::user("lights ".repeat(400));
    let error = engine.generate(request(long.clone())).await.unwrap_err();
    match error {
        EngineError::PromptTooLong { tokens, limit } => {
            assert_eq!(limit, engine.model().context_length);
            assert!(tokens >= 400, "{tokens}");
        }
        other => panic!("expected PromptTooLong, got {other}"),
    }
    assert!(matches!(
        engine.score_prompt(&long).await,
        Err(EngineError::PromptTooLong { .. })
    ));
    // Megabytes of prompt are refused from their length alone, with a lower bound on tokens.
    let huge = Prompt::user("kitchen lights ".repeat(100_000));
    match engine.generate_stream(request(huge)) {
        Err(EngineError::PromptTooLong { tokens, limit }) => assert!(tokens >= limit),
        other => panic!("expected PromptTooLong, got {other:?}"),
    }

    let mut bad_sampling = request(Prompt::user("hello"));
    bad_sampling.sampling.temperature = -0.5;
    let error = engine.generate_stream(bad_sampling).unwrap_err();
    assert!(matches!(error, EngineError::InvalidSampling(_)), "{error}");
    assert_eq!(error.class(), ErrorClass::InvalidRequest);
}

/// A graph's external weights (`kind: weights`) are checked when their variant loads, and only then.
#[test]
fn weights_file_is_checked_for_its_variant_only() {
    let dir = common::copy_model("edge");
    let weights = dir.path().join("model.int8.onnx.data");
    std::fs::write(&weights, b"not the listed bytes").unwrap();
    edit_manifest(dir.path(), |m| {
        let entry = serde_json::json!({
            "path": "model.int8.onnx.data",
            "kind": "weights",
            "variant": "int8",
            "sha256": "0".repeat(64),
            "bytes": 20,
        });
        m["files"].as_array_mut().unwrap().push(entry);
    });
    assert!(
        load(dir.path()).is_ok(),
        "fp32 must not read int8's weights"
    );
    let error = Engine::load(&EngineConfig {
        variant: ModelVariant::Int8.into(),
        ..EngineConfig::for_model(dir.path())
    })
    .unwrap_err();
    assert!(
        matches!(error, EngineError::HashMismatch { ref path, .. } if path.ends_with("model.int8.onnx.data")),
        "{error}"
    );
}

/// A graph fed embedding rows needs `io.inputs_embeds`, its table in a weights file of its own
/// variant, and a graph that takes that input: each gap is refused at load, by name.
#[test]
fn an_embedding_table_the_graph_cannot_use_is_refused_at_load() {
    let table = serde_json::json!({
        "encoding": "q8_0_offset_128", "weights": "rows.data", "codes": 0, "scales": 0,
    });
    let dir = common::copy_model("edge");
    edit_manifest(dir.path(), |m| m["files"][0]["embedding"] = table.clone());
    let error = load(dir.path()).unwrap_err();
    assert!(
        matches!(error, EngineError::ManifestInvalid { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("io.inputs_embeds"), "{error}");

    edit_manifest(dir.path(), |m| {
        m["io"]["inputs_embeds"] = "inputs_embeds".into()
    });
    let error = load(dir.path()).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("not a weights file of its variant"),
        "{error}"
    );

    // Listed and hashed, but the toy graph takes `input_ids`, not embeddings.
    let rows = vec![0u8; 4096];
    std::fs::write(dir.path().join("rows.data"), &rows).unwrap();
    edit_manifest(dir.path(), |m| {
        let entry = serde_json::json!({
            "path": "rows.data", "kind": "weights", "variant": "fp32",
            "sha256": hex_sha256(&rows), "bytes": rows.len(),
        });
        m["files"].as_array_mut().unwrap().push(entry);
    });
    match load(dir.path()).unwrap_err() {
        EngineError::GraphIoMismatch {
            missing_inputs,
            unexpected_inputs,
            ..
        } => {
            assert_eq!(missing_inputs, ["inputs_embeds"]);
            assert_eq!(unexpected_inputs, ["input_ids"]);
        }
        other => panic!("expected a graph IO mismatch, got {other}"),
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
