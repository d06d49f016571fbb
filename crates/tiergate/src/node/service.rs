//! The node: its local engine, its upstream clients and its router, behind [`NodeApi`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tiergate_engine::GenerationRequest;
use tiergate_router::features::PromptFeatures;
use tiergate_router::tier::{Tier, TierConstraint};
use tiergate_router::{
    BudgetConfig, Decision, NodeView, RetryBudget, RetryBudgetConfig, RouterConfig, Signals, Step,
    UpstreamView, decide,
};
use tiergate_upstream::{CallLimits, CloudClient, PeerKey, RegionalClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use super::tier_events::{
    cloud_answer, cloud_attempt, engine_error, local_attempt, local_stall_grace, regional_attempt,
    until_stalled, upstream_error, whole_attempt,
};

use super::attempt::AttemptStream;
use super::executor::{TierStarter, Walk};
use super::hedge::{HedgeConfig, Hedging};
use super::privacy_guard;
use super::{
    Answer, AnswerStream, Explanation, Input, Limits, ModelCard, NodeApi, NodeError, NodeRequest,
    Role, RoutingInfo, StreamEvent,
};
use crate::cache::{RequestCache, ResponseCache};
use crate::metrics::NodeMetrics;
use crate::privacy::PrivacyConfig;
use tiergate_api::wire::answer_from_pb;

/// Events buffered between the walk and the client; small, since a slow client should slow
/// generation rather than grow memory.
const STREAM_BUFFER: usize = 32;

/// What a node is made of.
#[derive(Debug)]
pub struct NodeParts {
    pub name: String,
    pub tier: Tier,
    pub routed_model: String,
    /// The local engine; a model reload swaps it.
    pub engine: super::EngineSlot,
    pub router: RouterConfig,
    /// How a request's deadline is split across the steps of its plan.
    pub budget: BudgetConfig,
    /// The retry budget's settings (`[retry]`).
    pub retry: RetryBudgetConfig,
    /// When upstream steps are hedged (`[hedge]`).
    pub hedge: HedgeConfig,
    pub regional: Option<RegionalClient>,
    pub cloud: Option<CloudClient>,
    pub limits: Limits,
    pub metrics: NodeMetrics,
    /// The response cache, when `[cache]` enables it.
    pub cache: Option<Arc<ResponseCache>>,
    /// The deployment's peer key (`[node] peer_key_file`): who may send forwarding information.
    pub peer_key: Option<PeerKey>,
    /// Personal-data detectors and what a finding does (`[privacy]`).
    pub privacy: PrivacyConfig,
    /// How long local generation may run: the device's latency budget times
    /// `stop_at_budget_share` (`[device]`); `None`: until the request's deadline.
    pub generation_budget: Option<Duration>,
    /// A local engine that has had work this long without moving (`Engine::stalled_for`) is
    /// stuck: local steps fail at once instead of waiting on it (`server.engine_stall_timeout`).
    pub engine_stall_timeout: Duration,
}

/// A running node. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Node {
    parts: NodeParts,
    /// Shared by every request's walk: failovers draw on it.
    retry_budget: Mutex<RetryBudget>,
    hedging: Hedging,
}

impl Node {
    pub fn new(parts: NodeParts) -> Arc<Node> {
        let retry_budget = Mutex::new(RetryBudget::new(parts.retry, Instant::now()));
        let hedging = Hedging::new(parts.hedge);
        Arc::new(Node {
            parts,
            retry_budget,
            hedging,
        })
    }

    pub fn metrics(&self) -> &NodeMetrics {
        &self.parts.metrics
    }

    /// The local engine (a model reload swaps what it holds).
    pub fn engine(&self) -> &super::EngineSlot {
        &self.parts.engine
    }

    /// The deployment's peer key (`[node] peer_key_file`), if the node has one.
    pub fn peer_key(&self) -> Option<&PeerKey> {
        self.parts.peer_key.as_ref()
    }

    /// The routing decision for a request: the text of its last user turn, link health. No
    /// inference: the local model's surprise at the prompt is checked by the gated local step
    /// from its own prefill.
    fn decision(&self, request: &NodeRequest) -> Decision {
        let upstreams = self.upstream_views(Instant::now());
        // The gate calibrated on the graph the engine runs now (a reload may change it) and the
        // CPU kind it runs on.
        let engine = self.parts.engine.current();
        let view = NodeView {
            local_tier: self.parts.tier,
            local_variant: Some(engine.model().variant.as_str()),
            local_cpu: Some(engine.model().cpu_kind.as_str()),
            upstreams,
        };
        let forwarding = tiergate_router::Forwarding {
            hop_count: request.forwarding.hop_count,
            tiers_tried: request.forwarding.tiers_tried.clone(),
        };
        let signals = Signals {
            features: PromptFeatures::extract(request.input.routing_text()),
            context: request.input.context(),
        };
        let decision = decide(
            &self.parts.router,
            &signals,
            &view,
            request.constraint,
            &forwarding,
        );
        self.parts
            .metrics
            .complexity
            .observe(decision.complexity.score);
        decision
    }

    /// What link health says of each upstream now; the gauges follow.
    fn upstream_views(&self, now: Instant) -> Vec<UpstreamView> {
        let mut upstreams = Vec::new();
        if let Some(regional) = &self.parts.regional {
            upstreams.push(UpstreamView {
                tier: Tier::Regional,
                available: regional.is_available(now),
            });
        }
        if let Some(cloud) = &self.parts.cloud {
            upstreams.push(UpstreamView {
                tier: Tier::Cloud,
                available: cloud.is_available(now),
            });
        }
        for upstream in &upstreams {
            self.parts
                .metrics
                .upstream_available
                .with_label_values(&[upstream.tier.as_str()])
                .set(if upstream.available { 1.0 } else { 0.0 });
        }
        upstreams
    }

    /// Applies the privacy guard (pinning the request, or redacting what goes upstream), then
    /// walks the plan in a task of its own; the stream is the walk's events.
    async fn start(
        self: Arc<Self>,
        mut request: NodeRequest,
        whole_answer: bool,
    ) -> Result<AnswerStream, NodeError> {
        let started = Instant::now();
        // The tenant's tiers narrow the request's constraint, and its token budget is charged.
        if let Some(tenant) = request.tenant.clone()
            && let Err(err) = tenant.admit(&mut request)
        {
            self.count_rejection(&err);
            return Err(err);
        }
        let forwarded_input =
            match privacy_guard::guard(&self.parts.privacy, &mut request, &self.parts.metrics) {
                Ok(input) => input,
                Err(err) => {
                    self.count_rejection(&err);
                    return Err(err);
                }
            };
        let decision = self.decision(&request);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let node = Arc::clone(&self);
        // The cache keeps text, not log-probabilities: a request asking for them neither reads
        // nor writes it.
        let cache = (node.parts.cache.as_ref())
            .filter(|_| request.sampling.logprobs.is_none())
            .and_then(|cache| RequestCache::new(cache, &request, node.parts.tier));
        // The walk runs in the request's span, so its log lines carry the request id.
        let span = tracing::Span::current();
        tokio::spawn(
            async move {
                node.parts.metrics.in_flight.inc();
                let walk = Walk {
                    cache: cache.as_ref(),
                    node_name: &node.parts.name,
                    request,
                    decision: &decision,
                    metrics: &node.parts.metrics,
                    budget: &node.parts.budget,
                    retry_budget: &node.retry_budget,
                    hedging: &node.hedging,
                    forwarded_input,
                    started,
                    whole_answer,
                };
                walk.run(node.as_ref(), tx).await;
                node.parts.metrics.in_flight.dec();
                // The walk's calls may have moved a breaker: the gauges follow at once.
                node.upstream_views(Instant::now());
            }
            .instrument(span),
        );
        Ok(ReceiverStream::new(rx).boxed())
    }
}

impl NodeApi for Arc<Node> {
    fn generate(&self, request: NodeRequest) -> BoxFuture<'_, Result<Answer, NodeError>> {
        async move {
            let mut events = Arc::clone(self).start(request, true).await?;
            while let Some(event) = events.next().await {
                // The walk puts the whole text in `Done`; deltas only matter to streams.
                if let StreamEvent::Done(answer) = event? {
                    return Ok(answer);
                }
            }
            Err(NodeError::Internal(
                "the answer ended without finishing".to_owned(),
            ))
        }
        .boxed()
    }

    fn generate_stream(
        &self,
        request: NodeRequest,
    ) -> BoxFuture<'_, Result<AnswerStream, NodeError>> {
        async move {
            let mut events = Arc::clone(self).start(request, false).await?;
            // An error before anything was answered is the call's error, not the stream's.
            match events.next().await {
                Some(Err(err)) => Err(err),
                Some(Ok(first)) => Ok(futures::stream::iter([Ok(first)]).chain(events).boxed()),
                None => Err(NodeError::Internal("no answer was started".to_owned())),
            }
        }
        .boxed()
    }

    fn explain(&self, mut request: NodeRequest) -> BoxFuture<'_, Result<Explanation, NodeError>> {
        async move {
            // The tenant and the guard may pin the request: the explanation must say where it
            // really goes (nothing is charged for an explanation).
            if let Some(tenant) = &request.tenant {
                request.constraint = tenant.narrow(request.constraint)?;
            }
            privacy_guard::guard(&self.parts.privacy, &mut request, &self.parts.metrics)?;
            let decision = self.decision(&request);
            let tier = match decision.plan.first() {
                Some(Step::Local { .. }) => self.parts.tier,
                Some(Step::Upstream(tier)) => *tier,
                None => {
                    return Err(NodeError::Unavailable(
                        "no tier allowed by the request's constraint is reachable".to_owned(),
                    ));
                }
            };
            let routing = RoutingInfo {
                tier,
                reason: decision.reason.as_str().to_owned(),
                complexity: decision.complexity.score,
                local_confidence: None,
                degraded: decision.degraded,
                node: self.parts.name.clone(),
                tiers_tried: Vec::new(),
                cache: None,
            };
            let decision = serde_json::to_value(&decision)
                .map_err(|e| NodeError::Internal(format!("cannot serialize the decision: {e}")))?;
            Ok(Explanation { routing, decision })
        }
        .boxed()
    }

    fn models(&self) -> Vec<ModelCard> {
        vec![
            ModelCard {
                id: self.parts.routed_model.clone(),
                tier: self.parts.tier,
                local: false,
            },
            ModelCard {
                id: self.parts.engine.current().model().name.clone(),
                tier: self.parts.tier,
                local: true,
            },
        ]
    }

    fn limits(&self) -> &Limits {
        &self.parts.limits
    }

    fn name(&self) -> &str {
        &self.parts.name
    }

    fn refresh_metrics(&self) {
        self.upstream_views(Instant::now());
        let queued = self.parts.engine.current().queue_depth();
        (self.parts.metrics.engine_queue_depth).set(i64::try_from(queued).unwrap_or(i64::MAX));
    }

    fn trusts_peer_key(&self, presented: Option<&str>) -> bool {
        match (&self.parts.peer_key, presented) {
            (Some(key), Some(presented)) => key.matches(presented),
            _ => false,
        }
    }

    fn count_rejection(&self, err: &NodeError) {
        self.parts
            .metrics
            .requests
            .with_label_values(&["none", "none", err.as_label()])
            .inc();
    }
}

impl TierStarter for Node {
    fn start_local(
        &self,
        request: &NodeRequest,
        score_prompt: bool,
    ) -> BoxFuture<'_, Result<AttemptStream, NodeError>> {
        // The device's latency budget ends generation when it comes before the request's
        // deadline; the answer says so. It counts from the request's arrival at this node, as
        // the user's latency does: a local step after a failed upstream attempt, or after the
        // prompt scoring, has only what is left of it.
        let budget_at = (self.parts.generation_budget).map(|budget| request.arrived + budget);
        let budget_first = budget_at.is_some_and(|at| at < request.deadline);
        let deadline = budget_at.map_or(request.deadline, |at| at.min(request.deadline));
        let generation = GenerationRequest {
            prompt: engine_prompt(&request.input),
            sampling: engine_sampling(&request.sampling),
            deadline: Some(deadline),
            score_prompt,
        };
        // This request keeps this handle: a model swap does not touch it.
        let engine = self.parts.engine.current();
        if let Some(stalled) = engine.stuck_past(self.parts.engine_stall_timeout) {
            // Known stuck: the plan moves on at once instead of spending this step's share of
            // the deadline on it; a request with nowhere else to go fails fast.
            let err = NodeError::Unavailable(format!(
                "the local engine is stuck: it has had work for {} s without progress",
                stalled.as_secs()
            ));
            return futures::future::ready(Err(err)).boxed();
        }
        let model = engine.model().name.clone();
        let result = engine
            .generate_stream(generation)
            .map_err(engine_error)
            .map(|events| {
                let engine = engine.clone();
                let grace = Arc::new(move || local_stall_grace(engine.longest_pass()));
                let attempt = local_attempt(events, model, budget_first);
                until_stalled(attempt, deadline, grace)
            });
        futures::future::ready(result).boxed()
    }

    fn start_upstream(
        &self,
        tier: Tier,
        request: &NodeRequest,
        whole_answer: bool,
        commit_by: Instant,
    ) -> BoxFuture<'_, Result<AttemptStream, NodeError>> {
        // The future outlives the borrow: the clients take the node's request as it is.
        let request = request.clone();
        let deadline = CallLimits {
            deadline: Some(request.deadline),
            commit_by: Some(commit_by),
        };
        async move {
            match tier {
                Tier::Regional => {
                    let client = self.parts.regional.as_ref().ok_or_else(|| {
                        NodeError::Unavailable("no regional upstream is configured".to_owned())
                    })?;
                    if whole_answer {
                        let answer = client
                            .generate(&request, deadline)
                            .await
                            .map_err(upstream_error)
                            .and_then(answer_from_pb)?;
                        return Ok(whole_attempt(Some(answer.routing.clone()), answer));
                    }
                    let events = client
                        .generate_stream(&request, deadline)
                        .await
                        .map_err(upstream_error)?;
                    Ok(regional_attempt(events))
                }
                Tier::Cloud => {
                    let client = self.parts.cloud.as_ref().ok_or_else(|| {
                        NodeError::Unavailable("no cloud upstream is configured".to_owned())
                    })?;
                    if whole_answer {
                        let done = client
                            .generate(&request, deadline)
                            .await
                            .map_err(upstream_error)?;
                        return Ok(whole_attempt(None, cloud_answer(done, client.model())));
                    }
                    let events = client
                        .generate_stream(&request, deadline)
                        .await
                        .map_err(upstream_error)?;
                    Ok(cloud_attempt(events, client.model().to_owned()))
                }
                Tier::Edge => Err(NodeError::Internal(
                    "the edge is never an upstream".to_owned(),
                )),
            }
        }
        .boxed()
    }

    fn upstreams_available_in(&self, constraint: TierConstraint) -> Option<Duration> {
        let now = Instant::now();
        let regional = (self.parts.regional.as_ref())
            .filter(|_| constraint.allows_upstream(Tier::Regional))
            .and_then(|client| client.available_in(now));
        let cloud = (self.parts.cloud.as_ref())
            .filter(|_| constraint.allows_upstream(Tier::Cloud))
            .and_then(|client| client.available_in(now));
        regional.into_iter().chain(cloud).min()
    }
}

fn engine_prompt(input: &Input) -> tiergate_engine::Prompt {
    match input {
        Input::Text(text) => tiergate_engine::Prompt::Text(text.clone()),
        Input::Chat(messages) => tiergate_engine::Prompt::Chat(
            messages
                .iter()
                .map(|m| tiergate_engine::ChatMessage {
                    role: match m.role {
                        Role::System => tiergate_engine::Role::System,
                        Role::User => tiergate_engine::Role::User,
                        Role::Assistant => tiergate_engine::Role::Assistant,
                    },
                    content: m.content.clone(),
                })
                .collect(),
        ),
    }
}

fn engine_sampling(sampling: &super::Sampling) -> tiergate_engine::SamplingParams {
    tiergate_engine::SamplingParams {
        max_new_tokens: sampling.max_new_tokens as usize,
        temperature: sampling.temperature.unwrap_or(0.0),
        top_k: sampling.top_k.unwrap_or(0) as usize,
        top_p: sampling.top_p.unwrap_or(1.0),
        seed: sampling.seed,
        stop: sampling.stop.clone(),
        logprobs: sampling.logprobs.map(|k| k as usize),
    }
}
