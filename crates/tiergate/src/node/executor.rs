//! Walks a routing plan: tries each step's tier in order, holds a gated local answer back
//! until its commit window closes, falls through on failure, and streams the one answer that
//! wins. The router names the outcome (`Decision::outcome`); this file only runs the steps.
//! It runs as its own task; the client's stream is the receiving end of a channel, so a client
//! that goes away cancels the walk and the work behind it.
//!
//! A step *commits* when its first token is ready (nothing reached the client before that):
//! until then any failure, a stall included, moves on to the next step. Each step must commit
//! by its share of the request's deadline (`BudgetConfig`), so a tier that never answers
//! cannot eat the time of the steps after it. An attempt that ends with no text for any
//! reason but a real stop is a failure of its step, never an empty answer.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use tiergate_router::tier::{Tier, TierConstraint};
use tiergate_router::{
    BudgetConfig, CommitMonitor, Decision, RetryBudget, Step, StepResult, Verdict,
};
use tokio::sync::mpsc;

use super::attempt::{AttemptEvent, AttemptStream};
use super::hedge::Hedging;
use super::hedged::Raced;
use super::{FinishReason, NodeError, NodeRequest, RoutingInfo, StreamEvent};
use crate::cache::RequestCache;
use crate::metrics::NodeMetrics;

/// Starts attempts at each tier; implemented by the node over its engine and upstream clients.
pub trait TierStarter: Send + Sync + 'static {
    /// Starts the local model on the request; with `score_prompt` its prefill scores the
    /// prompt (`AttemptEvent::LocalPrefilled` carries the NLL), which costs the lm_head on every
    /// prompt position, so only a gate that reads it asks.
    fn start_local(
        &self,
        request: &NodeRequest,
        score_prompt: bool,
    ) -> BoxFuture<'_, Result<AttemptStream, NodeError>>;
    /// Starts a call to an upstream tier; `request.forwarding` is already updated. With
    /// `whole_answer` the client waits for the whole answer, so the upstream client returns it
    /// whole (gathered from a stream, unless its link's `stream_whole_answers` is off). The
    /// first token (or the whole answer) must come by `commit_by`; the upstream client enforces
    /// it, so that link health learns of it.
    fn start_upstream(
        &self,
        tier: Tier,
        request: &NodeRequest,
        whole_answer: bool,
        commit_by: Instant,
    ) -> BoxFuture<'_, Result<AttemptStream, NodeError>>;
    /// How long until some upstream that `constraint` allows may take calls again (zero: now);
    /// `None` when no link can tell. What a client that could not be answered is told to wait.
    fn upstreams_available_in(&self, constraint: TierConstraint) -> Option<Duration>;
}

/// Everything one walk needs.
pub struct Walk<'a> {
    pub node_name: &'a str,
    pub request: NodeRequest,
    pub decision: &'a Decision,
    pub metrics: &'a NodeMetrics,
    /// How the request's deadline is split across the plan's steps.
    pub budget: &'a BudgetConfig,
    /// The node's retry budget: a request deposits, each failover to another upstream withdraws.
    pub retry_budget: &'a Mutex<RetryBudget>,
    /// When upstream steps are hedged, and the tiers' recent times to first token.
    pub hedging: &'a Hedging,
    /// What goes upstream in place of the request's input: the privacy guard's redacted copy.
    pub forwarded_input: Option<super::Input>,
    pub started: Instant,
    /// The client waits for the whole answer (no stream to feed).
    pub whole_answer: bool,
    /// This request's place in the response cache, if it is cacheable (see `cached.rs`).
    pub cache: Option<&'a RequestCache>,
}

pub(super) type Sender = mpsc::Sender<Result<StreamEvent, NodeError>>;

/// How long past a step's commit point the executor waits before giving up on it itself: the
/// upstream client's own timer fires first, and reports to link health.
const COMMIT_GRACE: Duration = Duration::from_millis(50);

/// How a step that did not answer ended.
enum StepEnd {
    /// The answer was streamed (or the client left while it was).
    Answered,
    /// Fell through to the next step, with what happened.
    FellThrough(StepResult, Option<NodeError>),
    /// A hedged step and its hedge, the next step (of this tier), both failed.
    BothFellThrough(Tier, NodeError),
}

/// An upstream call that gave its first token: the rest of it, and what came so far.
pub(super) type Opened = (AttemptStream, Vec<AttemptEvent>);

impl Walk<'_> {
    /// Runs the plan, sending events to `tx`. Returns when the answer is complete, every step
    /// failed, or the client went away.
    pub async fn run(self, tiers: &dyn TierStarter, tx: Sender) {
        let mut results: Vec<StepResult> = Vec::new();
        let mut last_error: Option<(Tier, NodeError)> = None;
        if (self.decision.plan.iter()).any(|step| matches!(step, Step::Upstream(_))) {
            self.with_retry_budget(|budget| budget.deposit(Instant::now()));
        }
        // Set when a hedged step's hedge (the next step) already ran.
        let mut skip_next = false;
        for (index, &step) in self.decision.plan.iter().enumerate() {
            if std::mem::take(&mut skip_next) {
                continue;
            }
            let tier = self.decision.step_tier(step);
            // A stored upstream answer beats a degraded local one (and, if so configured,
            // any walk at all).
            if self.serve_cached(index, step, &results, &tx).await {
                return;
            }
            let commit_by = self.commit_point(index);
            let run = async {
                match step {
                    Step::Local { gated } => {
                        self.run_local(tiers, gated, commit_by, &results, &tx).await
                    }
                    Step::Upstream(tier) => {
                        self.run_upstream(tiers, index, tier, commit_by, &results, &tx)
                            .await
                    }
                }
            };
            // A client that goes away cancels the step at once: its work is dropped, and
            // an upstream call cut that way says nothing about the link.
            let end = tokio::select! {
                end = run => end,
                () = tx.closed() => return,
            };
            match end {
                StepEnd::Answered => return,
                StepEnd::FellThrough(result, error) => {
                    results.push(result);
                    if let Some(error) = error {
                        last_error = Some((tier, error));
                    }
                }
                StepEnd::BothFellThrough(hedge_tier, error) => {
                    results.extend([StepResult::UpstreamFailed; 2]);
                    last_error = Some((hedge_tier, error));
                    skip_next = true;
                }
            }
        }
        // A request the local model refuses (too long, queue full) keeps its own status.
        if let Some((_, err @ (NodeError::InvalidArgument(_) | NodeError::Overloaded(_)))) =
            &last_error
        {
            self.metrics
                .requests
                .with_label_values(&["none", self.decision.reason.as_str(), err.as_label()])
                .inc();
            let _ = tx.send(Err(err.clone())).await;
            return;
        }
        let message = match (&last_error, self.decision.plan.is_empty()) {
            (_, true) => "no tier allowed by the request's constraint is reachable".to_owned(),
            (Some((tier, err)), false) => {
                format!("no tier could answer; last failure at {tier}: {err}")
            }
            (None, false) => "no tier could answer".to_owned(),
        };
        // The client's own deadline ran out: say so, rather than blame the tiers.
        let err = if Instant::now() >= self.request.deadline {
            NodeError::DeadlineExceeded(message)
        } else if let Some(retry_after) = tiers.upstreams_available_in(self.request.constraint) {
            NodeError::LinksDown {
                message,
                retry_after,
            }
        } else {
            NodeError::Unavailable(message)
        };
        self.metrics
            .requests
            .with_label_values(&["none", self.decision.reason.as_str(), err.as_label()])
            .inc();
        let _ = tx.send(Err(err)).await;
    }

    fn with_retry_budget<T>(&self, f: impl FnOnce(&mut RetryBudget) -> T) -> T {
        f(&mut self
            .retry_budget
            .lock()
            .unwrap_or_else(PoisonError::into_inner))
    }

    /// By when step `index` must have its first token: its share of the time left.
    pub(super) fn commit_point(&self, index: usize) -> Instant {
        let now = Instant::now();
        let left = self.request.deadline.saturating_duration_since(now);
        now + self.budget.step_budget(&self.decision.plan, index, left)
    }

    async fn run_local(
        &self,
        tiers: &dyn TierStarter,
        gated: bool,
        commit_by: Instant,
        before: &[StepResult],
        tx: &Sender,
    ) -> StepEnd {
        let failed = |err| StepEnd::FellThrough(StepResult::LocalFailed, Some(err));
        let confidence = &self.decision.thresholds.confidence;
        let score_prompt = gated && confidence.max_prompt_nll.is_some();
        let mut attempt = match tiers.start_local(&self.request, score_prompt).await {
            Ok(attempt) => attempt,
            Err(err) => return failed(err),
        };
        let mut held: Vec<AttemptEvent> = Vec::new();
        let result = if gated {
            let mut monitor = CommitMonitor::new(confidence);
            let verdict = tokio::time::timeout_at(commit_by.into(), async {
                loop {
                    let verdict = match attempt.next().await {
                        Some(Ok(event)) => {
                            let verdict = match &event {
                                AttemptEvent::LocalPrefilled { prompt_nll } => {
                                    monitor.prompt(*prompt_nll)
                                }
                                AttemptEvent::Delta {
                                    confidence: Some(c),
                                    ..
                                } => monitor.push(c.top1_prob, c.entropy),
                                AttemptEvent::Done(_) => monitor.finish(),
                                _ => Verdict::Pending,
                            };
                            held.push(event);
                            verdict
                        }
                        Some(Err(err)) => return Err(err),
                        None => monitor.finish(),
                    };
                    if verdict.is_final() {
                        return Ok(verdict);
                    }
                }
            })
            .await;
            let verdict = match verdict {
                Ok(Ok(verdict)) => verdict,
                Ok(Err(err)) => return failed(err),
                Err(_) => {
                    return failed(NodeError::DeadlineExceeded(
                        "the local attempt did not reach its verdict in its share of the deadline"
                            .to_owned(),
                    ));
                }
            };
            match verdict {
                Verdict::Commit { mean_top1, .. } => {
                    self.metrics
                        .local_attempts
                        .with_label_values(&["commit"])
                        .inc();
                    self.metrics.local_confidence.observe(f64::from(mean_top1));
                    StepResult::LocalCommitted { mean_top1 }
                }
                Verdict::Abandon {
                    mean_top1, cause, ..
                } => {
                    self.metrics
                        .local_attempts
                        .with_label_values(&["abandon"])
                        .inc();
                    self.metrics
                        .local_abandons
                        .with_label_values(&[cause.as_str()])
                        .inc();
                    self.metrics.local_confidence.observe(f64::from(mean_top1));
                    let wasted = held
                        .iter()
                        .filter(|e| matches!(e, AttemptEvent::Delta { .. }));
                    self.metrics
                        .generated_tokens
                        .with_label_values(&["false"])
                        .inc_by(wasted.count() as u64);
                    // Dropping the attempt stops the local generation.
                    return StepEnd::FellThrough(StepResult::LocalAbandoned { mean_top1 }, None);
                }
                Verdict::Pending => return failed(NodeError::Internal("verdict pending".into())),
            }
        } else {
            StepResult::LocalAnswered
        };
        // The last step has no one to fall to: it may take until the request's deadline.
        if let Err(err) = first_token(&mut attempt, &mut held).await {
            return failed(err);
        }
        let Some(routing) = self.routing(before, result, None) else {
            return failed(NodeError::Internal(
                "the plan and its results disagree".into(),
            ));
        };
        let tokens = self.stream_answer(routing, held, attempt, tx).await;
        self.metrics
            .generated_tokens
            .with_label_values(&["true"])
            .inc_by(tokens);
        StepEnd::Answered
    }

    async fn run_upstream(
        &self,
        tiers: &dyn TierStarter,
        index: usize,
        tier: Tier,
        commit_by: Instant,
        before: &[StepResult],
        tx: &Sender,
    ) -> StepEnd {
        if before.contains(&StepResult::UpstreamFailed) && !self.retry_allowed(tier, "retries") {
            // Not a failure of this link: it was never called.
            return StepEnd::FellThrough(
                StepResult::UpstreamFailed,
                Some(NodeError::Unavailable(format!(
                    "{tier} was not tried: the retry budget is spent (upstreams are failing)"
                ))),
            );
        }
        let call_started = Instant::now();
        let primary = self.open_upstream(tiers, tier, self.forwarded_request(before), commit_by);
        let raced = match self.hedge_of(index, tier) {
            Some(hedge) => self.race_with_hedge(tiers, primary, hedge, before).await,
            None => Raced::Primary(primary.await),
        };
        let (tier, before, (attempt, held)) = match raced {
            Raced::Primary(Ok(opened)) => (tier, before.to_vec(), opened),
            Raced::Primary(Err(err)) => {
                return StepEnd::FellThrough(StepResult::UpstreamFailed, Some(err));
            }
            Raced::Hedge(hedge_tier, opened) => {
                // The slow first choice counts as failed: the plan moved past it.
                let mut before = before.to_vec();
                before.push(StepResult::UpstreamFailed);
                (hedge_tier, before, opened)
            }
            Raced::BothFailed(hedge_tier, err) => return StepEnd::BothFellThrough(hedge_tier, err),
        };
        let upstream_routing = held.iter().find_map(|event| match event {
            AttemptEvent::UpstreamRouted(routing) => Some(routing.clone()),
            _ => None,
        });
        let result = StepResult::UpstreamAnswered {
            degraded: upstream_routing.as_ref().is_some_and(|r| r.degraded),
        };
        let Some(routing) = self.routing(&before, result, upstream_routing) else {
            return StepEnd::FellThrough(
                StepResult::UpstreamFailed,
                Some(NodeError::Internal(
                    "the plan and its results disagree".into(),
                )),
            );
        };
        self.stream_answer(routing, held, attempt, tx).await;
        self.metrics
            .upstream_duration
            .with_label_values(&[tier.as_str()])
            .observe(call_started.elapsed().as_secs_f64());
        StepEnd::Answered
    }

    /// Starts a call to `tier` and waits for its first token, which must come by `commit_by`
    /// (nothing reaches the client before it, so any failure until then can move on). Counts
    /// the call; a call dropped unfinished (client gone, hedge lost) is not counted.
    pub(super) async fn open_upstream(
        &self,
        tiers: &dyn TierStarter,
        tier: Tier,
        request: NodeRequest,
        commit_by: Instant,
    ) -> Result<Opened, NodeError> {
        let started = Instant::now();
        let opening = async {
            let mut attempt = tiers
                .start_upstream(tier, &request, self.whole_answer, commit_by)
                .await?;
            let mut held = Vec::new();
            first_token(&mut attempt, &mut held).await?;
            Ok::<_, NodeError>((attempt, held))
        };
        let result = tokio::time::timeout_at((commit_by + COMMIT_GRACE).into(), opening)
            .await
            .unwrap_or_else(|_| {
                Err(NodeError::DeadlineExceeded(format!(
                    "{tier} gave no first token in its share of the deadline"
                )))
            });
        let outcome = match &result {
            Ok(_) => {
                self.hedging.record(tier, started.elapsed());
                "ok"
            }
            Err(err) => {
                tracing::warn!(upstream = %tier, error = %err, "upstream attempt failed; trying the next step");
                err.as_label()
            }
        };
        self.metrics
            .upstream_requests
            .with_label_values(&[tier.as_str(), outcome])
            .inc();
        result
    }

    /// Takes one retry from the node's budget for a call to `tier`; counts the outcome under
    /// `kind` ("retries" or "hedges").
    pub(super) fn retry_allowed(&self, tier: Tier, kind: &str) -> bool {
        let sent = self.with_retry_budget(|budget| budget.try_withdraw(Instant::now()));
        let counter = if kind == "hedges" {
            &self.metrics.upstream_hedges
        } else {
            &self.metrics.upstream_retries
        };
        let outcome = if sent { "sent" } else { "budget_exhausted" };
        counter.with_label_values(&[tier.as_str(), outcome]).inc();
        sent
    }

    /// The tiers of the plan's first `steps` steps, in plan order.
    pub(super) fn tiers_of_steps(&self, steps: usize) -> impl Iterator<Item = Tier> + '_ {
        self.decision.plan[..steps]
            .iter()
            .map(|step| self.decision.step_tier(*step))
    }

    /// The request as it goes up: one more hop, this node's tiers marked as tried.
    pub(super) fn forwarded_request(&self, before: &[StepResult]) -> NodeRequest {
        let mut request = self.request.clone();
        if let Some(input) = &self.forwarded_input {
            request.input = input.clone();
        }
        let forwarding = &mut request.forwarding;
        forwarding.hop_count += 1;
        let tried_here = self.tiers_of_steps(before.len());
        add_tiers(
            &mut forwarding.tiers_tried,
            tried_here.chain([self.decision.local_tier]),
        );
        forwarding.via.push(self.node_name.to_owned());
        request
    }

    /// The routing an answer reports, named by the router from the steps' results. An upstream
    /// tiergate node's own routing says which tier finally answered.
    fn routing(
        &self,
        before: &[StepResult],
        answered: StepResult,
        upstream: Option<RoutingInfo>,
    ) -> Option<RoutingInfo> {
        let mut results = before.to_vec();
        results.push(answered);
        let outcome = self.decision.outcome(&results).ok()?;
        let mut tiers_tried = outcome.tiers_tried;
        let (tier, node) = match &upstream {
            Some(r) => {
                add_tiers(&mut tiers_tried, r.tiers_tried.iter().copied());
                (r.tier, r.node.clone())
            }
            None if matches!(answered, StepResult::UpstreamAnswered { .. }) => {
                (outcome.tier, outcome.tier.as_str().to_owned())
            }
            None => (outcome.tier, self.node_name.to_owned()),
        };
        // Tiers tried before the one that answered.
        tiers_tried.retain(|t| *t != tier);
        Some(RoutingInfo {
            tier,
            reason: outcome.reason.as_str().to_owned(),
            complexity: self.decision.complexity.score,
            local_confidence: outcome
                .local_confidence
                .map(f64::from)
                .or(upstream.as_ref().and_then(|r| r.local_confidence)),
            degraded: outcome.degraded,
            node,
            tiers_tried,
            cache: upstream.as_ref().and_then(|r| r.cache),
        })
    }
}

/// Reads `attempt` until its first token is held (or it ended with a real stop), keeping every
/// event in `held`. An attempt that ends, fails or closes before that has failed its step:
/// nothing has reached the client, so the plan can move on.
async fn first_token(
    attempt: &mut AttemptStream,
    held: &mut Vec<AttemptEvent>,
) -> Result<(), NodeError> {
    let mut seen = 0;
    loop {
        for event in &held[seen..] {
            match event {
                AttemptEvent::Delta { text, .. } if !text.is_empty() => return Ok(()),
                AttemptEvent::Done(summary) => return empty_answer(summary.finish_reason),
                _ => {}
            }
        }
        seen = held.len();
        match attempt.next().await {
            Some(Ok(event)) => held.push(event),
            Some(Err(err)) => return Err(err),
            None => {
                return Err(NodeError::Upstream(
                    "the attempt ended before its first token".to_owned(),
                ));
            }
        }
    }
}

/// An attempt that ended with no text: an answer only when the model really stopped.
fn empty_answer(finish_reason: FinishReason) -> Result<(), NodeError> {
    match finish_reason {
        FinishReason::Stop => Ok(()),
        FinishReason::Deadline => Err(NodeError::DeadlineExceeded(
            "the deadline passed before the first token".to_owned(),
        )),
        FinishReason::LatencyBudget => Err(NodeError::DeadlineExceeded(
            "the device's latency budget ran out before the first token".to_owned(),
        )),
        FinishReason::Length => Err(NodeError::Upstream(
            "the attempt ended with no text (finish reason length)".to_owned(),
        )),
    }
}

/// Appends each tier not already in `tiers`, keeping the order they were tried in.
pub(super) fn add_tiers(tiers: &mut Vec<Tier>, more: impl IntoIterator<Item = Tier>) {
    for tier in more {
        if !tiers.contains(&tier) {
            tiers.push(tier);
        }
    }
}
