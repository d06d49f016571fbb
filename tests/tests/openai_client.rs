//! The official OpenAI Python client, pointed at a real node's base_url, works streaming and
//! not. Needs the test venv that `make test` creates (`.venv/test`, tests/requirements.txt).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tiergate_e2e::{Gate, NodeProcess, node_toml, repo_root};

#[tokio::test]
async fn official_openai_python_client_works_streaming_and_not_and_reads_logprobs() {
    let python = repo_root().join(".venv/test/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make test` (its test-deps step creates the venv)",
        python.display()
    );
    let toml = node_toml("edge-1", "edge", "edge", None, None, Gate::Commit);
    let node = NodeProcess::start("edge", &toml).await.unwrap();
    let output = tokio::process::Command::new(&python)
        .arg(repo_root().join("tests/openai_client_check.py"))
        .arg(format!("{}/v1", node.http_url()))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(seen["unary"]["routing"]["tier"], "edge");
    assert_eq!(seen["unary"]["text"], seen["stream"]["text"]);
    assert_eq!(seen["bad_model_status"], 400);
    assert!(seen["logprobs"]["tokens"].as_u64().unwrap() > 0);
    assert_eq!(seen["logprobs"]["tokens"], seen["logprobs"]["streamed"]);
}
