//! Bad input on both APIs of a real node: each case gets the right status and a message that
//! says what is wrong; nothing panics, hangs or is silently truncated.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use tiergate_e2e::{Gate, NodeProcess, get, http_send, metric, metrics_text, node_toml, post_json};
use tiergate_proto::v1 as pb;

const LIMITS: &str = "[limits]\nmax_body_bytes = 4096\nmax_new_tokens = 64\n";

async fn edge() -> NodeProcess {
    let toml = node_toml("edge-1", "edge", "edge", None, None, Gate::Default) + LIMITS;
    NodeProcess::start("edge", &toml).await.unwrap()
}

fn chat(extra: Value) -> Value {
    let mut body = json!({
        "model": "tiergate",
        "messages": [{"role": "user", "content": "turn on the kitchen lights"}],
        "max_tokens": 4,
    });
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    body
}

#[tokio::test]
async fn http_rejects_bad_requests_with_the_right_status_and_a_message() {
    let node = edge().await;
    let chat_url = format!("{}/v1/chat/completions", node.http_url());
    let completions_url = format!("{}/v1/completions", node.http_url());
    let json_cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        (
            "wrong type",
            "chat",
            chat(json!({"max_tokens": "ten"})),
            400,
            "max_tokens",
        ),
        (
            "messages not a list",
            "chat",
            chat(json!({"messages": "hi"})),
            400,
            "messages",
        ),
        (
            "unknown model",
            "chat",
            chat(json!({"model": "gpt-9"})),
            400,
            "unknown model",
        ),
        (
            "missing model",
            "chat",
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            400,
            "model",
        ),
        (
            "empty messages",
            "chat",
            chat(json!({"messages": []})),
            400,
            "empty",
        ),
        (
            "no user message",
            "chat",
            chat(json!({"messages": [{"role": "assistant", "content": "hi"}]})),
            400,
            "user message",
        ),
        (
            "unknown role",
            "chat",
            chat(json!({"messages": [{"role": "tool", "content": "x"}]})),
            400,
            "role",
        ),
        (
            "image part",
            "chat",
            chat(json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})),
            400,
            "only text",
        ),
        (
            "max_tokens beyond the limit",
            "chat",
            chat(json!({"max_tokens": 65})),
            400,
            "exceeds",
        ),
        (
            "max_tokens zero",
            "chat",
            chat(json!({"max_tokens": 0})),
            400,
            "at least 1",
        ),
        ("n above one", "chat", chat(json!({"n": 2})), 400, "`n`"),
        (
            "temperature out of range",
            "chat",
            chat(json!({"temperature": 3.0})),
            400,
            "temperature",
        ),
        (
            "unknown tier constraint",
            "chat",
            chat(json!({"tiergate": {"tier_constraint": "moon"}})),
            400,
            "unknown tier constraint",
        ),
        ("tools", "chat", chat(json!({"tools": []})), 400, "tools"),
        (
            "a JSON mode it would not enforce",
            "chat",
            chat(json!({"response_format": {"type": "json_object"}})),
            400,
            "`response_format`",
        ),
        (
            "more alternatives than OpenAI allows",
            "chat",
            chat(json!({"logprobs": true, "top_logprobs": 25})),
            400,
            "`top_logprobs`",
        ),
        (
            "penalties",
            "chat",
            chat(json!({"presence_penalty": 0.5})),
            400,
            "`presence_penalty`",
        ),
        (
            "an echoed prompt",
            "completions",
            json!({"model": "tiergate", "prompt": "hi", "echo": true}),
            400,
            "`echo`",
        ),
        (
            "several candidates",
            "completions",
            json!({"model": "tiergate", "prompt": "hi", "best_of": 3}),
            400,
            "`best_of`",
        ),
        (
            "an insertion suffix",
            "completions",
            json!({"model": "tiergate", "prompt": "hi", "suffix": "end"}),
            400,
            "`suffix`",
        ),
        (
            "two prompts",
            "completions",
            json!({"model": "tiergate", "prompt": ["a", "b"]}),
            400,
            "one prompt",
        ),
        (
            "empty prompt",
            "completions",
            json!({"model": "tiergate", "prompt": " "}),
            400,
            "empty",
        ),
    ];
    for (name, endpoint, body, status, needle) in json_cases {
        let url = if endpoint == "chat" {
            &chat_url
        } else {
            &completions_url
        };
        let reply = post_json(url, &body).await.unwrap();
        assert_eq!(reply.status.as_u16(), status, "{name}: {}", reply.text());
        let error = reply.json().unwrap();
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{name}: {message}");
        assert_eq!(error["error"]["code"], status, "{name}");
    }

    // At the limit is fine; the limit is inclusive.
    let reply = post_json(&chat_url, &chat(json!({"max_tokens": 64})))
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());

    let raw_cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "malformed JSON",
            b"{\"model\": ".to_vec(),
            400,
            "malformed JSON",
        ),
        ("empty body", Vec::new(), 400, "empty"),
        ("not an object", b"[1, 2]".to_vec(), 400, "invalid request"),
        (
            "oversized body",
            vec![b' '; 5000],
            413,
            "exceeds the limit of 4096 bytes",
        ),
    ];
    for (name, body, status, needle) in raw_cases {
        let reply = http_send(
            http::Method::POST,
            &chat_url,
            &[("content-type", "application/json")],
            body,
        )
        .await
        .unwrap();
        assert_eq!(reply.status.as_u16(), status, "{name}: {}", reply.text());
        assert!(reply.text().contains(needle), "{name}: {}", reply.text());
    }

    let header_case = http_send(
        http::Method::POST,
        &chat_url,
        &[
            ("content-type", "application/json"),
            ("x-tiergate-tier-constraint", "moon"),
        ],
        serde_json::to_vec(&chat(json!({}))).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(header_case.status, 400);

    // Only JSON bodies: a web page can post text/plain or a form to a loopback node without
    // a CORS preflight, never application/json.
    let valid_chat = serde_json::to_vec(&chat(json!({}))).unwrap();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let headers: Vec<(&str, &str)> = content_type
            .map(|t| ("content-type", t))
            .into_iter()
            .collect();
        let reply = http_send(
            http::Method::POST,
            &completions_url,
            &headers,
            valid_chat.clone(),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 415, "{content_type:?}: {}", reply.text());
        assert!(
            reply.text().contains("application/json"),
            "{}",
            reply.text()
        );
    }
    let charset = http_send(
        http::Method::POST,
        &chat_url,
        &[("content-type", "Application/JSON; charset=utf-8")],
        valid_chat,
    )
    .await
    .unwrap();
    assert_eq!(charset.status, 200, "{}", charset.text());

    assert_eq!(get(&chat_url).await.unwrap().status, 405);
    assert_eq!(
        get(&format!("{}/v2/nothing", node.http_url()))
            .await
            .unwrap()
            .status,
        404
    );

    // The node still serves after all of that.
    let reply = post_json(&chat_url, &chat(json!({}))).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn grpc_rejects_bad_requests_with_invalid_argument() {
    let node = edge().await;
    let mut client = node.grpc_client().await.unwrap();
    let base = || pb::GenerateRequest {
        prompt: "turn on the kitchen lights".to_owned(),
        params: Some(pb::GenerationParams {
            max_new_tokens: 4,
            ..Default::default()
        }),
        ..Default::default()
    };
    let long_prompt = "please tell me about the weather and the lights ".repeat(60);
    let cases: Vec<(&str, pb::GenerateRequest, &str)> = vec![
        ("empty request", pb::GenerateRequest::default(), "empty"),
        (
            "blank prompt",
            pb::GenerateRequest {
                prompt: "   ".into(),
                ..base()
            },
            "blank",
        ),
        (
            "prompt and messages",
            pb::GenerateRequest {
                messages: vec![pb::ChatMessage {
                    role: "user".into(),
                    content: "x".into(),
                }],
                ..base()
            },
            "not both",
        ),
        (
            "bad role",
            pb::GenerateRequest {
                prompt: String::new(),
                messages: vec![pb::ChatMessage {
                    role: "robot".into(),
                    content: "x".into(),
                }],
                ..base()
            },
            "role",
        ),
        (
            "max_new_tokens beyond the limit",
            pb::GenerateRequest {
                params: Some(pb::GenerationParams {
                    max_new_tokens: 65,
                    ..Default::default()
                }),
                ..base()
            },
            "exceeds",
        ),
        (
            "unknown tier constraint",
            pb::GenerateRequest {
                tier_constraint: 42,
                ..base()
            },
            "tier constraint",
        ),
        (
            "an unknown model",
            pb::GenerateRequest {
                model: "gpt-nope".into(),
                ..base()
            },
            "unknown model `gpt-nope`; this node serves: tiergate",
        ),
        (
            "the local model, but the cloud asked for",
            pb::GenerateRequest {
                model: "tiergate-edge".into(),
                tier_constraint: pb::TierConstraint::AtLeastCloud as i32,
                ..base()
            },
            "local model",
        ),
        (
            "prompt longer than the local context, pinned to the edge",
            pb::GenerateRequest {
                prompt: long_prompt,
                tier_constraint: pb::TierConstraint::EdgeOnly as i32,
                ..base()
            },
            "context",
        ),
    ];
    let rejected_before = rejections(&node).await;
    let refused = cases.len();
    let mut refused_explains = 0;
    for (name, request, needle) in cases {
        let status = client.generate(request.clone()).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{name}: {status:?}"
        );
        assert!(
            status.message().contains(needle),
            "{name}: {}",
            status.message()
        );
        let status = client.explain(request).await;
        if let Err(status) = status {
            assert_ne!(status.code(), tonic::Code::Internal, "{name}: {status:?}");
            refused_explains += 1;
        }
    }

    // Each refused call is counted, as HTTP counts its own.
    assert_eq!(
        rejections(&node).await - rejected_before,
        (refused + refused_explains) as f64
    );
    // Naming the local model pins the request to this node, as on HTTP.
    let pinned = client
        .generate(pb::GenerateRequest {
            model: "tiergate-edge".into(),
            ..base()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pinned.routing.unwrap().tier, pb::Tier::Edge as i32);

    // A message over the size limit is refused by the transport, not half-read.
    let huge = pb::GenerateRequest {
        prompt: "x".repeat(10_000),
        ..base()
    };
    let status = client.generate(huge).await.unwrap_err();
    assert!(
        matches!(
            status.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::InvalidArgument
        ),
        "{status:?}"
    );

    // Still serving.
    assert!(client.generate(base()).await.is_ok());
}

#[tokio::test]
async fn probes_models_and_metrics_speak_their_formats() {
    let node = edge().await;
    assert_eq!(
        get(&format!("{}/healthz", node.http_url()))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        get(&format!("{}/readyz", node.http_url()))
            .await
            .unwrap()
            .status,
        200
    );
    let models = get(&format!("{}/v1/models", node.http_url()))
        .await
        .unwrap()
        .json()
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"tiergate"), "{ids:?}");
    // One model by id, as the OpenAI SDKs' models.retrieve() asks for it.
    let one = get(&format!("{}/v1/models/tiergate", node.http_url()))
        .await
        .unwrap();
    assert_eq!(one.status, 200);
    let one = one.json().unwrap();
    assert_eq!(
        (one["id"].as_str(), one["object"].as_str()),
        (Some("tiergate"), Some("model"))
    );
    let missing = get(&format!("{}/v1/models/gpt-nope", node.http_url()))
        .await
        .unwrap();
    assert_eq!(missing.status, 404);
    assert!(
        missing.text().contains("tiergate"),
        "names the models there are"
    );

    // Neutral values of unsupported fields, as SDKs send them by default, are accepted.
    let url = format!("{}/v1/chat/completions", node.http_url());
    let neutral = chat(json!({
        "response_format": {"type": "text"}, "logprobs": false, "presence_penalty": 0,
        "frequency_penalty": 0, "user": "alice", "metadata": {"k": "v"},
    }));
    assert_eq!(post_json(&url, &neutral).await.unwrap().status, 200);

    let url = format!("{}/v1/chat/completions", node.http_url());
    assert_eq!(post_json(&url, &chat(json!({}))).await.unwrap().status, 200);
    assert_eq!(
        post_json(&url, &chat(json!({"model": "nope"})))
            .await
            .unwrap()
            .status,
        400
    );

    let reply = get(&format!("{}/metrics", node.http_url())).await.unwrap();
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = reply.text();
    assert!(
        text.contains("# TYPE tiergate_requests_total counter"),
        "{text}"
    );
    assert!(text.contains("outcome=\"ok\""), "{text}");
    assert!(text.contains("outcome=\"invalid_request\""), "{text}");
    assert!(
        text.contains("tiergate_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains("tiergate_process_resident_memory_bytes"),
        "{text}"
    );
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(line.starts_with("tiergate_"), "unprefixed metric: {line}");
    }
}

/// Requests the node refused as invalid, from its /metrics.
async fn rejections(node: &NodeProcess) -> f64 {
    let text = metrics_text(node).await.unwrap();
    metric(
        &text,
        "tiergate_requests_total",
        &[("tier", "none"), ("outcome", "invalid_request")],
    )
    .unwrap_or(0.0)
}
