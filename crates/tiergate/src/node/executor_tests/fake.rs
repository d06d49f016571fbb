//! The fake tier seam of the executor tests: scripted attempts per tier, a record of what each
//! call was asked, and a flag set when an attempt was dropped before its end (cancelled).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tiergate_router::tier::{Tier, TierConstraint};

use crate::node::attempt::{AttemptEvent, AttemptStream, AttemptSummary, TokenConfidence};
use crate::node::executor::TierStarter;
use crate::node::{FinishReason, Forwarding, NodeError, NodeRequest, Usage};

/// One scripted attempt at a tier.
#[derive(Clone)]
pub(super) enum Script {
    /// The tier refuses to start (breaker open, queue full...).
    Refuse(NodeError),
    /// These events, then the stream ends.
    Events(Vec<Result<AttemptEvent, NodeError>>),
    /// These events, then nothing ever again.
    ThenStall(Vec<Result<AttemptEvent, NodeError>>),
}

/// The fake seam: a queue of scripts per tier; records what each call asked and whether its
/// stream was dropped before it ended.
#[derive(Default)]
pub(super) struct FakeTiers {
    scripts: Mutex<HashMap<Tier, VecDeque<Script>>>,
    /// Per started attempt, in order: the tier and the forwarding it was given.
    pub(super) calls: Mutex<Vec<(Tier, Forwarding)>>,
    /// Set when an attempt stream was dropped before its end (cancelled).
    pub(super) dropped_early: Arc<AtomicBool>,
}

impl FakeTiers {
    pub(super) fn with(scripts: &[(Tier, Script)]) -> Self {
        let fake = FakeTiers::default();
        {
            let mut map = fake.scripts.lock().unwrap();
            for (tier, script) in scripts {
                map.entry(*tier).or_default().push_back(script.clone());
            }
        }
        fake
    }

    fn start(&self, tier: Tier, request: &NodeRequest) -> Result<AttemptStream, NodeError> {
        self.calls
            .lock()
            .unwrap()
            .push((tier, request.forwarding.clone()));
        let script = (self.scripts.lock().unwrap().get_mut(&tier))
            .and_then(VecDeque::pop_front)
            .unwrap_or_else(|| panic!("{tier} was called but has no script left"));
        let (events, stall) = match script {
            Script::Refuse(err) => return Err(err),
            Script::Events(events) => (events, false),
            Script::ThenStall(events) => (events, true),
        };
        let finite = futures::stream::iter(events);
        let inner: AttemptStream = if stall {
            finite.chain(futures::stream::pending()).boxed()
        } else {
            finite.boxed()
        };
        Ok(Tracked {
            inner,
            ended: false,
            dropped_early: Arc::clone(&self.dropped_early),
        }
        .boxed())
    }

    pub(super) fn tiers_called(&self) -> Vec<Tier> {
        self.calls.lock().unwrap().iter().map(|(t, _)| *t).collect()
    }
}

/// An attempt stream that notes whether it was dropped before it ended (cancelled).
struct Tracked {
    inner: AttemptStream,
    ended: bool,
    dropped_early: Arc<AtomicBool>,
}

impl futures::Stream for Tracked {
    type Item = Result<AttemptEvent, NodeError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = self.inner.poll_next_unpin(cx);
        if let std::task::Poll::Ready(None | Some(Ok(AttemptEvent::Done(_)))) = &polled {
            self.ended = true;
        }
        polled
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.ended {
            self.dropped_early.store(true, Ordering::SeqCst);
        }
    }
}

impl TierStarter for FakeTiers {
    fn start_local(
        &self,
        request: &NodeRequest,
        _score_prompt: bool,
    ) -> BoxFuture<'_, Result<AttemptStream, NodeError>> {
        futures::future::ready(self.start(Tier::Edge, request)).boxed()
    }

    fn start_upstream(
        &self,
        tier: Tier,
        request: &NodeRequest,
        _whole_answer: bool,
        _commit_by: Instant,
    ) -> BoxFuture<'_, Result<AttemptStream, NodeError>> {
        futures::future::ready(self.start(tier, request)).boxed()
    }

    fn upstreams_available_in(&self, _constraint: TierConstraint) -> Option<Duration> {
        None
    }
}

pub(super) fn delta(text: &str) -> Result<AttemptEvent, NodeError> {
    Ok(AttemptEvent::Delta {
        text: text.to_owned(),
        confidence: None,
        logprobs: Vec::new(),
    })
}

/// A local token with its top-1 probability.
pub(super) fn token(text: &str, top1_prob: f32) -> Result<AttemptEvent, NodeError> {
    Ok(AttemptEvent::Delta {
        text: text.to_owned(),
        confidence: Some(TokenConfidence {
            top1_prob,
            entropy: 0.1,
        }),
        logprobs: Vec::new(),
    })
}

pub(super) fn done(finish_reason: FinishReason) -> Result<AttemptEvent, NodeError> {
    Ok(AttemptEvent::Done(AttemptSummary {
        finish_reason,
        usage: Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
        },
        model: "fake".to_owned(),
    }))
}

/// A whole answer from an upstream: its text in two deltas, then a real stop.
pub(super) fn answers(text: &str) -> Script {
    let (a, b) = text.split_at(text.len() / 2);
    Script::Events(vec![delta(a), delta(b), done(FinishReason::Stop)])
}

/// A local answer whose every token has top-1 probability `top1`.
pub(super) fn local_answers(text: &str, top1: f32) -> Script {
    let mut events = vec![Ok(AttemptEvent::LocalPrefilled { prompt_nll: None })];
    events.extend(text.split_inclusive(' ').map(|word| token(word, top1)));
    events.push(done(FinishReason::Stop));
    Script::Events(events)
}

pub(super) fn unavailable() -> NodeError {
    NodeError::Unavailable("scripted".to_owned())
}
