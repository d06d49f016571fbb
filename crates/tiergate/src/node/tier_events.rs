//! What the tiers' own events become in the node's terms: the local engine's generation, a
//! regional node's stream, a cloud provider's stream or whole answer, each as the attempt
//! events the executor walks; and their errors as the node's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tiergate_api::TokenLogprob;
use tiergate_api::wire::{
    answer_from_pb, finish_reason_from_str, logprobs_from_pb, routing_from_pb,
};
use tiergate_engine::{EngineError, ErrorClass, GenerationEvent};
use tiergate_upstream::{CloudEvent, UpstreamError};

use super::attempt::{AttemptEvent, AttemptStream, AttemptSummary, TokenConfidence};
use super::{Answer, FinishReason, NodeError, RoutingInfo, Usage};

pub(super) fn engine_error(err: EngineError) -> NodeError {
    match err.class() {
        ErrorClass::InvalidRequest => NodeError::InvalidArgument(err.to_string()),
        ErrorClass::Overloaded => NodeError::Overloaded(err.to_string()),
        ErrorClass::Unavailable => NodeError::Unavailable(err.to_string()),
        ErrorClass::Internal => NodeError::Internal(err.to_string()),
    }
}

pub(super) fn upstream_error(err: UpstreamError) -> NodeError {
    use tiergate_upstream::ErrorKind;
    let message = err.to_string();
    match err.kind() {
        ErrorKind::Timeout => NodeError::DeadlineExceeded(message),
        ErrorKind::Unavailable | ErrorKind::Connect => NodeError::Unavailable(message),
        ErrorKind::RateLimited => NodeError::Overloaded(message),
        _ => NodeError::Upstream(message),
    }
}

/// Why a local generation ended, in the node's terms: a deadline stop was the device's latency
/// budget when that came before the request's deadline (`budget_first`).
fn local_finish(reason: tiergate_engine::FinishReason, budget_first: bool) -> FinishReason {
    match finish_from_engine(reason) {
        FinishReason::Deadline if budget_first => FinishReason::LatencyBudget,
        other => other,
    }
}

fn finish_from_engine(reason: tiergate_engine::FinishReason) -> FinishReason {
    match reason {
        tiergate_engine::FinishReason::Eos | tiergate_engine::FinishReason::Stop => {
            FinishReason::Stop
        }
        tiergate_engine::FinishReason::Length => FinishReason::Length,
        tiergate_engine::FinishReason::Deadline => FinishReason::Deadline,
    }
}

/// The engine's log-probabilities of one token in the node's terms (the alternatives carry
/// no alternatives of their own).
fn local_logprobs(logprobs: Option<tiergate_engine::TokenLogprobs>) -> Vec<TokenLogprob> {
    let entry = |t: tiergate_engine::TokenLogprob, top_logprobs| TokenLogprob {
        token: t.text(),
        logprob: t.logprob,
        bytes: t.bytes,
        top_logprobs,
    };
    logprobs
        .map(|l| {
            let top = l.top.into_iter().map(|t| entry(t, Vec::new())).collect();
            entry(l.chosen, top)
        })
        .into_iter()
        .collect()
}

/// How long past its deadline a local generation may stay silent before the node gives up on
/// it, at least. The engine ends every generation at its deadline itself, between two forward
/// passes, so it overruns by one pass at most: the grace is this plus twice the engine's longest
/// pass so far (`local_stall_grace`; a prefill chunk of 128 positions takes ~0.2-0.7 s on the
/// real model at one thread here, a slow board's passes several seconds). Silence beyond it is
/// a worker that is stuck, not slow: a stalled disk under the weights file it reads, a starved
/// CPU. The client then gets an error instead of waiting on it for ever.
const LOCAL_STALL_GRACE: Duration = Duration::from_secs(2);

/// The grace past its deadline of a local generation on an engine whose longest forward pass
/// took `longest_pass`.
pub(super) fn local_stall_grace(longest_pass: Duration) -> Duration {
    LOCAL_STALL_GRACE + longest_pass.saturating_mul(2)
}

/// `attempt`, ended with a deadline error when it is silent past `deadline` and its grace.
/// `grace` is read again when the time comes (the engine's longest pass may have grown since the
/// request started: its own prefill may be the longest yet). Dropping the engine's stream there
/// cancels the generation: a worker that wakes up finds its caller gone and stops.
pub(super) fn until_stalled(
    attempt: AttemptStream,
    deadline: Instant,
    grace: Arc<dyn Fn() -> Duration + Send + Sync>,
) -> AttemptStream {
    futures::stream::unfold(Some(attempt), move |attempt| {
        let grace = Arc::clone(&grace);
        async move {
            let mut attempt = attempt?;
            loop {
                let allowed = grace();
                let next = tokio::time::timeout_at((deadline + allowed).into(), attempt.next());
                match next.await {
                    Ok(Some(event)) => return Some((event, Some(attempt))),
                    Ok(None) => return None,
                    Err(_) if grace() > allowed => continue,
                    Err(_) => {
                        tracing::warn!(
                            grace_ms = allowed.as_millis(),
                            "the local engine said nothing past the generation's deadline; \
                             giving up on it"
                        );
                        let err = NodeError::DeadlineExceeded(format!(
                            "the local engine gave no answer within {:.1} s of the deadline \
                             (its worker is stuck)",
                            allowed.as_secs_f64()
                        ));
                        return Some((Err(err), None));
                    }
                }
            }
        }
    })
    .boxed()
}

/// The local engine's events as an attempt's. With `budget_first`, a deadline stop was the
/// device's latency budget, not the request's deadline.
pub(super) fn local_attempt(
    events: tiergate_engine::GenerationStream,
    model: String,
    budget_first: bool,
) -> AttemptStream {
    events
        .scan(0_u32, move |prompt_tokens, event| {
            let mapped = match event {
                Ok(GenerationEvent::Started {
                    prompt_tokens: n,
                    prompt_score,
                }) => {
                    *prompt_tokens = u32::try_from(n).unwrap_or(u32::MAX);
                    Some(Ok(AttemptEvent::LocalPrefilled {
                        prompt_nll: prompt_score,
                    }))
                }
                Ok(GenerationEvent::Token(token)) => Some(Ok(AttemptEvent::Delta {
                    text: token.text,
                    confidence: Some(TokenConfidence {
                        top1_prob: token.top1_prob,
                        entropy: token.entropy,
                    }),
                    logprobs: local_logprobs(token.logprobs),
                })),
                Ok(GenerationEvent::Finished(summary)) => {
                    Some(Ok(AttemptEvent::Done(AttemptSummary {
                        finish_reason: local_finish(summary.finish_reason, budget_first),
                        usage: Usage {
                            prompt_tokens: *prompt_tokens,
                            completion_tokens: u32::try_from(summary.completion_tokens)
                                .unwrap_or(u32::MAX),
                        },
                        model: model.clone(),
                    })))
                }
                Err(err) => Some(Err(engine_error(err))),
            };
            futures::future::ready(Some(mapped))
        })
        .filter_map(futures::future::ready)
        .boxed()
}

pub(super) fn regional_attempt(
    events: impl futures::Stream<
        Item = Result<tiergate_proto::v1::GenerateStreamResponse, UpstreamError>,
    > + Send
    + 'static,
) -> AttemptStream {
    use tiergate_proto::v1::generate_stream_response::Event;
    events
        .filter_map(|item| {
            let mapped = match item {
                Err(err) => Some(Err(upstream_error(err))),
                Ok(response) => match response.event {
                    None => None,
                    Some(Event::Routed(routing)) => {
                        Some(routing_from_pb(routing).map(AttemptEvent::UpstreamRouted))
                    }
                    Some(Event::Delta(delta)) => Some(Ok(AttemptEvent::Delta {
                        text: delta.text,
                        confidence: None,
                        logprobs: logprobs_from_pb(delta.logprobs),
                    })),
                    Some(Event::Done(done)) => Some(
                        answer_from_pb(done)
                            .map(|answer| AttemptEvent::Done(WholeAnswer::from(answer).summary)),
                    ),
                },
            };
            futures::future::ready(mapped)
        })
        .boxed()
}

pub(super) fn cloud_attempt(
    events: tiergate_upstream::CloudStream,
    model: String,
) -> AttemptStream {
    events
        .map(move |item| match item {
            Err(err) => Err(upstream_error(err)),
            Ok(CloudEvent::Delta { text, logprobs }) => Ok(AttemptEvent::Delta {
                text,
                confidence: None,
                logprobs,
            }),
            Ok(CloudEvent::Done(done)) => {
                Ok(AttemptEvent::Done(cloud_answer(done, &model).summary))
            }
        })
        .boxed()
}

/// A whole cloud answer, in the attempt's terms.
pub(super) struct WholeAnswer {
    text: String,
    logprobs: Vec<TokenLogprob>,
    summary: AttemptSummary,
}

pub(super) fn cloud_answer(done: tiergate_upstream::CloudCompletion, model: &str) -> WholeAnswer {
    WholeAnswer {
        summary: AttemptSummary {
            finish_reason: finish_reason_from_str(done.finish_reason.as_deref().unwrap_or("stop")),
            usage: done.usage.unwrap_or_default(),
            model: if done.model.is_empty() {
                model.to_owned()
            } else {
                done.model
            },
        },
        text: done.text,
        logprobs: done.logprobs,
    }
}

impl From<Answer> for WholeAnswer {
    fn from(answer: Answer) -> Self {
        WholeAnswer {
            text: answer.text,
            logprobs: answer.logprobs,
            summary: AttemptSummary {
                finish_reason: answer.finish_reason,
                usage: answer.usage,
                model: answer.model,
            },
        }
    }
}

/// An answer that arrived in one piece, as the attempt events the executor walks.
pub(super) fn whole_attempt(
    routing: Option<RoutingInfo>,
    answer: impl Into<WholeAnswer>,
) -> AttemptStream {
    let answer = answer.into();
    let events = routing
        .map(AttemptEvent::UpstreamRouted)
        .into_iter()
        .chain([
            AttemptEvent::Delta {
                text: answer.text,
                confidence: None,
                logprobs: answer.logprobs,
            },
            AttemptEvent::Done(answer.summary),
        ])
        .map(Ok);
    futures::stream::iter(events).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_stop_is_a_budget_stop_only_when_the_budget_came_first() {
        use tiergate_engine::FinishReason as Engine;
        assert_eq!(
            local_finish(Engine::Deadline, true),
            FinishReason::LatencyBudget
        );
        assert_eq!(
            local_finish(Engine::Deadline, false),
            FinishReason::Deadline
        );
        assert_eq!(local_finish(Engine::Length, true), FinishReason::Length);
        assert_eq!(local_finish(Engine::Eos, true), FinishReason::Stop);
        // What clients see: OpenAI's "length", the budget named apart.
        assert_eq!(FinishReason::LatencyBudget.as_str(), "latency_budget");
        assert_eq!(FinishReason::LatencyBudget.budget_stop(), Some("latency"));
        assert_eq!(FinishReason::Length.budget_stop(), None);
    }
}
