//! Pure routing logic for tiergate: no I/O, no clocks of its own (time is passed in).
//!
//! - [`tier`]: the tiers (edge < regional < cloud) and the client's tier constraint.
//! - [`features`]: cheap text features of a prompt.
//! - [`complexity`]: the complexity score in `[0, 1]` from those features and the prompt NLL.
//! - [`confidence`]: the early-exit check over the local model's first tokens.
//! - [`budget`]: one deadline budget per request, split across the steps of its plan.
//! - [`health`]: per-upstream link health (latency EWMA, error rate, circuit breaker).
//! - [`retry`]: the retry budget that bounds the extra upstream load of failovers.
//! - [`policy`]: signals + reachable upstreams -> an explained [`Decision`] with a plan.
//! - [`outcome`]: after the plan ran, which tier answered and why.
//!
//! Offline tooling (routing evaluation, fitting the complexity weights) lives in `tiergate-eval`.
//!
//! How a node uses it (the executor does the I/O between the calls):
//!
//! ```
//! use tiergate_router::*;
//!
//! let config = RouterConfig::default();
//! let node = NodeView {
//!     local_tier: Tier::Edge,
//!     local_variant: None,
//!     local_cpu: None,
//!     upstreams: vec![UpstreamView { tier: Tier::Regional, available: true }],
//! };
//! // The request's last user turn is scored; the client gives constraint and forwarding.
//! let signals = Signals::from_prompt("turn on the kitchen lights");
//! let decision = decide(&config, &signals, &node, TierConstraint::None, &Forwarding::default());
//! assert_eq!(decision.plan[0], Step::Local { gated: true });
//!
//! // Run the gated local step: hold tokens back until the commit window says yes or no.
//! let mut gate = CommitGate::new(&config.confidence);
//! let mut shown = Vec::new();
//! for (token, top1) in [("Turning", 0.99), (" on", 0.95), (" the", 0.97), (" lights", 0.9)] {
//!     match gate.push(token, top1, 0.5) {
//!         GateAction::Hold => {}
//!         GateAction::Release(tokens) => shown.extend(tokens),
//!         GateAction::Abandon { .. } => break, // run the next step of the plan
//!     }
//! }
//! if let GateAction::Release(tokens) = gate.finish() {
//!     shown.extend(tokens); // EOS came before the window filled
//! }
//! let mean_top1 = match gate.verdict() {
//!     Verdict::Commit { mean_top1, .. } => mean_top1,
//!     other => panic!("{other:?}"),
//! };
//! let outcome = decision.outcome(&[StepResult::LocalCommitted { mean_top1 }]).unwrap();
//! assert_eq!((outcome.tier, outcome.reason.as_str()), (Tier::Edge, "early_exit"));
//! assert_eq!(shown.concat(), "Turning on the lights");
//! ```

pub mod budget;
pub mod complexity;
pub mod confidence;
pub mod features;
pub mod health;
pub mod outcome;
pub mod policy;
pub mod retry;
pub mod tier;

pub use budget::BudgetConfig;
pub use complexity::{ComplexityConfig, ComplexityScore, InvalidConfig};
pub use confidence::{
    AbandonCause, CommitGate, CommitMonitor, ConfidenceConfig, GateAction, Verdict,
};
pub use features::PromptFeatures;
pub use outcome::{Outcome, OutcomeError, StepResult};
pub use policy::{
    ConversationContext, Decision, Forwarding, NodeView, Reason, RouterConfig, Signals, Step,
    UpstreamView, decide,
};
pub use retry::{RetryBudget, RetryBudgetConfig};
pub use tier::{Tier, TierConstraint};
