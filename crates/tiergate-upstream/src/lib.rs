//! Clients for the tiers above a node.
//!
//! - [`cloud`]: the cloud tier, any OpenAI-compatible chat-completions endpoint over HTTPS
//!   (hyper + rustls), whole or streamed (SSE, parsed by [`sse`]).
//! - [`regional`]: the regional tier, other tiergate nodes over gRPC, balanced over endpoints
//!   ([`balance`]) whose health is watched (grpc.health.v1).
//!
//! Both feed a per-link `tiergate_router::health::LinkHealth` from every call (passive
//! observation), refuse calls at once while a link's breaker is open, and end calls at the
//! caller's deadline. Failures are [`UpstreamError`]s with a kind, `is_retryable()` and a
//! metric label.

/// The header (HTTP) and metadata key (gRPC) of a request's id, sent to both tiers above.
pub const REQUEST_ID: &str = "x-request-id";

/// Largest answer accepted from a tier above, whole or streamed (its text); a bigger one is a
/// protocol error, never truncated nor gathered without end.
pub(crate) const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

pub mod balance;
mod call;
pub mod cloud;
pub mod error;
mod health_watch;
mod openai;
pub mod peer_key;
pub mod regional;
pub mod sse;
mod tls;

pub use call::CallLimits;
pub use cloud::{CloudClient, CloudConfig, CloudEvent, CloudStream};
pub use error::{ErrorKind, SetupError, UpstreamError};
pub use openai::CloudCompletion;
pub use peer_key::{PEER_KEY_METADATA, PeerKey, read_peer_key};
pub use regional::{
    EndpointSnapshot, RegionalClient, RegionalConfig, RegionalStream, RegionalTlsConfig,
};
// The trace context travels on the node's request; re-exported for the clients' callers.
pub use tiergate_api::trace_context::{TRACEPARENT, TRACESTATE, TraceContext};
