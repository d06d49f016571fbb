//! The `tiergate.v1.Inference` gRPC service: translates the wire to the node and back.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tiergate_proto::v1 as pb;
use tiergate_upstream::PEER_KEY_METADATA;
use tonic::{Request, Response, Status};

use crate::auth::Tenant;
use crate::node::{
    CacheStatus, NodeApi, NodeError, NodeRequest, StreamEvent, constraint_for_model,
};
use crate::shell::{REQUEST_ID, fresh_request_id, is_fit_request_id};
use tiergate_api::wire::{answer_to_pb, logprobs_to_pb, request_from_pb, routing_to_pb};

/// The gRPC face of a node.
pub struct InferenceService {
    node: Arc<dyn NodeApi>,
}

impl std::fmt::Debug for InferenceService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferenceService")
            .field("node", &self.node.name())
            .finish()
    }
}

impl InferenceService {
    pub fn new(node: Arc<dyn NodeApi>) -> Self {
        InferenceService { node }
    }

    /// The node's request, or the rejection (counted in metrics as HTTP counts its own).
    fn node_request(&self, request: Request<pb::GenerateRequest>) -> Result<NodeRequest, Status> {
        let now = Instant::now();
        let timeout = grpc_timeout(request.metadata());
        let header_id = request
            .metadata()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| is_fit_request_id(v))
            .map(str::to_owned);
        // Forwarding information (hop count, tiers tried) steers routing: only a peer node may
        // send it, one with a verified client certificate (mTLS) or the deployment's peer key.
        // From anyone else it is ignored, not refused: the request is still answered.
        let from_peer = request.peer_certs().is_some_and(|certs| !certs.is_empty())
            || self.node.trusts_peer_key(
                (request.metadata().get(PEER_KEY_METADATA)).and_then(|v| v.to_str().ok()),
            );
        let tenant = request.extensions().get::<Arc<Tenant>>().cloned();
        let trace = crate::shell::trace_of(request.extensions());
        let mut message = request.into_inner();
        if !from_peer && message.forwarding.take().is_some() {
            tracing::debug!("forwarding information from a client that is not a peer ignored");
        }
        message.request_id = chosen_request_id(&message.request_id, header_id);
        // The request's span carries the id its client (or the node below) chose, so that the
        // same id shows in every node's logs along the request's path.
        tracing::Span::current().record("request_id", message.request_id.as_str());
        // An empty model is the routed default; otherwise the same rule as HTTP's `model`.
        let model = (!message.model.is_empty()).then(|| message.model.clone());
        let checked =
            request_from_pb(message, self.node.limits(), timeout, now).and_then(|mut request| {
                request.trace = trace;
                if let Some(model) = &model {
                    request.constraint =
                        constraint_for_model(&self.node.models(), model, request.constraint)?;
                }
                if let Some(tenant) = tenant {
                    // No model is the routed default, which the tenant must be allowed too.
                    let routed = self.node.models().into_iter().find(|card| !card.local);
                    let asked = model.or_else(|| routed.map(|card| card.id));
                    if let Some(asked) = asked {
                        tenant.check_model(&asked)?;
                    }
                    request.tenant = Some(tenant);
                }
                Ok(request)
            });
        checked.map_err(|err| {
            self.node.count_rejection(&err);
            Status::from(err)
        })
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::inference_server::Inference for InferenceService {
    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<pb::GenerateResponse>, Status> {
        let request = self.node_request(request)?;
        let id = request.request_id.clone();
        let answer = self.node.generate(request).await?;
        let mut response = Response::new(answer_to_pb(&answer));
        cache_metadata(response.metadata_mut(), answer.routing.cache);
        request_id_metadata(response.metadata_mut(), &id);
        Ok(response)
    }

    type GenerateStreamStream = EventStream;

    async fn generate_stream(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        let request = self.node_request(request)?;
        let id = request.request_id.clone();
        let mut events = self.node.generate_stream(request).await?;
        // The first event is `Routed`, already here: it says whether the answer is a cache hit
        // before the response metadata goes out.
        let first = events.next().await;
        let cache = match &first {
            Some(Ok(StreamEvent::Routed(routing))) => routing.cache,
            _ => None,
        };
        let events = futures::stream::iter(first).chain(events);
        let stream = events.map(|event| {
            let event = match event.map_err(Status::from)? {
                StreamEvent::Routed(routing) => {
                    pb::generate_stream_response::Event::Routed(routing_to_pb(&routing))
                }
                StreamEvent::Delta { text, logprobs } => {
                    pb::generate_stream_response::Event::Delta(pb::TextDelta {
                        text,
                        logprobs: logprobs_to_pb(&logprobs),
                    })
                }
                StreamEvent::Done(answer) => {
                    // The deltas carried the text; the closing message carries the rest.
                    let mut done = answer_to_pb(&answer);
                    done.text.clear();
                    pb::generate_stream_response::Event::Done(done)
                }
            };
            Ok(pb::GenerateStreamResponse { event: Some(event) })
        });
        let mut response = Response::new(Box::pin(stream) as EventStream);
        cache_metadata(response.metadata_mut(), cache);
        request_id_metadata(response.metadata_mut(), &id);
        Ok(response)
    }

    async fn explain(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let request = self.node_request(request)?;
        let id = request.request_id.clone();
        let explanation = self.node.explain(request).await?;
        let decision_json = serde_json::to_string(&explanation.decision)
            .map_err(|e| Status::from(NodeError::Internal(e.to_string())))?;
        let mut response = Response::new(pb::ExplainResponse {
            routing: Some(routing_to_pb(&explanation.routing)),
            decision_json,
        });
        request_id_metadata(response.metadata_mut(), &id);
        Ok(response)
    }
}

/// Reads the `grpc-timeout` header ("100m" = 100 ms; units H M S m u n).
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(value)
}

fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The proto's `request_id` when the client set a fit one, else the `x-request-id` metadata
/// (the serving stack made one when the client gave none), else a fresh one.
fn chosen_request_id(proto: &str, header: Option<String>) -> String {
    if is_fit_request_id(proto) {
        proto.to_owned()
    } else {
        header.unwrap_or_else(fresh_request_id)
    }
}

/// The answer's `x-request-id`: the id the request was served under.
fn request_id_metadata(metadata: &mut tonic::metadata::MetadataMap, id: &str) {
    if let Ok(value) = tonic::metadata::MetadataValue::try_from(id) {
        metadata.insert(REQUEST_ID, value);
    }
}

/// `x-tiergate-cache: hit` on an answer served from a response cache.
fn cache_metadata(metadata: &mut tonic::metadata::MetadataMap, cache: Option<CacheStatus>) {
    if let Some(cache) = cache {
        metadata.insert(
            "x-tiergate-cache",
            tonic::metadata::MetadataValue::from_static(cache.as_str()),
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn the_proto_request_id_wins_when_fit() {
        let header = Some("from-header".to_owned());
        assert_eq!(
            chosen_request_id("from-proto", header.clone()),
            "from-proto"
        );
        assert_eq!(chosen_request_id("", header.clone()), "from-header");
        assert_eq!(chosen_request_id("has space", header), "from-header");
        assert_eq!(chosen_request_id("", None).len(), 16);
    }

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("123456789m"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
    }
}
