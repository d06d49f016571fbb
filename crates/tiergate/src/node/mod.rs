//! A tiergate node: the front-end-neutral API ([`NodeApi`]), its error type and limits.

mod attempt;
mod cached;
mod deliver;
mod engine_slot;
mod executor;
#[cfg(test)]
mod executor_tests;
mod hedge;
mod hedged;
mod privacy_guard;
mod service;
mod tier_events;

use futures::future::BoxFuture;

// The node's request/answer model lives in its own crate, shared with the upstream clients.
pub use engine_slot::EngineSlot;
pub use hedge::{HedgeConfig, HedgeDelay};
pub use service::{Node, NodeParts};
pub use tiergate_api::request as api;
pub use tiergate_api::{
    Answer, AnswerStream, CacheStatus, FinishReason, Forwarding, Input, Limits, MAX_TOP_LOGPROBS,
    Message, ModelCard, NodeError, NodeRequest, Role, RoutingInfo, Sampling, StreamEvent,
    TokenLogprob, Usage, constraint_for_model, error, limits,
};

/// The routing decision for a request, without generating.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The tier the plan would try first, and why.
    pub routing: RoutingInfo,
    /// The full decision, as `tiergate route explain --json` prints it.
    pub decision: serde_json::Value,
}

/// What the gRPC and HTTP front ends call. One implementation walks the routing plan across
/// tiers; front ends only translate wire formats.
pub trait NodeApi: Send + Sync + 'static {
    /// Answers in one piece.
    fn generate(&self, request: NodeRequest) -> BoxFuture<'_, Result<Answer, NodeError>>;
    /// Answers as a stream: `Routed`, deltas, `Done`. Errors before the stream starts are returned
    /// here; errors after it started arrive as the stream's last item.
    fn generate_stream(
        &self,
        request: NodeRequest,
    ) -> BoxFuture<'_, Result<AnswerStream, NodeError>>;
    /// The routing decision without generating.
    fn explain(&self, request: NodeRequest) -> BoxFuture<'_, Result<Explanation, NodeError>>;
    /// The models this node answers with (its own and the tiers above it).
    fn models(&self) -> Vec<ModelCard>;
    /// The request limits front ends validate against.
    fn limits(&self) -> &Limits;
    /// The node's name, as it appears in `RoutingInfo::node`.
    fn name(&self) -> &str;
    /// Brings gauges that follow other state (link health) up to date, before a scrape.
    fn refresh_metrics(&self) {}
    /// Counts a request a front end refused before it reached the node (bad input).
    fn count_rejection(&self, _err: &NodeError) {}
    /// Whether `presented` is the deployment's peer key (`[node] peer_key_file`); never without
    /// one configured.
    fn trusts_peer_key(&self, _presented: Option<&str>) -> bool {
        false
    }
}
