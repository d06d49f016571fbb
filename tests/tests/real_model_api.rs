//! The OpenAI API on the real edge model (SmolLM2-135M-Instruct, int4): `/v1/completions` is raw
//! text continued as is (no chat template), `/v1/chat/completions` renders the model's own chat
//! template. Skips without `TIERGATE_REAL_MODEL` unless `TIERGATE_REQUIRE_REAL_MODEL=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use serde_json::json;
use tiergate_e2e::cpu_kinds::as_cpu;
use tiergate_e2e::{Launch, NodeProcess, post_json, real_model_dir, repo_root, tiergate_bin};
use tiergate_proto::v1 as pb;

#[tokio::test]
async fn completions_continue_raw_text_and_chat_renders_the_template() {
    let Some(model) = real_model_dir() else {
        return;
    };
    let toml = format!(
        "[node]\nname = \"edge-1\"\ntier = \"edge\"\n[engine]\nmodel_dir = \"{}\"\nvariant = \"int4\"\n",
        model.display()
    );
    let edge = NodeProcess::start("edge", &toml).await.unwrap();

    // Raw text: the model continues the sequence; the prompt is its own few tokens.
    let url = format!("{}/v1/completions", edge.http_url());
    let reply = post_json(
        &url,
        &json!({"model": "tiergate", "prompt": "1, 2, 3, 4, 5,", "max_tokens": 6, "temperature": 0}),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json().unwrap();
    let text = body["choices"][0]["text"].as_str().unwrap();
    assert!(text.starts_with(" 6, 7"), "{text:?}");
    let raw_prompt_tokens = body["usage"]["prompt_tokens"].as_u64().unwrap();
    // "1", ",", " ", "2", ...: 14 tokens, and nothing around them.
    assert!(
        raw_prompt_tokens <= 16,
        "no template around it: {raw_prompt_tokens}"
    );

    // Chat: the same text as a user turn is wrapped in the template (system prompt, roles).
    let url = format!("{}/v1/chat/completions", edge.http_url());
    let reply = post_json(
        &url,
        &json!({
            "model": "tiergate", "max_tokens": 6, "temperature": 0,
            "messages": [{"role": "user", "content": "1, 2, 3, 4, 5,"}],
        }),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json().unwrap();
    let chat_prompt_tokens = body["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        chat_prompt_tokens > raw_prompt_tokens + 10,
        "{chat_prompt_tokens} vs {raw_prompt_tokens}"
    );
    assert!(
        !body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );
}

/// deploy/edge.toml as shipped (`variant = "auto"`, a gate per graph and for int4-fast per CPU
/// kind), pointed at the real model: the decision names the graph the engine loaded and the CPU
/// kind, and carries the gate calibrated on both. `auto` runs int4-fast when the import kept it on
/// x86-64 without AVX-512, and with AVX-512 (the kinds deploy/edge.toml has a gate for). On this
/// CPU, then as each older x86-64 kind scripts/as-cpu can show here (its newer features hidden
/// from `cpuid`), so every kind's graph and gate are checked on one machine.
#[tokio::test]
async fn the_shipped_edge_config_gates_with_the_loaded_graphs_calibration() {
    let Some(model) = real_model_dir() else {
        return;
    };
    let shipped = std::fs::read_to_string(repo_root().join("deploy/edge.toml")).unwrap();
    // The node alone: the upstreams' addresses are the deployment's, not this test's.
    let (node_part, _upstreams) = shipped.split_once("[upstreams.regional]").unwrap();
    let toml: String = node_part
        .lines()
        .map(|line| {
            if line.starts_with("model_dir = ") {
                format!("model_dir = \"{}\"", model.display())
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let native = shipped_config_answers(&model, &toml, &Launch::default()).await;

    for kind in ["x86-64-avx2", "x86-64-avx-vnni", "x86-64-avx512"] {
        if kind == native {
            continue;
        }
        // A kind this machine cannot show is skipped; the helper says why.
        let Some(wrapper) = as_cpu(kind).unwrap() else {
            continue;
        };
        let launch = Launch {
            wrapper,
            ..Launch::default()
        };
        assert_eq!(shipped_config_answers(&model, &toml, &launch).await, kind);
    }
}

/// Starts the node on `toml` as `launch` says, checks its graph and gate against its CPU kind and
/// that it answers over the OpenAI API; returns the kind.
async fn shipped_config_answers(model: &Path, toml: &str, launch: &Launch) -> String {
    let edge = NodeProcess::launch("edge", toml, launch).await.unwrap();
    let mut client = edge.grpc_client().await.unwrap();
    let explained = client
        .explain(pb::GenerateRequest {
            prompt: "What is the capital of Japan?".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let decision: serde_json::Value = serde_json::from_str(&explained.decision_json).unwrap();
    let variant = decision["local_variant"].as_str().unwrap();
    let cpu = decision["local_cpu"].as_str().unwrap();
    let gate = &decision["thresholds"]["confidence"];
    // The values deploy/edge.toml ships (tests/calibrated_gate.rs ties them to the calibrations).
    let (mean, floor) = match (variant, cpu) {
        ("int4-fast", "x86-64-avx512-vnni" | "x86-64-avx512") => (0.5, 0.55),
        ("int4-fast", _) => (0.8, 0.5),
        _ => (0.825, 0.55),
    };
    assert!(
        (gate["min_mean_top1"].as_f64().unwrap() - mean).abs() < 1e-6,
        "{variant} on {cpu}: {gate}"
    );
    assert!(
        (gate["min_token_top1"].as_f64().unwrap() - floor).abs() < 1e-6,
        "{variant} on {cpu}: {gate}"
    );
    #[cfg(target_arch = "x86_64")]
    {
        let imported_fast = imported_int4_fast(model);
        let avx512 = cpu.starts_with("x86-64-avx512");
        let expected = match (imported_fast, avx512, cpu) {
            (true, false, _) | (true, true, "x86-64-avx512-vnni" | "x86-64-avx512") => "int4-fast",
            (_, true, _) => "int4",
            (false, false, _) => "fp32",
        };
        assert_eq!(variant, expected, "on {cpu}");
    }

    // And it answers over the OpenAI API with that graph.
    let reply = post_json(
        &format!("{}/v1/chat/completions", edge.http_url()),
        &json!({
            "model": "tiergate", "max_tokens": 12, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of Japan?"}],
        }),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json().unwrap();
    let answer = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(answer.contains("Tokyo"), "{answer:?}");
    cpu.to_owned()
}

/// Whether the import kept the int4-fast graph (where it met its parity budget on that CPU).
fn imported_int4_fast(model: &Path) -> bool {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("manifest.json")).unwrap())
            .unwrap();
    manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .any(|file| file["variant"] == "int4-fast")
}

/// `tiergate generate --variant auto`, the engine alone, gates nothing: it runs the fastest graph
/// on this CPU, int4-fast on x86-64 wherever the import kept it, with AVX-512 too.
#[test]
fn generate_auto_runs_the_fastest_graph_here() {
    let Some(model) = real_model_dir() else {
        return;
    };
    let output = std::process::Command::new(tiergate_bin())
        .current_dir(repo_root())
        .args(["generate", "--model", model.to_str().unwrap()])
        .args(["--variant", "auto", "--max-tokens", "8", "--json"])
        .arg("What is the capital of Japan?")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let variant = json["model"]["variant"].as_str().unwrap();
    if cfg!(target_arch = "x86_64") && imported_int4_fast(&model) {
        assert_eq!(variant, "int4-fast");
    } else {
        // Without int4-fast: fp32 without AVX-512, int4 with it and off x86-64.
        assert!(["fp32", "int4"].contains(&variant), "{variant}");
    }
    assert!(json["text"].as_str().unwrap().contains("Tokyo"), "{json}");
}
