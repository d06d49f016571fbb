//! Pure routing logic for tiergate: no I/O, no clocks of its own (time is passed in).
//!
//! - [`tier`]: the tiers (edge < regional < cloud) and the client's tier constraint.
//! - [`features`]: cheap text features of a prompt.
//! - [`complexity`]: the complexity score in `[0, 1]` from those features and the prompt NLL.
//! - [`confidence`]: the early-exit check over the local model's first tokens.
//! - [`health`]: per-upstream link health (latency EWMA, error rate, circuit breaker).
//! - [`policy`]: signals + reachable upstreams -> an explained [`Decision`] with a plan.
//! - [`outcome`]: after the plan ran, which tier answered and why.
//! - [`eval`]: routing evaluation (PGR, APGR, CPT as defined for RouteLLM) and calibration.
//! - [`fit`]: the tiny logistic regression that learns the complexity weights.

pub mod complexity;
pub mod confidence;
pub mod eval;
pub mod features;
pub mod fit;
pub mod health;
pub mod outcome;
pub mod policy;
pub mod tier;

pub use complexity::{ComplexityConfig, ComplexityScore, InvalidConfig};
pub use confidence::{CommitGate, CommitMonitor, ConfidenceConfig, GateAction, Verdict};
pub use features::PromptFeatures;
pub use outcome::{Outcome, OutcomeError, StepResult};
pub use policy::{
    Decision, Forwarding, NodeView, Reason, RouterConfig, Signals, Step, UpstreamView, decide,
};
pub use tier::{Tier, TierConstraint};
