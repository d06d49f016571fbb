//! What a node offers to its front ends (gRPC and HTTP): requests in, answers out, in the
//! node's own terms. Each front end converts its wire format to and from these types.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use serde::Serialize;
use tiergate_router::ConversationContext;
use tiergate_router::tier::{Tier, TierConstraint};

use crate::error::NodeError;
use crate::trace_context::TraceContext;

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// The input: a conversation (rendered with the model's chat template) or raw text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Chat(Vec<Message>),
    /// Used verbatim (the OpenAI completions API).
    Text(String),
}

impl Input {
    /// The text the router scores: the last user message for a chat, the text otherwise.
    pub fn routing_text(&self) -> &str {
        match self {
            Input::Text(text) => text,
            Input::Chat(messages) => messages
                .iter()
                .rev()
                .find(|m| m.role == Role::User)
                .map_or("", |m| m.content.as_str()),
        }
    }

    /// The conversation around the routing text: turns before the last user turn and the
    /// system prompt, counted in words (reported in explanations, not scored).
    pub fn context(&self) -> ConversationContext {
        let Input::Chat(messages) = self else {
            return ConversationContext::default();
        };
        let words = |m: &Message| saturate(m.content.split_whitespace().count());
        let last_user = messages.iter().rposition(|m| m.role == Role::User);
        let mut context = ConversationContext::default();
        for (i, message) in messages.iter().enumerate() {
            if message.role == Role::System {
                context.system_words = context.system_words.saturating_add(words(message));
            } else if last_user.is_some_and(|last| i < last) {
                context.earlier_turns = context.earlier_turns.saturating_add(1);
                context.earlier_words = context.earlier_words.saturating_add(words(message));
            }
        }
        context
    }
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Generation parameters, already validated against the node's limits.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sampling {
    pub max_new_tokens: u32,
    /// `None` or 0: greedy.
    pub temperature: Option<f32>,
    pub top_k: Option<u32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    /// `Some(k)`: report each generated token's log-probability and its k most likely
    /// alternatives (0..=`MAX_TOP_LOGPROBS`). Such a request bypasses the response cache.
    pub logprobs: Option<u32>,
}

/// The most alternatives per token a request may ask for (OpenAI's `top_logprobs` bound).
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// One generated token's log-probability (natural log) under the model that produced it;
/// OpenAI's `choices[].logprobs.content[]` entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLogprob {
    /// The token as text; an incomplete UTF-8 character shows as U+FFFD (`bytes` is exact).
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    /// The most likely tokens at this step, most likely first; empty unless asked for, and
    /// always empty on the alternatives themselves.
    pub top_logprobs: Vec<TokenLogprob>,
}

/// How a request travelled so far; a node never forwards down or around a loop.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Forwarding {
    pub hop_count: u32,
    pub tiers_tried: Vec<Tier>,
    pub via: Vec<String>,
}

/// A request as the node sees it.
#[derive(Debug, Clone)]
pub struct NodeRequest {
    pub input: Input,
    pub sampling: Sampling,
    pub constraint: TierConstraint,
    pub forwarding: Forwarding,
    /// Generation stops here and says so.
    pub deadline: Instant,
    /// When the request reached this node (its front end read it): the device's latency
    /// budget counts from here, as the user's latency does.
    pub arrived: Instant,
    pub request_id: String,
    /// The caller's tenant (`[[tenants]]`), resolved from its API key by the serving stack;
    /// `None` when authentication is off, or for a request forwarded by a peer node.
    pub tenant: Option<Arc<dyn Tenancy>>,
    /// This node's span of the request's W3C trace; sent to the tiers above as `traceparent`.
    pub trace: TraceContext,
}

/// The caller's tenant as the node sees it: what the serving stack resolved from an API key.
/// The node asks it to admit a request (narrowing its tier constraint to the tenant's tiers,
/// charging its budgets) and keeps its cached answers apart by its name. The binary's `auth`
/// module implements it; the trait keeps this crate free of keys and rate limiters.
pub trait Tenancy: Send + Sync + std::fmt::Debug {
    /// The tenant's name from config (a cache keyspace, a metric label).
    fn name(&self) -> &str;
    /// Narrows a client's tier constraint to the tenant's tiers; refuses one that contradicts
    /// them.
    fn narrow(&self, constraint: TierConstraint) -> Result<TierConstraint, NodeError>;
    /// Admits `request`: narrows its constraint and charges the tenant's budgets.
    fn admit(&self, request: &mut NodeRequest) -> Result<(), NodeError>;
}

impl NodeRequest {
    /// A request with no tier constraint, no forwarding history and no request id yet: where a
    /// caller of the upstream clients (or a test) starts.
    pub fn new(input: Input, sampling: Sampling, deadline: Instant) -> Self {
        Self {
            input,
            sampling,
            constraint: TierConstraint::None,
            forwarding: Forwarding::default(),
            deadline,
            arrived: Instant::now(),
            request_id: String::new(),
            tenant: None,
            trace: TraceContext::fresh(),
        }
    }
}

/// Where and why a request was answered; every answer carries it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoutingInfo {
    pub tier: Tier,
    pub reason: String,
    pub complexity: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_confidence: Option<f64>,
    pub degraded: bool,
    pub node: String,
    pub tiers_tried: Vec<Tier>,
    /// Set when the answer came from a response cache (this node's or an upstream node's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheStatus>,
}

/// How the response cache took part in an answer; reported as `x-tiergate-cache` and as
/// `"cache"` in the `tiergate` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheStatus {
    Hit,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its answer, or a stop sequence was met.
    Stop,
    /// `max_new_tokens` or the context length was reached.
    Length,
    /// The request's deadline passed.
    Deadline,
    /// Local generation reached its share of the device's latency budget
    /// (`device.stop_at_budget_share`); OpenAI clients see `length`.
    LatencyBudget,
}

impl FinishReason {
    /// The budget that stopped generation, when one did (`x-tiergate-budget-stop`).
    pub fn budget_stop(self) -> Option<&'static str> {
        (self == FinishReason::LatencyBudget).then_some("latency")
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Deadline => "deadline",
            FinishReason::LatencyBudget => "latency_budget",
        }
    }
}

/// Token counts of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// A complete answer.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub text: String,
    pub routing: RoutingInfo,
    pub usage: Usage,
    pub finish_reason: FinishReason,
    pub model: String,
    /// Every generated token's log-probability, when the request asked (`Sampling::logprobs`);
    /// empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<TokenLogprob>,
    #[serde(with = "seconds")]
    pub time_to_first_token: Duration,
    #[serde(with = "seconds")]
    pub total_time: Duration,
}

/// What a streamed answer yields: `Routed` once, then deltas, then `Done` (with empty text).
#[derive(Debug, Clone)]
pub enum StreamEvent {
    Routed(RoutingInfo),
    /// New text and, when the request asked, the tokens that made it (a token whose text is
    /// still held back comes with empty text).
    Delta {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    Done(Answer),
}

/// A streamed answer. Dropping it cancels the work behind it.
pub type AnswerStream = BoxStream<'static, Result<StreamEvent, NodeError>>;

/// A model a node serves, for `GET /v1/models`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub tier: Tier,
    /// Asking for this model pins the request to this node (the node's own local model).
    pub local: bool,
}

/// What asking for `model` means, for either API: the routed model lets the router choose (the
/// client's `constraint` stands); the node's own local model pins the request to this node
/// (edge only), which no other constraint may contradict; anything else is refused, naming the
/// models there are. One rule for both front ends.
pub fn constraint_for_model(
    models: &[ModelCard],
    model: &str,
    constraint: TierConstraint,
) -> Result<TierConstraint, NodeError> {
    let Some(card) = models.iter().find(|card| card.id == model) else {
        let known: Vec<&str> = models.iter().map(|card| card.id.as_str()).collect();
        return Err(NodeError::InvalidArgument(format!(
            "unknown model `{model}`; this node serves: {}",
            known.join(", ")
        )));
    };
    if !card.local {
        return Ok(constraint);
    }
    match constraint {
        TierConstraint::None | TierConstraint::EdgeOnly => Ok(TierConstraint::EdgeOnly),
        other => Err(NodeError::InvalidArgument(format!(
            "model `{model}` is this node's local model and cannot be combined with tier constraint `{}`",
            other.as_str()
        ))),
    }
}

mod seconds {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}
