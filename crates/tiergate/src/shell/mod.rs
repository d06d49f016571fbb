//! The serving shell around a node: its lifecycle (readiness, drain), the tower stack both
//! listeners share (request id, trace span, CORS, authentication, admission, timeouts), and
//! graceful shutdown.

mod admission;
mod authenticate;
mod body_deadline;
mod cors;
mod end_at_stop;
mod lifecycle;
mod refusal;
mod send_watch;
mod stack;
mod trace_context;

pub use admission::{Admission, AdmissionLayer, Api, Gate, GuardedBody, Refusal, RouteTimeouts};
pub use authenticate::{AuthLayer, Authenticate};
pub use body_deadline::{BodyDeadline, BodyTimedOut};
pub use cors::CorsConfig;
pub use end_at_stop::EndAtStop;
pub use lifecycle::{Lifecycle, Phase, ReadinessProbe};
pub use send_watch::{BoxError, WatchedBody};
pub use stack::{
    REQUEST_ID, StackService, StackSettings, fresh_request_id, is_fit_request_id, serving_stack,
};

pub use trace_context::trace_of;

#[cfg(test)]
mod tests;
