//! OpenAI wire format, responses: completion objects, streaming chunks and error bodies, each
//! with tiergate's routing details in an extra `tiergate` field.

use serde_json::{Value, json};

use crate::node::{Answer, FinishReason, NodeError, RoutingInfo, TokenLogprob};

/// Which endpoint a response belongs to; the two differ only in object names and text fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    fn object(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat.completion",
            Endpoint::Completions => "text_completion",
        }
    }

    fn chunk_object(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completions => "text_completion",
        }
    }

    fn id_prefix(self) -> &'static str {
        match self {
            Endpoint::Chat => "chatcmpl-",
            Endpoint::Completions => "cmpl-",
        }
    }
}

/// The identity shared by every chunk of one response.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
    /// The request asked for log-probabilities (chat only): choices carry `logprobs.content`.
    pub logprobs: bool,
}

impl ResponseMeta {
    pub fn new(endpoint: Endpoint, request_id: &str, model: String) -> Self {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        ResponseMeta {
            endpoint,
            id: format!("{}{request_id}", endpoint.id_prefix()),
            created,
            model,
            logprobs: false,
        }
    }
}

/// OpenAI knows only "stop" and "length"; a deadline or latency-budget cut is a length cut to
/// its clients, and the exact reason is in the `tiergate` field (`finish_reason`,
/// `budget_stop`).
fn openai_finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::Deadline | FinishReason::LatencyBudget => "length",
    }
}

/// The `tiergate` field: routing, finish reason and timings.
pub fn tiergate_field(answer: &Answer) -> Value {
    let mut value = routing_field(&answer.routing);
    if let Value::Object(map) = &mut value {
        map.insert("finish_reason".into(), json!(answer.finish_reason.as_str()));
        if let Some(budget) = answer.finish_reason.budget_stop() {
            map.insert("budget_stop".into(), json!(budget));
        }
        map.insert(
            "time_to_first_token_seconds".into(),
            json!(answer.time_to_first_token.as_secs_f64()),
        );
        map.insert(
            "total_seconds".into(),
            json!(answer.total_time.as_secs_f64()),
        );
    }
    value
}

fn routing_field(routing: &RoutingInfo) -> Value {
    serde_json::to_value(routing).unwrap_or(Value::Null)
}

fn usage_field(answer: &Answer) -> Value {
    json!({
        "prompt_tokens": answer.usage.prompt_tokens,
        "completion_tokens": answer.usage.completion_tokens,
        "total_tokens": answer.usage.prompt_tokens + answer.usage.completion_tokens,
    })
}

/// OpenAI's `choices[].logprobs` of a chat answer: `{"content": [{token, logprob, bytes,
/// top_logprobs}]}` when the request asked, `null` otherwise.
fn logprobs_field(meta: &ResponseMeta, tokens: &[TokenLogprob]) -> Value {
    if !meta.logprobs {
        return Value::Null;
    }
    let entry =
        |t: &TokenLogprob| json!({"token": t.token, "logprob": t.logprob, "bytes": t.bytes});
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut value = entry(t);
            if let Value::Object(map) = &mut value {
                let top: Vec<Value> = t.top_logprobs.iter().map(entry).collect();
                map.insert("top_logprobs".into(), Value::Array(top));
            }
            value
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// The whole non-streamed response body.
pub fn completion(meta: &ResponseMeta, answer: &Answer) -> Value {
    let finish = openai_finish_reason(answer.finish_reason);
    let choice = match meta.endpoint {
        Endpoint::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": answer.text},
            "logprobs": logprobs_field(meta, &answer.logprobs),
            "finish_reason": finish,
        }),
        Endpoint::Completions => json!({
            "index": 0,
            "text": answer.text,
            "logprobs": null,
            "finish_reason": finish,
        }),
    };
    json!({
        "id": meta.id,
        "object": meta.endpoint.object(),
        "created": meta.created,
        "model": meta.model,
        "choices": [choice],
        "usage": usage_field(answer),
        "tiergate": tiergate_field(answer),
    })
}

fn chunk(meta: &ResponseMeta, choice: Value) -> Value {
    json!({
        "id": meta.id,
        "object": meta.endpoint.chunk_object(),
        "created": meta.created,
        "model": meta.model,
        "choices": [choice],
    })
}

/// The first chunk of a chat stream announces the assistant role (as OpenAI does).
pub fn role_chunk(meta: &ResponseMeta, routing: &RoutingInfo) -> Option<Value> {
    match meta.endpoint {
        Endpoint::Chat => {
            let mut value = chunk(
                meta,
                json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}),
            );
            if let Value::Object(map) = &mut value {
                map.insert("tiergate".into(), routing_field(routing));
            }
            Some(value)
        }
        Endpoint::Completions => None,
    }
}

/// A chunk carrying new text (and its tokens' log-probabilities, when asked for).
pub fn delta_chunk(meta: &ResponseMeta, text: &str, logprobs: &[TokenLogprob]) -> Value {
    match meta.endpoint {
        Endpoint::Chat => chunk(
            meta,
            json!({
                "index": 0,
                "delta": {"content": text},
                "logprobs": logprobs_field(meta, logprobs),
                "finish_reason": null,
            }),
        ),
        Endpoint::Completions => chunk(
            meta,
            json!({"index": 0, "text": text, "finish_reason": null}),
        ),
    }
}

/// The last content chunk: the finish reason and the `tiergate` field.
pub fn final_chunk(meta: &ResponseMeta, answer: &Answer) -> Value {
    let finish = openai_finish_reason(answer.finish_reason);
    let choice = match meta.endpoint {
        Endpoint::Chat => json!({"index": 0, "delta": {}, "finish_reason": finish}),
        Endpoint::Completions => json!({"index": 0, "text": "", "finish_reason": finish}),
    };
    let mut value = chunk(meta, choice);
    if let Value::Object(map) = &mut value {
        map.insert("tiergate".into(), tiergate_field(answer));
    }
    value
}

/// With `stream_options.include_usage`, a last chunk with no choices and the usage.
pub fn usage_chunk(meta: &ResponseMeta, answer: &Answer) -> Value {
    json!({
        "id": meta.id,
        "object": meta.endpoint.chunk_object(),
        "created": meta.created,
        "model": meta.model,
        "choices": [],
        "usage": usage_field(answer),
    })
}

/// The OpenAI error body.
pub fn error_body(err: &NodeError) -> Value {
    json!({
        "error": {
            "message": err.to_string(),
            "type": err.as_label(),
            "param": null,
            "code": err.http_status().as_u16(),
        }
    })
}
