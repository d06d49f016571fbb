//! The request/answer model a tiergate node speaks, whatever carries it: the gRPC and HTTP
//! front ends convert their wire formats to these types, and the clients of the tiers above
//! (regional gRPC, cloud OpenAI-compatible HTTP) take them, so the node never goes through a
//! front end to call an upstream and each check (roles, sampling limits, constraint) exists once.
//!
//! - [`request`]: requests, answers, streamed events, model cards.
//! - [`limits`]: the node's request limits and the one validation of sampling parameters.
//! - [`error`]: the one error type, with its HTTP status, gRPC code and metric label.
//! - [`wire`]: conversions to and from the `tiergate.v1` protobuf messages.
//! - [`trace_context`]: the W3C trace context a request carries across the tiers.

pub mod error;
pub mod limits;
pub mod request;
pub mod trace_context;
pub mod wire;

pub use error::NodeError;
pub use limits::Limits;
pub use request::{
    Answer, AnswerStream, CacheStatus, FinishReason, Forwarding, Input, MAX_TOP_LOGPROBS, Message,
    ModelCard, NodeRequest, Role, RoutingInfo, Sampling, StreamEvent, Tenancy, TokenLogprob, Usage,
    constraint_for_model,
};
pub use trace_context::TraceContext;
