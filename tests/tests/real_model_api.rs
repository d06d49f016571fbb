//! The OpenAI API on the real edge model (SmolLM2-135M-Instruct, int4): `/v1/completions` is raw
//! text continued as is (no chat template), `/v1/chat/completions` renders the model's own chat
//! template. Skips without `TIERGATE_REAL_MODEL` unless `TIERGATE_REQUIRE_REAL_MODEL=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use tiergate_e2e::{NodeProcess, post_json, real_model_dir};

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
