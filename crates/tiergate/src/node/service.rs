//! The node: its local engine, its upstream clients and its router, behind [`NodeApi`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tiergate_engine::{Engine, EngineError, ErrorClass, GenerationEvent, GenerationRequest};
use tiergate_router::features::PromptFeatures;
use tiergate_router::tier::{Tier, TierConstraint};
use tiergate_router::{
    BudgetConfig, Decision, NodeView, RetryBudget, RetryBudgetConfig, RouterConfig, Signals, Step,
    UpstreamView, decide,
};
use tiergate_upstream::{
    CallLimits, CloudClient, CloudEvent, PeerKey, RegionalClient, UpstreamError,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use super::attempt::{AttemptEvent, AttemptStream, AttemptSummary, TokenConfidence};
use super::executor::{TierStarter, Walk};
use super::hedge::{HedgeConfig, Hedging};
use super::privacy_guard;
use super::{
    Answer, AnswerStream, Explanation, FinishReason, Input, Limits, ModelCard, NodeApi, NodeError,
    NodeRequest, Role, RoutingInfo, StreamEvent, Usage,
};
use crate::cache::{RequestCache, ResponseCache};
use crate::metrics::NodeMetrics;
use crate::privacy::PrivacyConfig;
use tiergate_api::wire::{answer_from_pb, finish_reason_from_str, routing_from_pb};

/// Events buffered between the walk and the client; small, since a slow client should slow
/// generation rather than grow memory.
const STREAM_BUFFER: usize = 32;

/// What a node is made of.
#[derive(Debug)]
pub struct NodeParts {
    pub name: String,
    pub tier: Tier,
    pub routed_model: String,
    pub engine: Engine,
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

    /// The deployment's peer key (`[node] peer_key_file`), if the node has one.
    pub fn peer_key(&self) -> Option<&PeerKey> {
        self.parts.peer_key.as_ref()
    }

    /// The routing decision for a request: the text of its last user turn, link health. No
    /// inference: the local model's surprise at the prompt is checked by the gated local step
    /// from its own prefill.
    fn decision(&self, request: &NodeRequest) -> Decision {
        let upstreams = self.upstream_views(Instant::now());
        let view = NodeView {
            local_tier: self.parts.tier,
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
        let cache = (node.parts.cache.as_ref())
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
                id: self.parts.engine.model().name.clone(),
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
    ) -> BoxFuture<'_, Result<AttemptStream, NodeError>> {
        let generation = GenerationRequest {
            prompt: engine_prompt(&request.input),
            sampling: engine_sampling(&request.sampling),
            deadline: Some(request.deadline),
        };
        let model = self.parts.engine.model().name.clone();
        let result = self
            .parts
            .engine
            .generate_stream(generation)
            .map_err(engine_error)
            .map(|events| local_attempt(events, model));
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
    }
}

fn engine_error(err: EngineError) -> NodeError {
    match err.class() {
        ErrorClass::InvalidRequest => NodeError::InvalidArgument(err.to_string()),
        ErrorClass::Overloaded => NodeError::Overloaded(err.to_string()),
        ErrorClass::Unavailable => NodeError::Unavailable(err.to_string()),
        ErrorClass::Internal => NodeError::Internal(err.to_string()),
    }
}

fn upstream_error(err: UpstreamError) -> NodeError {
    use tiergate_upstream::ErrorKind;
    let message = err.to_string();
    match err.kind() {
        ErrorKind::Timeout => NodeError::DeadlineExceeded(message),
        ErrorKind::Unavailable | ErrorKind::Connect => NodeError::Unavailable(message),
        ErrorKind::RateLimited => NodeError::Overloaded(message),
        _ => NodeError::Upstream(message),
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

fn local_attempt(events: tiergate_engine::GenerationStream, model: String) -> AttemptStream {
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
                })),
                Ok(GenerationEvent::Finished(summary)) => {
                    Some(Ok(AttemptEvent::Done(AttemptSummary {
                        finish_reason: finish_from_engine(summary.finish_reason),
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

fn regional_attempt(
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

fn cloud_attempt(events: tiergate_upstream::CloudStream, model: String) -> AttemptStream {
    events
        .map(move |item| match item {
            Err(err) => Err(upstream_error(err)),
            Ok(CloudEvent::Delta(text)) => Ok(AttemptEvent::Delta {
                text,
                confidence: None,
            }),
            Ok(CloudEvent::Done(done)) => {
                Ok(AttemptEvent::Done(cloud_answer(done, &model).summary))
            }
        })
        .boxed()
}

/// A whole cloud answer, in the attempt's terms.
struct WholeAnswer {
    text: String,
    summary: AttemptSummary,
}

fn cloud_answer(done: tiergate_upstream::CloudCompletion, model: &str) -> WholeAnswer {
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
    }
}

impl From<Answer> for WholeAnswer {
    fn from(answer: Answer) -> Self {
        WholeAnswer {
            text: answer.text,
            summary: AttemptSummary {
                finish_reason: answer.finish_reason,
                usage: answer.usage,
                model: answer.model,
            },
        }
    }
}

/// An answer that arrived in one piece, as the attempt events the executor walks.
fn whole_attempt(routing: Option<RoutingInfo>, answer: impl Into<WholeAnswer>) -> AttemptStream {
    let answer = answer.into();
    let events = routing
        .map(AttemptEvent::UpstreamRouted)
        .into_iter()
        .chain([
            AttemptEvent::Delta {
                text: answer.text,
                confidence: None,
            },
            AttemptEvent::Done(answer.summary),
        ])
        .map(Ok);
    futures::stream::iter(events).boxed()
}
