//! The OpenAI chat-completions wire format, as far as the cloud client speaks it:
//! the request built from the node's [`NodeRequest`], the JSON answer, the streamed
//! chunks and the error body.

use serde::{Deserialize, Serialize};
use tiergate_api::{Input, NodeRequest, Role, TokenLogprob, Usage};

use crate::error::{ErrorKind, UpstreamError};

#[derive(Debug, Serialize)]
pub(crate) struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    /// Sent only when the client asked: some OpenAI-compatible providers refuse the fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_logprobs: Option<u32>,
}

#[derive(Debug, Serialize)]
struct WireMessage<'a> {
    role: Role,
    content: &'a str,
}

#[derive(Debug, Serialize)]
struct StreamOptions {
    include_usage: bool,
}

impl<'a> ChatRequest<'a> {
    /// The provider request for `request`, answered by `model`. Raw text (the completions API)
    /// becomes one user message: chat-completions has no raw mode. `top_k` is not part of the
    /// OpenAI API (OpenAI rejects unknown fields), so it is not sent.
    pub(crate) fn from_node(request: &'a NodeRequest, model: &'a str, stream: bool) -> Self {
        let messages = match &request.input {
            Input::Text(text) => vec![WireMessage {
                role: Role::User,
                content: text,
            }],
            Input::Chat(messages) => messages
                .iter()
                .map(|m| WireMessage {
                    role: m.role,
                    content: &m.content,
                })
                .collect(),
        };
        let sampling = &request.sampling;
        Self {
            model,
            messages,
            max_tokens: Some(sampling.max_new_tokens).filter(|&n| n > 0),
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            seed: sampling.seed,
            stop: &sampling.stop,
            stream,
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
            logprobs: sampling.logprobs.map(|_| true),
            top_logprobs: sampling.logprobs,
        }
    }
}

/// A whole answer from the cloud tier.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudCompletion {
    pub text: String,
    /// The provider's reason ("stop", "length", ...), when it gave one.
    pub finish_reason: Option<String>,
    /// Token counts, when the provider reported them.
    pub usage: Option<Usage>,
    /// The model the provider says answered.
    pub model: String,
    /// The tokens' log-probabilities, when asked for and the provider gave them.
    pub logprobs: Vec<TokenLogprob>,
}

/// OpenAI's `choices[].logprobs`: `{"content": [...]}` (content null when there is none).
#[derive(Debug, Default, Deserialize)]
struct WireLogprobs {
    #[serde(default)]
    content: Option<Vec<WireTokenLogprob>>,
}

#[derive(Debug, Deserialize)]
struct WireTokenLogprob {
    token: String,
    logprob: f32,
    /// Null when the token has no byte form; then the token's own UTF-8 stands in.
    #[serde(default)]
    bytes: Option<Vec<u8>>,
    #[serde(default)]
    top_logprobs: Vec<WireTokenLogprob>,
}

impl From<WireTokenLogprob> for TokenLogprob {
    fn from(t: WireTokenLogprob) -> Self {
        TokenLogprob {
            bytes: t.bytes.unwrap_or_else(|| t.token.clone().into_bytes()),
            token: t.token,
            logprob: t.logprob,
            top_logprobs: t.top_logprobs.into_iter().map(Self::from).collect(),
        }
    }
}

fn logprobs_of(wire: Option<WireLogprobs>) -> Vec<TokenLogprob> {
    (wire.and_then(|l| l.content).into_iter().flatten())
        .map(TokenLogprob::from)
        .collect()
}

#[derive(Debug, Deserialize)]
struct ChatResponse {
    #[serde(default)]
    model: String,
    choices: Vec<ResponseChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
struct ResponseChoice {
    message: ResponseMessage,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<WireLogprobs>,
}

#[derive(Debug, Deserialize)]
struct ResponseMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        }
    }
}

/// Parses a non-streamed answer.
pub(crate) fn parse_response(body: &[u8]) -> Result<CloudCompletion, UpstreamError> {
    let response: ChatResponse = serde_json::from_slice(body).map_err(|e| {
        UpstreamError::new(
            ErrorKind::Protocol,
            format!("bad chat completion JSON: {e}"),
        )
    })?;
    let choice =
        response.choices.into_iter().next().ok_or_else(|| {
            UpstreamError::new(ErrorKind::Protocol, "chat completion has no choices")
        })?;
    Ok(CloudCompletion {
        text: choice.message.content.unwrap_or_default(),
        finish_reason: choice.finish_reason,
        usage: response.usage.map(Usage::from),
        model: response.model,
        logprobs: logprobs_of(choice.logprobs),
    })
}

#[derive(Debug, Deserialize)]
struct ChatChunk {
    #[serde(default)]
    model: String,
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<ChunkDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<WireLogprobs>,
}

#[derive(Debug, Deserialize)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
}

/// What one streamed chunk carried.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ChunkUpdate {
    pub delta: Option<String>,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    pub model: Option<String>,
    /// The tokens of this chunk, when the provider sent logprobs.
    pub logprobs: Vec<TokenLogprob>,
}

/// Parses one `data:` payload of a stream (not `[DONE]`). An `error` object in the stream (some
/// providers report mid-stream failures that way) becomes a server error.
pub(crate) fn parse_chunk(data: &str) -> Result<ChunkUpdate, UpstreamError> {
    let chunk: ChatChunk = serde_json::from_str(data).map_err(|e| {
        UpstreamError::new(ErrorKind::Protocol, format!("bad stream chunk JSON: {e}"))
    })?;
    if let Some(error) = chunk.error {
        return Err(UpstreamError::new(
            ErrorKind::ServerError,
            format!("provider error in stream: {}", error_text(&error)),
        ));
    }
    let choice = chunk.choices.into_iter().next();
    let (delta, finish_reason, logprobs) = match choice {
        Some(c) => (
            c.delta.and_then(|d| d.content).filter(|t| !t.is_empty()),
            c.finish_reason,
            logprobs_of(c.logprobs),
        ),
        None => (None, None, Vec::new()),
    };
    Ok(ChunkUpdate {
        delta,
        finish_reason,
        logprobs,
        usage: chunk.usage.map(Usage::from),
        model: Some(chunk.model).filter(|m| !m.is_empty()),
    })
}

/// The provider's message from an error body: `{"error": {"message": ...}}`,
/// `{"error": "..."}`, or the body itself (shortened).
pub(crate) fn error_message(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(error) = value.get("error")
    {
        return error_text(error);
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    const MAX: usize = 512;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

fn error_text(error: &serde_json::Value) -> String {
    match error {
        serde_json::Value::String(s) => s.clone(),
        other => other
            .get("message")
            .and_then(|m| m.as_str())
            .map_or_else(|| other.to_string(), str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Instant;

    use tiergate_api::{Message, Sampling};

    use super::*;

    fn node_request(input: Input, sampling: Sampling) -> NodeRequest {
        NodeRequest::new(input, sampling, Instant::now())
    }

    #[test]
    fn raw_text_becomes_one_user_message_with_its_params() {
        let request = node_request(
            Input::Text("hello".into()),
            Sampling {
                max_new_tokens: 32,
                temperature: Some(0.5),
                top_k: Some(40),
                top_p: Some(0.9),
                seed: Some(7),
                stop: vec!["\n".into()],
                logprobs: None,
            },
        );
        let body = serde_json::to_value(ChatRequest::from_node(&request, "gpt-x", true)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "model": "gpt-x",
                "messages": [{"role": "user", "content": "hello"}],
                "max_tokens": 32,
                "temperature": 0.5,
                "top_p": 0.8999999761581421,
                "seed": 7,
                "stop": ["\n"],
                "stream": true,
                "stream_options": {"include_usage": true}
            })
        );
    }

    #[test]
    fn defaults_are_left_to_the_provider() {
        let message = |role, content: &str| Message {
            role,
            content: content.into(),
        };
        let request = node_request(
            Input::Chat(vec![
                message(Role::System, "be brief"),
                message(Role::User, "hi"),
                message(Role::Assistant, "hello"),
                message(Role::User, "and?"),
            ]),
            Sampling::default(),
        );
        let body = serde_json::to_value(ChatRequest::from_node(&request, "m", false)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "model": "m",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "and?"}
                ],
                "stream": false
            })
        );
    }

    #[test]
    fn parses_a_completion_with_and_without_usage() {
        let body = br#"{"id":"c1","object":"chat.completion","model":"gpt-x","choices":[{"index":0,"message":{"role":"assistant","content":"Hi there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;
        let done = parse_response(body).unwrap();
        assert_eq!(done.text, "Hi there");
        assert_eq!(done.finish_reason.as_deref(), Some("stop"));
        assert_eq!(
            done.usage,
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 2
            })
        );
        assert_eq!(done.model, "gpt-x");

        let body = br#"{"choices":[{"message":{"content":null}}]}"#;
        let done = parse_response(body).unwrap();
        assert_eq!(done.text, "");
        assert_eq!(done.usage, None);
    }

    #[test]
    fn malformed_completions_are_protocol_errors() {
        for body in [
            &b"not json"[..],
            br#"{"choices":[]}"#,
            br#"{"choices":"x"}"#,
        ] {
            let err = parse_response(body).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        }
    }

    #[test]
    fn parses_chunks_deltas_finish_and_usage() {
        let update = parse_chunk(
            r#"{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"He"},"finish_reason":null}]}"#,
        )
        .unwrap();
        assert_eq!(update.delta.as_deref(), Some("He"));
        assert_eq!(update.finish_reason, None);
        let update = parse_chunk(r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#).unwrap();
        assert_eq!(update.delta, None);
        assert_eq!(update.finish_reason.as_deref(), Some("length"));
        let update =
            parse_chunk(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#)
                .unwrap();
        assert_eq!(
            update.usage,
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4
            })
        );
    }

    #[test]
    fn chunk_errors_are_typed() {
        assert_eq!(parse_chunk("{").unwrap_err().kind(), ErrorKind::Protocol);
        let err = parse_chunk(r#"{"error":{"message":"overloaded"}}"#).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ServerError);
        assert!(err.message().contains("overloaded"));
    }

    #[test]
    fn error_messages_come_from_any_common_shape() {
        assert_eq!(
            error_message(
                br#"{"error":{"message":"Incorrect API key","type":"invalid_request_error"}}"#
            ),
            "Incorrect API key"
        );
        assert_eq!(
            error_message(br#"{"error":"model not found"}"#),
            "model not found"
        );
        assert_eq!(error_message(b"Bad Gateway\n"), "Bad Gateway");
        assert_eq!(error_message(b""), "(empty body)");
        let long = "x".repeat(2000);
        assert_eq!(error_message(long.as_bytes()).len(), 512 + 3);
    }
}
