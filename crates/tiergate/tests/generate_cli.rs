//! `tiergate generate` as a user runs it: the built binary, the bundled edge model, the real
//! ONNX Runtime library (found by the engine: ORT_DYLIB_PATH or `.tools/` above the cwd).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{repo_root, tiergate, tiergate_json};

/// The reference case for `prompt` on the edge model (Python onnxruntime, greedy).
fn reference_case(prompt: &str) -> serde_json::Value {
    let path = repo_root().join("models/edge/reference.json");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["prompt"] == prompt)
        .expect("the reference has this prompt")
        .clone()
}

#[test]
fn generate_json_answers_the_kitchen_lights_prompt() {
    let prompt = "turn on the kitchen lights";
    let result = tiergate_json(&[
        "generate",
        "--model",
        "models/edge",
        "--json",
        "--score-prompt",
        prompt,
    ]);

    let reference = reference_case(prompt);
    assert_eq!(result["model"]["name"], "tiergate-edge");
    // Greedy decoding is deterministic: the same answer as the Python reference...
    assert_eq!(result["text"], reference["greedy_text"]);
    // ...and that answer does what was asked.
    let text = result["text"].as_str().unwrap().to_lowercase();
    assert!(
        text.contains("kitchen lights") && text.contains(" on "),
        "{text}"
    );
    assert_eq!(result["finish_reason"], "eos");
    assert_eq!(
        result["prompt_tokens"].as_u64().unwrap() as usize,
        reference["input_ids"].as_array().unwrap().len()
    );
    assert!(result["prompt_score"].as_f64().unwrap() > 0.0);

    let tokens = result["tokens"].as_array().unwrap();
    assert_eq!(
        tokens.len() as u64,
        result["completion_tokens"].as_u64().unwrap()
    );
    let text: String = tokens.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(text, result["text"].as_str().unwrap());
    for token in tokens {
        let p = token["top1_prob"].as_f64().unwrap();
        assert!(p > 0.0 && p <= 1.0, "{token}");
        assert!(token["entropy"].as_f64().unwrap() >= 0.0, "{token}");
    }
    let timings = &result["timings"];
    assert!(timings["prefill_ms"].as_f64().unwrap() > 0.0);
    assert!(timings["decode_tokens_per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn generate_prints_answer_confidence_and_timings_for_people() {
    let output = tiergate(&["generate", "--max-tokens", "3", "what is 7 plus 5"]);
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("finish length"), "{stdout}");
    assert!(stdout.contains("prompt score"), "{stdout}");
    assert!(stdout.contains("tokens/s"), "{stdout}");
    assert!(stdout.contains("p(top1)"), "{stdout}");
}

#[test]
fn generate_errors_are_one_line_with_a_non_zero_exit() {
    let output = tiergate(&[
        "generate",
        "--ort-library",
        "/nonexistent/libonnxruntime.so",
        "hello",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("make setup"),
        "{stderr}"
    );

    let output = tiergate(&["generate", "   "]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8(output.stderr).unwrap().contains("empty"));

    let output = tiergate(&["generate", "--model", "models/no-such-model", "hello"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8(output.stderr)
            .unwrap()
            .contains("manifest.json")
    );
}
