//! Offline tooling for tiergate's router: evaluating a routing signal on labelled prompts and
//! fitting the complexity weights. Kept out of `tiergate-router`, which a node runs on every
//! request, so that the runtime crate stays pure decision logic without CSV readers or solvers.
//!
//! - [`routing`]: routing evaluation (PGR, APGR, CPT as defined for RouteLLM) and calibration.
//! - [`fit`]: the tiny logistic regression that learns the complexity weights.
//!
//! `tiergate eval routing` (the binary) and `examples/eval_routing.rs` (the study behind the
//! shipped weights, docs/routing.md) use them.

pub mod fit;
pub mod routing;
