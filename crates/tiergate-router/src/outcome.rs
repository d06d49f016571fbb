//! After the executor has run a plan: which tier answered, and why, in the same reason names
//! the decision uses.

use serde::Serialize;

use crate::policy::{Decision, Reason, Step};
use crate::tier::Tier;

/// What happened at one step of the plan, in plan order.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum StepResult {
    /// A gated local attempt passed the early-exit check; its answer was kept.
    LocalCommitted { mean_top1: f32 },
    /// A gated local attempt was abandoned for low confidence.
    LocalAbandoned { mean_top1: f32 },
    /// An ungated local step answered.
    LocalAnswered,
    /// A local step could not run (engine overloaded, prompt too long, engine error).
    LocalFailed,
    /// The upstream answered; `degraded` is the upstream's own flag (a regional node may
    /// itself have answered locally because the cloud was unreachable).
    UpstreamAnswered { degraded: bool },
    /// The upstream call failed (error, timeout, breaker rejected it at call time).
    UpstreamFailed,
}

impl StepResult {
    fn answered(self) -> bool {
        matches!(
            self,
            StepResult::LocalCommitted { .. }
                | StepResult::LocalAnswered
                | StepResult::UpstreamAnswered { .. }
        )
    }

    fn fits(self, step: Step) -> bool {
        matches!(
            (self, step),
            (
                StepResult::LocalCommitted { .. } | StepResult::LocalAbandoned { .. },
                Step::Local { gated: true },
            ) | (StepResult::LocalAnswered, Step::Local { gated: false })
                | (StepResult::LocalFailed, Step::Local { .. })
                | (
                    StepResult::UpstreamAnswered { .. } | StepResult::UpstreamFailed,
                    Step::Upstream(_),
                )
        )
    }
}

/// The final word on a request: every answer carries it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub tier: Tier,
    pub reason: Reason,
    pub degraded: bool,
    /// Mean top-1 probability of the gated local attempt, when there was one.
    pub local_confidence: Option<f32>,
    /// Tiers tried at this node, in order (the local tier once even if it ran twice).
    pub tiers_tried: Vec<Tier>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutcomeError {
    #[error("no step answered (all {0} attempted steps failed or were abandoned)")]
    Unanswered(usize),
    #[error("{results} results for a plan of {steps} steps")]
    TooManyResults { results: usize, steps: usize },
    #[error("result {index} does not fit step {index} of the plan")]
    Mismatch { index: usize },
    #[error("step {index} answered but later steps ran too")]
    AnsweredEarlier { index: usize },
}

impl Decision {
    /// Names the outcome from the results of the steps run, in plan order, the last of which
    /// answered. `Unanswered` means the executor has no answer to give (every step failed).
    pub fn outcome(&self, results: &[StepResult]) -> Result<Outcome, OutcomeError> {
        if results.len() > self.plan.len() {
            return Err(OutcomeError::TooManyResults {
                results: results.len(),
                steps: self.plan.len(),
            });
        }
        for (index, (result, step)) in results.iter().zip(&self.plan).enumerate() {
            if !result.fits(*step) {
                return Err(OutcomeError::Mismatch { index });
            }
            if result.answered() && index + 1 < results.len() {
                return Err(OutcomeError::AnsweredEarlier { index });
            }
        }
        let (last, answer) = match results.split_last() {
            Some((answer, before)) if answer.answered() => (before.len(), *answer),
            _ => return Err(OutcomeError::Unanswered(results.len())),
        };
        let reason = match last.checked_sub(1).map(|i| results[i]) {
            None => self.reason,
            Some(StepResult::LocalAbandoned { .. }) => Reason::LowConfidence,
            Some(StepResult::LocalFailed) => Reason::LocalFailed,
            Some(_) => Reason::UpstreamFailed,
        };
        // Falling back to the local model after the plan's upstreams failed is degraded.
        let local_fallback = last > 0 && answer == StepResult::LocalAnswered;
        let upstream_degraded = matches!(answer, StepResult::UpstreamAnswered { degraded: true });
        let local_confidence = results.iter().find_map(|r| match r {
            StepResult::LocalCommitted { mean_top1 } | StepResult::LocalAbandoned { mean_top1 } => {
                Some(*mean_top1)
            }
            _ => None,
        });
        let mut tiers_tried: Vec<Tier> = Vec::new();
        for step in &self.plan[..results.len()] {
            let tier = self.step_tier(*step);
            if !tiers_tried.contains(&tier) {
                tiers_tried.push(tier);
            }
        }
        Ok(Outcome {
            tier: self.step_tier(self.plan[last]),
            reason,
            degraded: self.degraded || local_fallback || upstream_degraded,
            local_confidence,
            tiers_tried,
        })
    }
}
