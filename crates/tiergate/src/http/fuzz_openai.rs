//! Property-based fuzzing of the OpenAI request parser (`parse_chat`, `parse_completion`) on a
//! stable toolchain: proptest generates raw bytes, arbitrary JSON over the fields the parser
//! knows, and near-valid requests with one field mutated. Properties: no input panics; every
//! refusal is `NodeError::InvalidArgument` (a 400 naming the problem); every accepted request
//! holds the limits the parser promises (so later stages may rely on them).
//!
//! `make test` runs a few hundred cases per property; `scripts/fuzz.sh` runs many more
//! (PROPTEST_CASES). Inputs that once failed are kept as plain tests at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use proptest::prelude::*;
use serde_json::{Map, Value};
use tiergate_router::tier::Tier;

use super::openai_request::{ParseContext, ParsedRequest, parse_chat, parse_completion};
use crate::node::{Input, Limits, ModelCard, NodeError, Role};

/// Cases per property: PROPTEST_CASES when set (scripts/fuzz.sh), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const KEYS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "prompt",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "include_usage",
    "n",
    "tools",
    "tiergate",
    "tier_constraint",
    "type",
    "text",
    "user",
    "metadata",
    "response_format",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "echo",
    "best_of",
    "suffix",
];

const WORDS: &[&str] = &[
    "tiergate",
    "tiergate-edge",
    "user",
    "system",
    "assistant",
    "developer",
    "tool",
    "text",
    "image_url",
    "edge_only",
    "at_most_regional",
    "at_least_cloud",
    "none",
    "",
    " ",
    "\u{0}",
    "é",
    "json_object",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u32..1100).prop_map(Value::from),
        (-3.0f64..3.0).prop_map(Value::from),
        any::<f64>().prop_filter_map("JSON has no NaN or infinity", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
        prop::sample::select(WORDS).prop_map(Value::from),
        ".{0,16}".prop_map(Value::String),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(KEYS).prop_map(str::to_owned),
        1 => "[a-z_]{0,8}",
    ]
}

fn json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..7)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A plausible message: a known or odd role, string or parts content.
fn message() -> impl Strategy<Value = Value> {
    let content = prop_oneof![
        ".{0,24}".prop_map(Value::String),
        prop::collection::vec(
            (prop::sample::select(WORDS), ".{0,8}")
                .prop_map(|(kind, text)| { serde_json::json!({"type": kind, "text": text}) }),
            0..3
        )
        .prop_map(Value::Array),
        json(),
    ];
    (prop::sample::select(WORDS), content)
        .prop_map(|(role, content)| serde_json::json!({"role": role, "content": content}))
}

/// A valid-looking chat or completion body with some fields replaced by arbitrary values.
fn near_valid(chat: bool) -> impl Strategy<Value = Value> {
    let body = if chat {
        prop::collection::vec(message(), 0..4)
            .prop_map(|messages| serde_json::json!({"model": "tiergate", "messages": messages}))
            .boxed()
    } else {
        prop_oneof![
            ".{0,24}".prop_map(|p| serde_json::json!({"model": "tiergate", "prompt": p})),
            json().prop_map(|p| serde_json::json!({"model": "tiergate", "prompt": p})),
        ]
        .boxed()
    };
    (body, prop::collection::vec((key(), json()), 0..4)).prop_map(|(mut body, changes)| {
        if let Value::Object(fields) = &mut body {
            for (key, value) in changes {
                fields.insert(key, value);
            }
        }
        body
    })
}

/// Raw bytes, arbitrary JSON, or a near-valid body, serialised.
fn body(chat: bool) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..64),
        2 => json().prop_map(|v| v.to_string().into_bytes()),
        4 => near_valid(chat).prop_map(|v| v.to_string().into_bytes()),
    ]
}

fn models() -> Vec<ModelCard> {
    vec![
        ModelCard {
            id: "tiergate".to_owned(),
            tier: Tier::Edge,
            local: false,
        },
        ModelCard {
            id: "tiergate-edge".to_owned(),
            tier: Tier::Edge,
            local: true,
        },
    ]
}

fn header() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop::sample::select(WORDS).prop_map(str::to_owned))
}

/// The contract: no panic (proptest reports one as a failure), refusals are 400s, accepted
/// requests are within the limits.
fn check(result: Result<ParsedRequest, NodeError>, limits: &Limits) -> Result<(), TestCaseError> {
    let parsed = match result {
        Ok(parsed) => parsed,
        Err(NodeError::InvalidArgument(message)) => {
            prop_assert!(!message.is_empty());
            return Ok(());
        }
        Err(other) => return Err(TestCaseError::fail(format!("not a 400: {other:?}"))),
    };
    let sampling = &parsed.request.sampling;
    prop_assert!(sampling.max_new_tokens >= 1 && sampling.max_new_tokens <= limits.max_new_tokens);
    prop_assert!(
        sampling
            .temperature
            .is_none_or(|t| (0.0..=2.0).contains(&t))
    );
    prop_assert!(sampling.top_p.is_none_or(|p| p > 0.0 && p <= 1.0));
    prop_assert!(sampling.stop.len() <= limits.max_stop_sequences);
    prop_assert!(sampling.stop.iter().all(|s| !s.is_empty()));
    prop_assert!(models().iter().any(|m| m.id == parsed.model));
    match &parsed.request.input {
        Input::Text(text) => prop_assert!(!text.trim().is_empty()),
        Input::Chat(messages) => {
            prop_assert!(messages.len() <= limits.max_messages);
            prop_assert!(
                messages
                    .iter()
                    .any(|m| m.role == Role::User && !m.content.trim().is_empty())
            );
        }
    }
    Ok(())
}

fn parse(chat: bool, body: &[u8], header: Option<&str>) -> Result<ParsedRequest, NodeError> {
    let limits = Limits::default();
    let models = models();
    let ctx = ParseContext {
        limits: &limits,
        models: &models,
        header_constraint: header,
        request_id: "fuzz".to_owned(),
        trace: tiergate_upstream::TraceContext::fresh(),
        now: Instant::now(),
    };
    if chat {
        parse_chat(body, &ctx)
    } else {
        parse_completion(body, &ctx)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(512)))]

    #[test]
    fn chat_bodies_never_panic_and_refuse_with_400(body in body(true), header in header()) {
        check(parse(true, &body, header.as_deref()), &Limits::default())?;
    }

    #[test]
    fn completion_bodies_never_panic_and_refuse_with_400(body in body(false), header in header()) {
        check(parse(false, &body, header.as_deref()), &Limits::default())?;
    }
}

/// The smallest bodies that reach each branch once, so a regression shows even with few cases.
#[test]
fn known_edge_cases() {
    let cases: &[(bool, &str)] = &[
        (true, ""),
        (true, "[]"),
        (true, "{\"model\":\"tiergate\",\"messages\":[]}"),
        (
            true,
            "{\"model\":\"tiergate\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]}",
        ),
        (
            true,
            "{\"model\":\"tiergate\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":4294967295}",
        ),
        (false, "{\"model\":\"tiergate\",\"prompt\":[]}"),
        (false, "{\"model\":\"tiergate\",\"prompt\":[\"a\",\"b\"]}"),
        (
            false,
            "{\"model\":\"tiergate\",\"prompt\":\"x\",\"stop\":[\"\"],\"temperature\":1e308}",
        ),
    ];
    for (chat, body) in cases {
        check(parse(*chat, body.as_bytes(), None), &Limits::default())
            .unwrap_or_else(|e| panic!("{body}: {e}"));
    }
}
