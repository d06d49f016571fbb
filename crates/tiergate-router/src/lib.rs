//! Pure routing logic for tiergate: no I/O, no clocks of its own (time is passed in).
//!
//! - [`tier`]: the tiers (edge < regional < cloud) and the client's tier constraint.
//! - [`features`]: cheap text features of a prompt.
//! - [`complexity`]: the complexity score in `[0, 1]` from those features and the prompt NLL.
//! - [`health`]: per-upstream link health (latency EWMA, error rate, circuit breaker).
//! - [`eval`]: routing evaluation (PGR, APGR, CPT as defined for RouteLLM) and calibration.
//! - [`fit`]: the tiny logistic regression that learns the complexity weights.

pub mod complexity;
pub mod eval;
pub mod features;
pub mod fit;
pub mod health;
pub mod tier;
