//! OpenAI `logprobs` / `top_logprobs` through the user's interface: chat completions whole and
//! streamed from the edge model, and carried unchanged over the regional hop (gRPC) and from a
//! cloud provider (OpenAI wire format), compared with what those tiers answer directly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use tiergate_e2e::{Cluster, Gate, NodeProcess, node_toml, post_json};

fn chat(logprobs: Value, top: Value, stream: bool, constraint: &str) -> Value {
    json!({
        "model": "tiergate",
        "max_tokens": 12,
        "stream": stream,
        "logprobs": logprobs,
        "top_logprobs": top,
        "messages": [{"role": "user", "content": "turn on the kitchen lights"}],
        "tiergate": {"tier_constraint": constraint},
    })
}

/// The whole answer's text, tier and `logprobs.content`.
async fn whole(node: &NodeProcess, body: &Value) -> (String, String, Vec<Value>) {
    let reply = post_json(&format!("{}/v1/chat/completions", node.http_url()), body)
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let value = reply.json().unwrap();
    let choice = &value["choices"][0];
    let content = choice["logprobs"]["content"].as_array().cloned();
    let content = content.unwrap_or_else(|| panic!("no logprobs.content in {value}"));
    let usage = value["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(content.len() as u64, usage, "one entry per generated token");
    let text = choice["message"]["content"].as_str().unwrap().to_owned();
    (
        text,
        value["tiergate"]["tier"].as_str().unwrap().to_owned(),
        content,
    )
}

/// The streamed answer's text and every chunk's `logprobs.content`, in order.
async fn streamed(node: &NodeProcess, body: &Value) -> (String, Vec<Value>) {
    let reply = post_json(&format!("{}/v1/chat/completions", node.http_url()), body)
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let (mut text, mut content) = (String::new(), Vec::new());
    for line in reply
        .text()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
    {
        if line == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(line).unwrap();
        let choice = &chunk["choices"][0];
        text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        if let Some(tokens) = choice["logprobs"]["content"].as_array() {
            content.extend(tokens.iter().cloned());
        }
    }
    (text, content)
}

fn logprob(entry: &Value) -> f64 {
    entry["logprob"].as_f64().unwrap()
}

fn bytes(entry: &Value) -> Vec<u8> {
    let list = entry["bytes"].as_array().unwrap();
    list.iter().map(|b| b.as_u64().unwrap() as u8).collect()
}

/// Greedy answers: every logprob <= 0, the alternatives sorted with at most probability 1 in
/// all, the chosen token is the first alternative, and the tokens' bytes spell the text (the
/// end-of-answer token's own bytes aside).
fn check_greedy(text: &str, content: &[Value], k: usize) {
    assert!(!content.is_empty());
    for entry in content {
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), k, "{entry}");
        assert!(logprob(entry) <= 0.0, "{entry}");
        assert!(
            top.windows(2).all(|w| logprob(&w[0]) >= logprob(&w[1])),
            "{entry}"
        );
        let mass: f64 = top.iter().map(|t| logprob(t).exp()).sum();
        assert!(mass <= 1.0 + 1e-4, "{entry}");
        assert_eq!(entry["token"], top[0]["token"], "{entry}");
        assert_eq!(logprob(entry), logprob(&top[0]), "{entry}");
        assert_eq!(
            String::from_utf8_lossy(&bytes(entry)),
            entry["token"].as_str().unwrap()
        );
    }
    let spelled: Vec<u8> = content.iter().flat_map(bytes).collect();
    let spelled = String::from_utf8_lossy(&spelled).into_owned();
    assert!(
        spelled == text || spelled == format!("{text}<|end|>"),
        "{spelled:?} vs {text:?}"
    );
}

/// Same tokens, same values (to float printing), in the same order.
fn same(a: &[Value], b: &[Value]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x["token"], y["token"]);
        assert!((logprob(x) - logprob(y)).abs() < 1e-5, "{x} vs {y}");
        let names = |v: &Value| {
            v["top_logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["token"].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(x), names(y));
    }
}

#[tokio::test]
async fn the_edge_model_serves_logprobs_whole_and_streamed_and_refuses_bad_asks() {
    let toml = node_toml("edge-1", "edge", "edge", None, None, Gate::Commit);
    let node = NodeProcess::start("edge", &toml).await.unwrap();
    let (text, tier, content) = whole(&node, &chat(json!(true), json!(3), false, "none")).await;
    assert_eq!(tier, "edge");
    check_greedy(&text, &content, 3);
    let (streamed_text, streamed_content) =
        streamed(&node, &chat(json!(true), json!(3), true, "none")).await;
    assert_eq!(streamed_text, text);
    same(&content, &streamed_content);

    // logprobs alone: the chosen tokens, no alternatives; not asked: `logprobs` is null.
    let (_, _, bare) = whole(&node, &chat(json!(true), Value::Null, false, "none")).await;
    assert!(bare.iter().all(|e| e["top_logprobs"] == json!([])));
    let url = format!("{}/v1/chat/completions", node.http_url());
    let plain = post_json(&url, &chat(Value::Null, Value::Null, false, "none"))
        .await
        .unwrap();
    assert_eq!(plain.json().unwrap()["choices"][0]["logprobs"], Value::Null);

    for (body, param) in [
        (
            chat(json!(true), json!(21), false, "none"),
            "`top_logprobs`",
        ),
        (
            chat(json!(false), json!(2), false, "none"),
            "`top_logprobs`",
        ),
        (chat(Value::Null, json!(2), true, "none"), "`top_logprobs`"),
        (chat(json!("yes"), Value::Null, false, "none"), "`logprobs`"),
    ] {
        let reply = post_json(&url, &body).await.unwrap();
        assert_eq!(reply.status, 400, "{body}");
        assert!(reply.text().contains(param), "{}", reply.text());
    }
    let legacy = json!({"model": "tiergate", "prompt": "hello", "logprobs": 2});
    let reply = post_json(&format!("{}/v1/completions", node.http_url()), &legacy)
        .await
        .unwrap();
    assert_eq!(reply.status, 400);
    assert!(reply.text().contains("`logprobs`"), "{}", reply.text());
}

#[tokio::test]
async fn logprobs_cross_the_regional_hop_and_come_back_from_the_cloud_unchanged() {
    let cluster = Cluster::start(Gate::RegionalFirst, Gate::Commit)
        .await
        .unwrap();
    let regional = cluster.regional.as_ref().unwrap();
    let cloud = cluster.cloud.as_ref().unwrap();
    for (constraint, tier, source) in [
        ("none", "regional", regional),
        ("at_least_cloud", "cloud", cloud),
    ] {
        // What that tier answers when asked directly, pinned to its own model.
        let direct = chat(json!(true), json!(2), false, "edge_only");
        let (direct_text, _, direct_content) = whole(source, &direct).await;
        let body = chat(json!(true), json!(2), false, constraint);
        let (text, served_by, content) = whole(&cluster.edge, &body).await;
        assert_eq!(served_by, tier);
        assert_eq!(text, direct_text);
        same(&content, &direct_content);
        let body = chat(json!(true), json!(2), true, constraint);
        let (streamed_text, streamed_content) = streamed(&cluster.edge, &body).await;
        assert_eq!(streamed_text, text, "{tier}");
        same(&content, &streamed_content);
    }
}
