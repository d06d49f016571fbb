//! Conversions between the `tiergate.v1` wire types and the node's own types: the gRPC front
//! end reads requests with them, the regional client sends them.

use std::time::{Duration, Instant};

use crate::trace_context::TraceContext;
use tiergate_proto::v1 as pb;
use tiergate_router::tier::{Tier, TierConstraint};

use crate::error::NodeError;
use crate::limits::Limits;
use crate::request::{
    Answer, CacheStatus, FinishReason, Forwarding, Input, Message, NodeRequest, Role, RoutingInfo,
    Sampling, TokenLogprob, Usage,
};

pub fn tier_to_pb(tier: Tier) -> pb::Tier {
    match tier {
        Tier::Edge => pb::Tier::Edge,
        Tier::Regional => pb::Tier::Regional,
        Tier::Cloud => pb::Tier::Cloud,
    }
}

pub fn tier_from_pb(value: i32) -> Result<Tier, NodeError> {
    match pb::Tier::try_from(value) {
        Ok(pb::Tier::Edge) => Ok(Tier::Edge),
        Ok(pb::Tier::Regional) => Ok(Tier::Regional),
        Ok(pb::Tier::Cloud) => Ok(Tier::Cloud),
        Ok(pb::Tier::Unspecified) | Err(_) => Err(NodeError::InvalidArgument(format!(
            "unknown tier value {value}"
        ))),
    }
}

pub fn constraint_from_pb(value: i32) -> Result<TierConstraint, NodeError> {
    match pb::TierConstraint::try_from(value) {
        Ok(pb::TierConstraint::Unspecified) => Ok(TierConstraint::None),
        Ok(pb::TierConstraint::EdgeOnly) => Ok(TierConstraint::EdgeOnly),
        Ok(pb::TierConstraint::AtMostRegional) => Ok(TierConstraint::AtMostRegional),
        Ok(pb::TierConstraint::AtLeastCloud) => Ok(TierConstraint::AtLeastCloud),
        Err(_) => Err(NodeError::InvalidArgument(format!(
            "unknown tier constraint value {value}"
        ))),
    }
}

pub fn constraint_to_pb(constraint: TierConstraint) -> pb::TierConstraint {
    match constraint {
        TierConstraint::None => pb::TierConstraint::Unspecified,
        TierConstraint::EdgeOnly => pb::TierConstraint::EdgeOnly,
        TierConstraint::AtMostRegional => pb::TierConstraint::AtMostRegional,
        TierConstraint::AtLeastCloud => pb::TierConstraint::AtLeastCloud,
    }
}

fn role_from_pb(index: usize, role: &str) -> Result<Role, NodeError> {
    match role {
        "system" | "developer" => Ok(Role::System),
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        other => Err(NodeError::InvalidArgument(format!(
            "messages[{index}].role `{other}` is not supported (system, user, assistant)"
        ))),
    }
}

fn role_to_pb(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// Validates a wire request into a node request. `timeout` is the client's `grpc-timeout`.
pub fn request_from_pb(
    request: pb::GenerateRequest,
    limits: &Limits,
    timeout: Option<Duration>,
    now: Instant,
) -> Result<NodeRequest, NodeError> {
    let input = match (request.prompt.is_empty(), request.messages.is_empty()) {
        (false, false) => {
            return Err(NodeError::InvalidArgument(
                "set either prompt or messages, not both".to_owned(),
            ));
        }
        (true, true) => {
            return Err(NodeError::InvalidArgument(
                "the request is empty: set prompt or messages".to_owned(),
            ));
        }
        (false, true) => {
            if request.prompt.trim().is_empty() {
                return Err(NodeError::InvalidArgument("prompt is blank".to_owned()));
            }
            Input::Chat(vec![Message {
                role: Role::User,
                content: request.prompt,
            }])
        }
        (true, false) => {
            if request.messages.len() > limits.max_messages {
                return Err(NodeError::InvalidArgument(format!(
                    "{} messages given, at most {} allowed",
                    request.messages.len(),
                    limits.max_messages
                )));
            }
            let messages = request
                .messages
                .into_iter()
                .enumerate()
                .map(|(i, m)| {
                    Ok(Message {
                        role: role_from_pb(i, &m.role)?,
                        content: m.content,
                    })
                })
                .collect::<Result<Vec<_>, NodeError>>()?;
            if !messages
                .iter()
                .any(|m| m.role == Role::User && !m.content.trim().is_empty())
            {
                return Err(NodeError::InvalidArgument(
                    "messages has no non-empty user message".to_owned(),
                ));
            }
            Input::Chat(messages)
        }
    };
    let params = request.params.unwrap_or_default();
    let sampling = limits.check_sampling(Sampling {
        max_new_tokens: params.max_new_tokens,
        temperature: params.temperature,
        top_k: params.top_k,
        top_p: params.top_p,
        seed: params.seed,
        stop: params.stop,
        logprobs: params.top_logprobs,
    })?;
    let forwarding = match request.forwarding {
        None => Forwarding::default(),
        Some(f) => Forwarding {
            hop_count: f.hop_count,
            tiers_tried: f
                .tiers_tried
                .into_iter()
                .map(tier_from_pb)
                .collect::<Result<_, _>>()?,
            via: f.via,
        },
    };
    Ok(NodeRequest {
        input,
        sampling,
        constraint: constraint_from_pb(request.tier_constraint)?,
        forwarding,
        deadline: limits.deadline(now, timeout),
        arrived: now,
        request_id: request.request_id,
        tenant: None,
        // The front end puts the stack's trace context here.
        trace: TraceContext::fresh(),
    })
}

/// The wire request a node sends to the regional tier above it.
pub fn request_to_pb(request: &NodeRequest) -> pb::GenerateRequest {
    let (prompt, messages) = match &request.input {
        Input::Text(text) => (text.clone(), Vec::new()),
        Input::Chat(messages) => (
            String::new(),
            messages
                .iter()
                .map(|m| pb::ChatMessage {
                    role: role_to_pb(m.role).to_owned(),
                    content: m.content.clone(),
                })
                .collect(),
        ),
    };
    let s = &request.sampling;
    pb::GenerateRequest {
        prompt,
        messages,
        params: Some(pb::GenerationParams {
            max_new_tokens: s.max_new_tokens,
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            seed: s.seed,
            stop: s.stop.clone(),
            top_logprobs: s.logprobs,
        }),
        tier_constraint: constraint_to_pb(request.constraint) as i32,
        forwarding: Some(pb::ForwardingInfo {
            hop_count: request.forwarding.hop_count,
            tiers_tried: request
                .forwarding
                .tiers_tried
                .iter()
                .map(|t| tier_to_pb(*t) as i32)
                .collect(),
            via: request.forwarding.via.clone(),
        }),
        model: String::new(),
        request_id: request.request_id.clone(),
    }
}

pub fn routing_to_pb(routing: &RoutingInfo) -> pb::RoutingInfo {
    pb::RoutingInfo {
        tier: tier_to_pb(routing.tier) as i32,
        reason: routing.reason.clone(),
        complexity: routing.complexity,
        local_confidence: routing.local_confidence,
        degraded: routing.degraded,
        node: routing.node.clone(),
        tiers_tried: routing
            .tiers_tried
            .iter()
            .map(|t| tier_to_pb(*t) as i32)
            .collect(),
    }
}

pub fn routing_from_pb(routing: pb::RoutingInfo) -> Result<RoutingInfo, NodeError> {
    // The wire has no cache field: an upstream node's hit is known by its reason.
    let cache =
        (routing.reason == tiergate_router::Reason::CacheHit.as_str()).then_some(CacheStatus::Hit);
    Ok(RoutingInfo {
        cache,
        tier: tier_from_pb(routing.tier)?,
        reason: routing.reason,
        complexity: routing.complexity,
        local_confidence: routing.local_confidence,
        degraded: routing.degraded,
        node: routing.node,
        tiers_tried: routing
            .tiers_tried
            .into_iter()
            .map(tier_from_pb)
            .collect::<Result<_, _>>()?,
    })
}

pub fn finish_reason_from_str(value: &str) -> FinishReason {
    match value {
        "length" => FinishReason::Length,
        "deadline" => FinishReason::Deadline,
        "latency_budget" => FinishReason::LatencyBudget,
        _ => FinishReason::Stop,
    }
}

pub fn answer_to_pb(answer: &Answer) -> pb::GenerateResponse {
    pb::GenerateResponse {
        text: answer.text.clone(),
        routing: Some(routing_to_pb(&answer.routing)),
        usage: Some(pb::Usage {
            prompt_tokens: answer.usage.prompt_tokens,
            completion_tokens: answer.usage.completion_tokens,
        }),
        timing: Some(pb::Timing {
            time_to_first_token_seconds: answer.time_to_first_token.as_secs_f64(),
            total_seconds: answer.total_time.as_secs_f64(),
        }),
        finish_reason: answer.finish_reason.as_str().to_owned(),
        model: answer.model.clone(),
        logprobs: logprobs_to_pb(&answer.logprobs),
    }
}

pub fn logprobs_to_pb(logprobs: &[TokenLogprob]) -> Vec<pb::TokenLogprob> {
    logprobs
        .iter()
        .map(|t| pb::TokenLogprob {
            token: t.token.clone(),
            logprob: t.logprob,
            bytes: t.bytes.clone(),
            top_logprobs: logprobs_to_pb(&t.top_logprobs),
        })
        .collect()
}

pub fn logprobs_from_pb(logprobs: Vec<pb::TokenLogprob>) -> Vec<TokenLogprob> {
    logprobs
        .into_iter()
        .map(|t| TokenLogprob {
            token: t.token,
            logprob: t.logprob,
            bytes: t.bytes,
            top_logprobs: logprobs_from_pb(t.top_logprobs),
        })
        .collect()
}

/// An answer received from the regional tier. Timings are the upstream's own.
pub fn answer_from_pb(response: pb::GenerateResponse) -> Result<Answer, NodeError> {
    let routing = response
        .routing
        .ok_or_else(|| NodeError::Upstream("upstream answer carries no routing".to_owned()))
        .and_then(routing_from_pb)?;
    let usage = response.usage.unwrap_or_default();
    let timing = response.timing.unwrap_or_default();
    Ok(Answer {
        text: response.text,
        routing,
        usage: Usage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
        },
        finish_reason: finish_reason_from_str(&response.finish_reason),
        model: response.model,
        logprobs: logprobs_from_pb(response.logprobs),
        time_to_first_token: Duration::try_from_secs_f64(timing.time_to_first_token_seconds)
            .unwrap_or_default(),
        total_time: Duration::try_from_secs_f64(timing.total_seconds).unwrap_or_default(),
    })
}
