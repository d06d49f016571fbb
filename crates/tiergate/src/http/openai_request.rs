//! OpenAI wire format, requests: `POST /v1/chat/completions` and `POST /v1/completions`,
//! parsed and validated into a [`NodeRequest`]. Fields it cannot honour (n > 1, tools, and
//! those in `openai_unsupported.rs`) are rejected, never dropped; fields that do not change the
//! answer (`user`, `metadata`) are ignored.

use std::time::Instant;

use serde::Deserialize;
use tiergate_router::tier::TierConstraint;
use tiergate_upstream::TraceContext;

use super::openai_unsupported::refuse_unsupported;
use crate::node::{
    Forwarding, Input, Limits, MAX_TOP_LOGPROBS, Message, NodeError, NodeRequest, Role, Sampling,
};
use crate::node::{ModelCard, constraint_for_model};

/// The tiergate extension object a client may add to a request body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TiergateExtension {
    /// "none", "edge_only", "at_most_regional" or "at_least_cloud".
    #[serde(default)]
    pub tier_constraint: Option<String>,
}

/// `stop` is a string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

/// Message content: a string, or a list of parts of which only `text` parts are supported.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ContentField {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessageBody {
    pub role: String,
    #[serde(default)]
    pub content: Option<ContentField>,
}

/// Sampling fields shared by both endpoints.
#[derive(Debug, Default, Deserialize)]
pub struct CommonFields {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Option<StopField>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub tools: Option<serde_json::Value>,
    #[serde(default)]
    pub tiergate: Option<TiergateExtension>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The fields only the chat endpoint has. (Read apart from [`CommonFields`] rather than with
/// `#[serde(flatten)]`, which would lose the field path in error messages.)
#[derive(Debug, Deserialize)]
pub struct ChatCompletionBody {
    pub messages: Vec<ChatMessageBody>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<u32>,
}

/// `prompt` of the completions API: one string (a list of one string is accepted too).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct CompletionBody {
    pub prompt: PromptField,
}

/// A request parsed from either endpoint, ready for the node.
#[derive(Debug)]
pub struct ParsedRequest {
    pub request: NodeRequest,
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
}

/// What the parser needs to know about the node.
#[derive(Debug)]
pub struct ParseContext<'a> {
    pub limits: &'a Limits,
    /// The models this node serves (asking for its local one pins the request to it).
    pub models: &'a [ModelCard],
    /// From the `x-tiergate-tier-constraint` header, if sent.
    pub header_constraint: Option<&'a str>,
    pub request_id: String,
    /// The request's trace context, from the serving stack.
    pub trace: TraceContext,
    pub now: Instant,
}

/// Parses a request body as a JSON object.
pub fn parse_body(body: &[u8]) -> Result<serde_json::Value, NodeError> {
    if body.is_empty() {
        return Err(invalid("request body is empty; expected a JSON object"));
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|err| invalid(format!("malformed JSON: {err}")))?;
    if !value.is_object() {
        return Err(invalid("invalid request: the body must be a JSON object"));
    }
    Ok(value)
}

/// Reads `T` out of a parsed body, naming the failing field in the error.
fn from_value<T: serde::de::DeserializeOwned>(value: &serde_json::Value) -> Result<T, NodeError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." || path.is_empty() {
            invalid(format!("invalid request: {inner}"))
        } else {
            invalid(format!("invalid request: `{path}`: {inner}"))
        }
    })
}

/// Parses a chat completions body.
pub fn parse_chat(body: &[u8], ctx: &ParseContext<'_>) -> Result<ParsedRequest, NodeError> {
    let value = parse_body(body)?;
    refuse_unsupported(&value)?;
    let chat: ChatCompletionBody = from_value(&value)?;
    let common: CommonFields = from_value(&value)?;
    chat_request(chat, common, ctx)
}

/// Parses a (text) completions body.
pub fn parse_completion(body: &[u8], ctx: &ParseContext<'_>) -> Result<ParsedRequest, NodeError> {
    let value = parse_body(body)?;
    refuse_unsupported(&value)?;
    refuse_legacy_logprobs(&value)?;
    let completion: CompletionBody = from_value(&value)?;
    let common: CommonFields = from_value(&value)?;
    completion_request(completion, common, ctx)
}

/// What the chat endpoint's `logprobs` and `top_logprobs` ask for, checked as OpenAI checks
/// them: `top_logprobs` needs `logprobs: true` and is at most 20.
fn chat_logprobs(body: &ChatCompletionBody) -> Result<Option<u32>, NodeError> {
    let asked = body.logprobs == Some(true);
    match body.top_logprobs {
        Some(k) if !asked => Err(invalid(format!(
            "`top_logprobs` = {k} requires `logprobs` = true"
        ))),
        Some(k) if k > MAX_TOP_LOGPROBS => Err(invalid(format!(
            "`top_logprobs` = {k} is outside [0, {MAX_TOP_LOGPROBS}]"
        ))),
        top => Ok(asked.then(|| top.unwrap_or(0))),
    }
}

/// `/v1/completions` does not serve the legacy logprobs form (`logprobs`: an integer, answered
/// with `tokens`/`token_logprobs`/`text_offset`): asking for it is refused, naming the chat
/// endpoint that serves them. `null`, `false` and `0` (SDK defaults) ask for nothing.
fn refuse_legacy_logprobs(body: &serde_json::Value) -> Result<(), NodeError> {
    for field in ["logprobs", "top_logprobs"] {
        if let Some(value) = body.get(field)
            && !value.is_null()
            && value != &serde_json::Value::Bool(false)
            && value.as_f64() != Some(0.0)
        {
            return Err(invalid(format!(
                "`{field}` = {value} is not served on /v1/completions; /v1/chat/completions serves `logprobs` and `top_logprobs`"
            )));
        }
    }
    Ok(())
}

fn chat_request(
    body: ChatCompletionBody,
    common: CommonFields,
    ctx: &ParseContext<'_>,
) -> Result<ParsedRequest, NodeError> {
    let logprobs = chat_logprobs(&body)?;
    if body.messages.is_empty() {
        return Err(invalid(
            "`messages` is empty; at least one message is required",
        ));
    }
    if body.messages.len() > ctx.limits.max_messages {
        return Err(invalid(format!(
            "{} messages given, at most {} allowed",
            body.messages.len(),
            ctx.limits.max_messages
        )));
    }
    let messages = body
        .messages
        .into_iter()
        .enumerate()
        .map(|(index, m)| chat_message(index, m))
        .collect::<Result<Vec<_>, _>>()?;
    if !messages
        .iter()
        .any(|m| m.role == Role::User && !m.content.trim().is_empty())
    {
        return Err(invalid("`messages` has no non-empty user message"));
    }
    finish(Input::Chat(messages), common, logprobs, ctx)
}

fn completion_request(
    body: CompletionBody,
    common: CommonFields,
    ctx: &ParseContext<'_>,
) -> Result<ParsedRequest, NodeError> {
    let prompt = match body.prompt {
        PromptField::One(p) => p,
        PromptField::Many(mut list) if list.len() == 1 => list.remove(0),
        PromptField::Many(list) => {
            return Err(invalid(format!(
                "`prompt` holds {} prompts; this endpoint answers one prompt per request",
                list.len()
            )));
        }
    };
    if prompt.trim().is_empty() {
        return Err(invalid("`prompt` is empty"));
    }
    finish(Input::Text(prompt), common, None, ctx)
}

fn chat_message(index: usize, message: ChatMessageBody) -> Result<Message, NodeError> {
    let role = match message.role.as_str() {
        "system" | "developer" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        other => {
            return Err(invalid(format!(
                "`messages[{index}].role` `{other}` is not supported (system, developer, user, assistant)"
            )));
        }
    };
    let content = match message.content {
        None => String::new(),
        Some(ContentField::Text(text)) => text,
        Some(ContentField::Parts(parts)) => {
            let mut text = String::new();
            for (part_index, part) in parts.into_iter().enumerate() {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(t)) => text.push_str(&t),
                    (kind, _) => {
                        return Err(invalid(format!(
                            "`messages[{index}].content[{part_index}]` of type `{kind}` is not supported; only text parts are"
                        )));
                    }
                }
            }
            text
        }
    };
    Ok(Message { role, content })
}

fn finish(
    input: Input,
    common: CommonFields,
    logprobs: Option<u32>,
    ctx: &ParseContext<'_>,
) -> Result<ParsedRequest, NodeError> {
    let model = common
        .model
        .ok_or_else(|| invalid("`model` is required (see GET /v1/models)"))?;
    if let Some(n) = common.n
        && n != 1
    {
        return Err(invalid(format!("`n` = {n} is not supported; only 1")));
    }
    if common.tools.is_some() {
        return Err(invalid("`tools` are not supported by tiergate"));
    }
    let max_tokens = match (common.max_tokens, common.max_completion_tokens) {
        (Some(a), Some(b)) if a != b => {
            return Err(invalid("`max_tokens` and `max_completion_tokens` disagree"));
        }
        (a, b) => a.or(b).unwrap_or(0),
    };
    if common.max_tokens == Some(0) || common.max_completion_tokens == Some(0) {
        return Err(invalid("`max_tokens` must be at least 1"));
    }
    let stop = match common.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s],
        Some(StopField::Many(list)) => list,
    };
    let sampling = ctx.limits.check_sampling(Sampling {
        max_new_tokens: max_tokens,
        temperature: common.temperature,
        top_k: None,
        top_p: common.top_p,
        seed: common.seed,
        stop,
        logprobs,
    })?;

    let body_constraint = common.tiergate.and_then(|t| t.tier_constraint);
    let constraint = match (body_constraint.as_deref(), ctx.header_constraint) {
        (Some(body), Some(header)) if body != header => {
            return Err(invalid(
                "tier constraint in the body and in x-tiergate-tier-constraint disagree",
            ));
        }
        (Some(value), _) | (None, Some(value)) => parse_constraint(value)?,
        (None, None) => TierConstraint::None,
    };
    let constraint = constraint_for_model(ctx.models, &model, constraint)?;

    let stream = common.stream.unwrap_or(false);
    let include_usage = common.stream_options.is_some_and(|o| o.include_usage);
    Ok(ParsedRequest {
        request: NodeRequest {
            input,
            sampling,
            constraint,
            forwarding: Forwarding::default(),
            deadline: ctx.limits.deadline(ctx.now, None),
            arrived: ctx.now,
            request_id: ctx.request_id.clone(),
            tenant: None,
            trace: ctx.trace.clone(),
        },
        model,
        stream,
        include_usage,
    })
}

/// Parses a tier constraint name as used in JSON bodies and headers.
pub fn parse_constraint(value: &str) -> Result<TierConstraint, NodeError> {
    match value {
        "none" | "" => Ok(TierConstraint::None),
        "edge_only" => Ok(TierConstraint::EdgeOnly),
        "at_most_regional" => Ok(TierConstraint::AtMostRegional),
        "at_least_cloud" => Ok(TierConstraint::AtLeastCloud),
        other => Err(invalid(format!(
            "unknown tier constraint `{other}` (none, edge_only, at_most_regional, at_least_cloud)"
        ))),
    }
}

fn invalid(message: impl Into<String>) -> NodeError {
    NodeError::InvalidArgument(message.into())
}
